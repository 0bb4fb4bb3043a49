"""I+_q pooled per normalised query across users, built by hand on a constructed log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from queryrec.features.dataset import PreparedDataset
from queryrec.features.model_inputs import HistoryLengths
from queryrec.features.query_identity import normalised_query_ids
from queryrec.training.batches import AuxiliaryConfig, BatchBuilder
from queryrec.training.query_positives import (
    build_query_positives,
    query_positives,
)

TRAIN_END = 1000

# One row per search session, ordered by (user, ts) as search.parquet is:
# (user, ts, query words, clicked items)
LOG: list[tuple[int, int, list[int], list[int]]] = [
    (2, 100, [5, 6], [10, 11]),  # 0: user 2, query {5, 6}
    (2, 300, [6, 5, 5], [12]),  # 1: same query after normalising (order, duplicate)
    (2, 500, [7], [20]),  # 2: another query
    (2, 700, [5, 6], [13, 13]),  # 3: query {5, 6} again, own later clicks for rows 0 and 1
    (3, 200, [6, 0, 5], [10, 14]),  # 4: user 3, query {5, 6} (0 = padding)
    (3, 400, [5, 6], []),  # 5: click-less session of the same query
    (3, 1200, [5, 6], [15, 15, 15]),  # 6: validation period: never counted
    (4, 250, [5], [16]),  # 7: {5} is another query than {5, 6}
    (4, 260, [], [17]),  # 8: no words: a query of its own
    (5, 270, [], [18]),  # 9: no words either, not pooled with row 8
]


def _build(k: int):
    words = [row[2] for row in LOG]
    clicks = [row[3] for row in LOG]
    return build_query_positives(
        np.array([row[0] for row in LOG]),
        np.array([row[1] for row in LOG]),
        np.concatenate([[0], np.cumsum([len(w) for w in words])]),
        np.array([w for ws in words for w in ws], dtype=np.int64),
        np.concatenate([[0], np.cumsum([len(c) for c in clicks])]),
        np.array([c for cs in clicks for c in cs], dtype=np.int64),
        train_end=TRAIN_END,
        k=k,
    )


def _row(table, session: int) -> list[tuple[int, int]]:
    lo, hi = table.offsets[session], table.offsets[session + 1]
    return list(zip(table.items[lo:hi].tolist(), table.counts[lo:hi].tolist(), strict=True))


def test_normalised_queries() -> None:
    query = _build(k=10).query
    q56 = {0, 1, 3, 4, 5, 6}
    assert len({query[s] for s in q56}) == 1
    assert len(set(query.tolist())) == 5  # {5, 6}, {7}, {5}, and two word-less sessions
    assert query[7] != query[0] and query[8] != query[9]
    ids = normalised_query_ids(np.array([0, 2, 4, 4]), np.array([3, 4, 4, 3]))
    assert ids[0] == ids[1] != ids[2]


def test_pooled_across_users_training_only_and_own_future_removed() -> None:
    table = _build(k=10)
    # Pooled training clicks of {5, 6}: 10 x2 (users 2 and 3), 11, 12, 13 x2 (user 2,
    # row 3), 14; the validation clicks of row 6 (item 15) never enter.
    assert table.counts.sum() > 0 and 15 not in table.items.tolist()
    # Row 3 is user 2's last session of the query: the whole pool counts.
    assert _row(table, 3) == [(10, 2), (13, 2), (11, 1), (12, 1), (14, 1)]
    # Row 0 (user 2 at ts 100): user 2's later sessions of the query (rows 1 and 3, ts 300
    # and 700, i.e. at or after any sample time whose last search is row 0) are removed;
    # user 3's clicks count even though they come later in time.
    assert _row(table, 0) == [(10, 2), (11, 1), (14, 1)]
    # Row 1: row 3 removed, own earlier clicks (rows 0, 1) kept.
    assert _row(table, 1) == [(10, 2), (11, 1), (12, 1), (14, 1)]
    # User 3: no later training session of the query (row 6 is validation), full pool.
    assert _row(table, 4) == _row(table, 5) == _row(table, 3)
    assert _row(table, 2) == [(20, 1)]
    assert _row(table, 7) == [(16, 1)]
    assert _row(table, 8) == [(17, 1)] and _row(table, 9) == [(18, 1)]
    # A validation session of the query reads the training pool (nothing of its own).
    assert _row(table, 6) == _row(table, 3)


def test_cap_k_by_click_count_ties_by_item() -> None:
    table = _build(k=2)
    assert _row(table, 3) == [(10, 2), (13, 2)]
    # Row 0 loses 13 (own future): the next best enter, the 11/14 tie broken by item index.
    assert _row(table, 0) == [(10, 2), (11, 1)]
    assert np.diff(table.offsets).max() == 2


def test_own_future_removal_can_drop_below_the_cut() -> None:
    """An item whose pooled count ranks it first falls out of row 0's top 1 once the own
    later clicks are subtracted, and an item ranked past the pooled top K takes its place."""
    rows = [
        (1, 10, [9], [30]),
        (1, 20, [9], [31, 31, 31]),  # own later clicks of 31
        (2, 30, [9], [32, 32]),
        (2, 40, [9], [31]),
    ]
    table = build_query_positives(
        np.array([r[0] for r in rows]),
        np.array([r[1] for r in rows]),
        np.arange(len(rows) + 1),
        np.array([9] * len(rows)),
        np.concatenate([[0], np.cumsum([len(r[3]) for r in rows])]),
        np.array([c for r in rows for c in r[3]]),
        train_end=100,
        k=1,
    )
    assert _row(table, 1) == [(31, 4)]
    assert _row(table, 0) == [(32, 2)]  # 31 keeps one click (user 2) and ranks below 32


def test_rejects_unordered_sessions() -> None:
    with pytest.raises(ValueError, match="ordered"):
        build_query_positives(
            np.array([1, 1]), np.array([5, 4]), np.array([0, 1, 2]), np.array([3, 3]),
            np.array([0, 0, 0]), np.array([], dtype=np.int64), train_end=10, k=1,
        )  # fmt: skip


def test_no_own_click_at_or_after_t_on_real_samples(tiny_data: Path) -> None:
    """On the tiny dataset: every positive of a training sample is backed by a training
    click of its query by another user or by the sample's user before t."""
    dataset = PreparedDataset(tiny_data)
    builder = BatchBuilder(
        dataset,
        HistoryLengths(clicks=5, queries=3, tokens=4),
        aux=AuxiliaryConfig(cl_positives=4, cl_positive_source="query"),
    )
    table = builder.query_positives
    assert table is not None and np.array_equal(table.offsets, query_positives(dataset, 4).offsets)
    arrays = builder.split_arrays("train", with_aux=True)
    rows = np.arange(min(len(arrays), 3000))
    positives = builder.build(arrays, rows, np.random.default_rng(0)).cl_positive
    assert positives is not None
    last = arrays.search_end[rows] - 1
    has_query = last >= dataset.search_user_start[arrays.user[rows]]
    valid_start = dataset.schema["split"]["valid_start_ms"]
    session_of_click = np.repeat(
        np.arange(len(dataset.search_ts)), np.diff(dataset.clicked_offsets)
    )
    checked = 0
    for b in np.flatnonzero(has_query)[:300]:
        u, t, q = arrays.user[b], arrays.ts[b], table.query[last[b]]
        allowed = (
            (table.query[session_of_click] == q)
            & (dataset.search_ts[session_of_click] < valid_start)
            & (
                (dataset.search_user[session_of_click] != u)
                | (dataset.search_ts[session_of_click] < t)
            )
        )
        for item in positives[b][positives[b] > 0]:
            assert (allowed & (dataset.clicked_items == item)).any()
            checked += 1
    assert checked > 0
    assert (positives[~has_query] == 0).all()


