"""Time features: exact query-age buckets at the edges, the Beijing hour."""

from __future__ import annotations

import numpy as np

from queryrec.features.time_features import AGE_BUCKETS, HOUR_MS, hour_of_day, query_age_buckets


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


def test_hour_is_beijing_local() -> None:
    midnight_utc = 1_700_006_400_000  # 2023-11-15 00:00 UTC = 08:00 in Beijing
    ts = np.array([midnight_utc, midnight_utc + 16 * HOUR_MS - 1, midnight_utc + 16 * HOUR_MS])
    assert hour_of_day(ts).tolist() == [8, 23, 0]
