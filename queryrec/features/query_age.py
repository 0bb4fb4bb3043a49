"""Query age feature: how long before the impression each query was issued (torch-free).

Log2-hour buckets: 0 = padding, 1: under 1 h, 2: 1-3 h, 3: 3-7 h, ..., 9: 255 h or more.
Training and serving compute it with this one function.
"""

from __future__ import annotations

import numpy as np

AGE_BUCKETS = 10
HOUR_MS = 3_600_000


def query_age_buckets(ts: np.ndarray, query_ts: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B,) impression times, (B, L) query times and validity -> (B, L) int64 buckets."""
    hours = np.maximum(ts[:, None] - query_ts, 0) / HOUR_MS
    bucket = 1 + np.minimum(np.floor(np.log2(1.0 + hours)), AGE_BUCKETS - 2).astype(np.int64)
    return np.where(valid, bucket, 0)