def test_session_source_stays_the_default(tiny_data: Path) -> None:
    assert AuxiliaryConfig().cl_positive_source == "session"
    with pytest.raises(ValueError, match="cl_positive_source"):
        AuxiliaryConfig(cl_positive_source="user")
    builder = BatchBuilder(
        PreparedDataset(tiny_data),
        HistoryLengths(clicks=5, queries=3, tokens=4),
        aux=AuxiliaryConfig(),
    )
    assert builder.query_positives is None


def _by_hand(
    user: list[int],
    ts: list[int],
    queries: list[list[int]],
    clicks: list[list[int]],
    train_end: int,
    k: int,
) -> list[list[tuple[int, int]]]:
    """The definition, one session at a time (small logs only)."""
    out = []
    for s in range(len(user)):
        q = frozenset(w for w in queries[s] if w != 0) or ("alone", s)
        counts: dict[int, int] = {}
        for r in range(len(user)):
            same = (frozenset(w for w in queries[r] if w != 0) or ("alone", r)) == q
            own_later = user[r] == user[s] and r > s
            if same and ts[r] < train_end and not own_later:
                for item in clicks[r]:
                    counts[item] = counts.get(item, 0) + 1
        out.append(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k])
    return out


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_definition_on_random_logs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    user = np.sort(rng.integers(2, 8, n))
    ts = np.zeros(n, dtype=np.int64)
    for u in np.unique(user):
        ts[user == u] = np.sort(rng.integers(0, 100, (user == u).sum()))
    queries = [rng.integers(0, 5, rng.integers(0, 4)).tolist() for _ in range(n)]
    clicks = [rng.integers(2, 9, rng.integers(0, 5)).tolist() for _ in range(n)]
    k = int(rng.integers(1, 4))
    table = build_query_positives(
        user, ts,
        np.concatenate([[0], np.cumsum([len(w) for w in queries])]),
        np.array([w for ws in queries for w in ws], dtype=np.int64),
        np.concatenate([[0], np.cumsum([len(c) for c in clicks])]),
        np.array([c for cs in clicks for c in cs], dtype=np.int64),
        train_end=70, k=k,
    )  # fmt: skip
    expected = _by_hand(user, ts, queries, clicks, 70, k)
    assert [_row(table, s) for s in range(n)] == expected
