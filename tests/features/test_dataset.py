"""The dataset through the one feature path, and the leakage rule: nothing at or after
the sample's time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from queryrec.features.dataset import PreparedDataset
from queryrec.features.model_inputs import (
    HistoryLengths,
    first_k_per_row,
    history_windows,
    model_inputs,
)

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def dataset(tiny_data: Path) -> PreparedDataset:
    return PreparedDataset(tiny_data)


@pytest.mark.parametrize("split", SPLITS)
def test_window_ends_equal_the_pointers_prepare_stored(
    dataset: PreparedDataset, split: str
) -> None:
    """One window rule: the feature path finds, from the times alone, the ends that
    `data prepare` wrote as `click_end` / `search_end`."""
    samples = dataset.samples(split)
    click_end, search_end = dataset.timelines().history_ends(
        samples["user"].to_numpy(), samples["ts"].to_numpy()
    )
    assert click_end.tolist() == samples["click_end"].to_list()
    assert search_end.tolist() == samples["search_end"].to_list()


@pytest.mark.parametrize("split", SPLITS)
def test_no_history_event_at_or_after_the_sample_time(dataset: PreparedDataset, split: str) -> None:
    samples = dataset.samples(split)
    users = samples["user"].to_numpy()
    ts = samples["ts"].to_numpy()
    events = dataset.timelines()
    lengths = HistoryLengths(clicks=50, queries=20, tokens=8, clicks_per_query=3)
    reads = ("query_clicks", "query_minutes", "click_minutes")
    inputs = model_inputs(events, users, ts, lengths, reads=reads)
    windows = history_windows(events, users, ts, lengths)
    click_end, _ = events.history_ends(users, ts)
    clicks = (inputs.click_history > 0).sum(axis=1)
    assert (clicks <= click_end - events.click_start[users]).all()
    last_click = np.maximum(click_end - 1, 0)
    assert (events.click_ts[last_click][clicks > 0] < ts[clicks > 0]).all()
    valid_queries = windows.query_index >= 0
    count = windows.query_count
    query_ts = dataset.search_ts[windows.query_index[valid_queries]]
    assert (query_ts < np.repeat(ts, count)).all()
    # ... and every event in a window belongs to the sample's own user.
    session_users = dataset.search_user[windows.query_index[valid_queries]]
    assert (session_users == np.repeat(users, count)).all()
    # The extra inputs are cut at t too: a slot's clicked results are those of the
    # search in that slot (before t), nothing on a padded slot; the minutes count from t.
    assert inputs.query_clicks is not None
    expected = first_k_per_row(
        dataset.clicked_offsets, dataset.clicked_items, windows.query_index, 3
    )
    assert (inputs.query_clicks == expected).all()
    assert (inputs.query_clicks[~valid_queries] == 0).all()
    assert inputs.query_minutes is not None and inputs.click_minutes is not None
    minutes = (np.repeat(ts, count) - query_ts) // 60_000
    assert (inputs.query_minutes[valid_queries] == minutes).all()
    assert (inputs.query_minutes[~valid_queries] == 0).all()
    assert (inputs.click_minutes[inputs.click_history == 0] == 0).all()


def test_windows_match_a_brute_force_scan(dataset: PreparedDataset) -> None:
    """Exactly 'the user's last H events strictly before t'."""
    samples = dataset.samples("test").sample(200, seed=1)
    feed = pl.DataFrame(
        {
            "user": dataset.feed_user,
            "item": dataset.feed_item,
            "ts": dataset.feed_ts,
            "click": dataset.feed_click,
        }
    )
    users = samples["user"].to_numpy()
    lengths = HistoryLengths(clicks=5, queries=3, tokens=8)
    inputs = model_inputs(dataset.timelines(), users, samples["ts"].to_numpy(), lengths)
    windows = history_windows(dataset.timelines(), users, samples["ts"].to_numpy(), lengths)
    for row, sample in enumerate(samples.iter_rows(named=True)):
        earlier = feed.filter(
            (pl.col("user") == sample["user"])
            & (pl.col("ts") < sample["ts"])
            & (pl.col("click") == 1)
        )
        expected = earlier["item"].to_list()[-5:]
        got = inputs.click_history[row]
        assert got[5 - len(expected) :].tolist() == expected
        assert (got[: 5 - len(expected)] == 0).all()
        sessions = np.flatnonzero(
            (dataset.search_user == sample["user"]) & (dataset.search_ts < sample["ts"])
        )
        count = int(windows.query_count[row])
        assert windows.query_index[row][3 - count :].tolist() == sessions[-3:].tolist()


def test_feed_batch_never_sees_its_own_clicks(dataset: PreparedDataset) -> None:
    samples = pl.concat([dataset.samples(s) for s in SPLITS])
    per_batch = samples.group_by(["user", "ts"]).agg(pl.col("click_end").n_unique().alias("ends"))
    assert (per_batch["ends"] == 1).all()  # one pointer for every item of a batch


def test_query_tokens_are_truncated_and_padded(dataset: PreparedDataset) -> None:
    samples = dataset.samples("test")
    users, ts = samples["user"].to_numpy(), samples["ts"].to_numpy()
    lengths = HistoryLengths(clicks=1, queries=4, tokens=2)
    inputs = model_inputs(dataset.timelines(), users, ts, lengths)
    index = history_windows(dataset.timelines(), users, ts, lengths).query_index
    assert inputs.query_tokens.shape == (samples.height, 4, 2)
    assert (inputs.query_tokens[index < 0] == 0).all()
    assert (inputs.query_age[index < 0] == 0).all()
    has_query = index[:, -1] >= 0
    assert has_query.any()
    worded = has_query & (inputs.query_tokens[:, -1, 0] > 0)
    assert worded.any()
    assert (inputs.query_tokens[worded, -1, 0] >= 2).all()  # real words start at index 2
    assert (inputs.query_age[has_query, -1] >= 1).all()


def test_features_package_imports_no_torch() -> None:
    """Serving uses queryrec.features: it must stay torch-free."""
    code = (
        "import sys, queryrec.features.dataset, queryrec.features.schema, "
        "queryrec.features.model_inputs, queryrec.features.bundle_format, "
        "queryrec.features.graph_feeds; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
