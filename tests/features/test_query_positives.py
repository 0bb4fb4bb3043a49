"""The query -> pseudo-positives table: keys by word set, lookup, filling click-less slots,
the augment job's table, and the training inputs that read it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from queryrec.errors import BundleError
from queryrec.features.dataset import PreparedDataset
from queryrec.features.model_inputs import HistoryLengths, model_inputs
from queryrec.features.pseudo_positives import load_pseudo_positives, load_query_positives
from queryrec.features.query_positives import (
    CLICKED,
    NO_RESULTS,
    PSEUDO,
    QueryPositives,
    csr_query_keys,
    fill_from_table,
    query_key,
    table_from_sessions,
)


def test_a_query_key_is_its_set_of_words() -> None:
    assert query_key(np.array([3, 5, 5, 0])) == query_key(np.array([5, 3]))  # order, repeats
    assert query_key(np.array([3, 5])) != query_key(np.array([3, 6]))
    assert query_key(np.array([3, 5])) != query_key(np.array([3]))
    assert query_key(np.array([0, 0])) == query_key(np.array([], dtype=np.int64)) == 0
    offsets, words = np.array([0, 2, 2, 5]), np.array([7, 2, 2, 7, 2])
    keys = csr_query_keys(offsets, words)  # one vectorised pass = one key per query
    assert keys.tolist() == [query_key(np.array([7, 2])), 0, query_key(np.array([2, 7]))]
    assert keys[0] == keys[2] != 0


def test_lookup_and_fill_only_the_slots_without_clicks() -> None:
    a, b = query_key(np.array([1, 2])), query_key(np.array([3]))
    table = QueryPositives.from_lists([b, a], [[30, 31, 32], [10]])
    assert table.lookup(np.array([a, b, 99, 0]), 2).tolist() == [[10, 0], [30, 31], [0, 0], [0, 0]]
    clicks = np.array([[[5, 0], [0, 0], [0, 0], [0, 0]]])  # (1, 4, 2)
    keys = np.array([[a, b, 99, 0]])  # clicked / known query / unknown query / no words
    filled, source = fill_from_table(clicks, keys, table)
    assert filled.tolist() == [[[5, 0], [30, 31], [0, 0], [0, 0]]]  # clicks win
    assert source.tolist() == [[CLICKED, PSEUDO, NO_RESULTS, NO_RESULTS]]


def test_the_table_keeps_each_querys_most_recent_session(tmp_path: Path) -> None:
    offsets, words = np.array([0, 2, 4, 5, 5]), np.array([1, 2, 2, 1, 9])
    ts = np.array([100, 300, 200, 400])
    items = np.array([[11, 12], [21, 0], [31, 32], [41, 42]])
    table = table_from_sessions(offsets, words, ts, np.arange(4), items)
    key = query_key(np.array([1, 2]))
    assert len(table) == 2  # the wordless session 3 is left out
    assert table.lookup(np.array([key]), 2).tolist() == [[21, 0]]  # ts 300 beats ts 100
    path = tmp_path / "t.parquet"
    table.write(path)
    again = QueryPositives.read(path, items=50)
    assert again.keys.tolist() == table.keys.tolist()
    assert again.items.tolist() == table.items.tolist()
    with pytest.raises(BundleError, match=r"t\.parquet: column 'items' holds an index outside"):
        QueryPositives.read(path, items=30)


def test_click_less_slots_read_their_querys_pseudo_positives(tiny_augmented: Path) -> None:
    dataset = PreparedDataset(tiny_augmented)
    table = load_query_positives(dataset)
    pseudo = load_pseudo_positives(dataset)
    assert table is not None and pseudo is not None and len(table) > 0
    samples = dataset.samples("valid")
    rows = samples["user"].to_numpy().astype(np.int64)[:400]
    ts = samples["ts"].to_numpy()[:400]
    items = samples["item"].to_numpy()[:400]
    lengths = HistoryLengths(clicks=50, queries=20, tokens=32)  # every word of a query
    reads = frozenset({"query_clicks", "query_click_source"})
    events = dataset.timelines()
    plain = model_inputs(events, rows, ts, lengths, items, reads=reads)
    slots = model_inputs(events, rows, ts, lengths, items, reads=reads, query_positives=table)
    assert plain.query_click_source is not None and slots.query_click_source is not None
    assert plain.query_clicks is not None and slots.query_clicks is not None
    assert PSEUDO not in plain.query_click_source
    filled = slots.query_click_source == PSEUDO
    assert filled.any()
    # only click-less slots change, and each gets its query's entry in the table
    assert (plain.query_click_source[filled] == NO_RESULTS).all()
    assert (plain.query_clicks[~filled] == slots.query_clicks[~filled]).all()
    keys = csr_query_keys(events.word_start, events.words)
    window_rows = np.flatnonzero(filled.any(axis=1))[:20]
    for b in window_rows:
        tokens = slots.query_tokens[b]
        for slot in np.flatnonzero(filled[b]):
            expected = table.lookup(np.array([query_key(tokens[slot])]), lengths.clicks_per_query)
            assert slots.query_clicks[b, slot].tolist() == expected[0].tolist()
    assert set(keys[keys != 0].tolist()) & set(table.keys.tolist())


def test_the_slot_positives_row_refuses_a_dataset_without_the_table(
    tiny_data: Path, tmp_path: Path
) -> None:
    from queryrec.errors import QueryRecError
    from queryrec.training.config import TrainConfig
    from queryrec.training.loop import train

    with pytest.raises(QueryRecError, match=r"no augment/query_positives\.parquet"):
        train(
            tiny_data,
            tmp_path / "r",
            TrainConfig(model="queryrec-slot-positives", epochs=1, progress=False),
        )


@pytest.mark.slow
def test_a_slot_positives_bundle_serves_what_it_scores_offline(
    tiny_augmented: Path, tmp_path: Path, redis_client_url: str
) -> None:
    """The table travels in the bundle and the service looks click-less searches up in it
    exactly as training did: every replayed impression scores as offline."""
    from queryrec.features.bundle_format import read_query_positives
    from queryrec.training.config import TrainConfig
    from queryrec.training.loop import train
    from tests.clients.test_replay import serves_what_it_scores_offline

    run = tmp_path / "run"
    train(
        tiny_augmented,
        run,
        TrainConfig(model="queryrec-slot-positives", epochs=1, batch_size=512, progress=False),
    )
    manifest = serves_what_it_scores_offline(run, tiny_augmented, tmp_path, redis_client_url)
    carried = read_query_positives(tmp_path / "bundle", manifest)
    written = load_query_positives(PreparedDataset(tiny_augmented))
    assert carried is not None and written is not None
    assert carried.keys.tolist() == written.keys.tolist()
