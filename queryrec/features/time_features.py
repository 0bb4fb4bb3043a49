"""Time features of an impression: its Beijing hour and the age of each earlier query.

Torch-free; the one definition for training, offline scoring and serving (all reach it
through `queryrec.features.model_inputs`).

- hour: the hour of day of the request time t in Beijing (UTC+8, the time zone of the
  KuaiSAR logs, whose date and hour columns are Beijing local time).
- query age: log2-hour buckets of t - (query time). 0 = padding, 1: under 1 h,
  2: 1-3 h, 3: 3-7 h, ..., 9: 255 h or more.
"""

from __future__ import annotations

import numpy as np

HOUR_MS = 3_600_000
BEIJING_OFFSET_MS = 8 * HOUR_MS  # KuaiSAR's dates and hours are Beijing local time
AGE_BUCKETS = 10


def hour_of_day(ts: np.ndarray) -> np.ndarray:
    """(B,) Unix ms -> (B,) int64 Beijing hour 0..23."""
    return ((np.asarray(ts, dtype=np.int64) + BEIJING_OFFSET_MS) // HOUR_MS % 24).astype(np.int64)


def query_age_buckets(ts: np.ndarray, query_ts: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B,) impression times, (B, L) query times and validity -> (B, L) int64 buckets."""
    hours = np.maximum(ts[:, None] - query_ts, 0) / HOUR_MS
    bucket = 1 + np.minimum(np.floor(np.log2(1.0 + hours)), AGE_BUCKETS - 2).astype(np.int64)
    return np.where(valid, bucket, 0)
