"""Query age buckets: exact values at the bucket edges."""

from __future__ import annotations

import numpy as np

from queryrec.features.query_age import AGE_BUCKETS, HOUR_MS, query_age_buckets


def test_bucket_edges() -> None:
    hours = np.array([0.0, 0.99, 1.0, 2.99, 3.0, 6.99, 7.0, 254.0, 255.0, 10_000.0])
    ts = np.array([1_000_000_000_000])
    query_ts = ts[0] - (hours * HOUR_MS).astype(np.int64)
    buckets = query_age_buckets(ts, query_ts[None, :], np.ones((1, len(hours)), dtype=bool))
    assert buckets.tolist() == [[1, 1, 2, 2, 3, 3, 4, 8, 9, 9]]
    assert buckets.max() == AGE_BUCKETS - 1


def test_padding_is_zero() -> None:
    out = query_age_buckets(
        np.array([5, 5]), np.array([[0, 4], [0, 0]]), np.array([[False, True], [False, False]])
    )
    assert out.tolist() == [[0, 1], [0, 0]]
