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
from queryrec.features.model_inputs import HistoryLengths, model_inputs

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
    inputs = model_inputs(events, users, ts, HistoryLengths(clicks=50, queries=20, tokens=8))
    click_end, _ = events.history_ends(users, ts)
    lengths = (inputs.click_history > 0).sum(axis=1)
    assert (lengths <= click_end - events.click_start[users]).all()
    last_click = np.maximum(click_end - 1, 0)
    assert (events.click_ts[last_click][lengths > 0] < ts[lengths > 0]).all()
    valid_queries = inputs.query_index >= 0
    assert (valid_queries.sum(axis=1) == inputs.query_count).all()
    query_ts = dataset.search_ts[inputs.query_index[valid_queries]]
    assert (query_ts < np.repeat(ts, inputs.query_count)).all()
    # ... and every event in a window belongs to the sample's own user.
    session_users = dataset.search_user[inputs.query_index[valid_queries]]
    assert (session_users == np.repeat(users, inputs.query_count)).all()


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
    inputs = model_inputs(
        dataset.timelines(),
        users,
        samples["ts"].to_numpy(),
        HistoryLengths(clicks=5, queries=3, tokens=8),
    )
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
        count = int(inputs.query_count[row])
        assert inputs.query_index[row][3 - count :].tolist() == sessions[-3:].tolist()


def test_feed_batch_never_sees_its_own_clicks(dataset: PreparedDataset) -> None:
    samples = pl.concat([dataset.samples(s) for s in SPLITS])
    per_batch = samples.group_by(["user", "ts"]).agg(pl.col("click_end").n_unique().alias("ends"))
    assert (per_batch["ends"] == 1).all()  # one pointer for every item of a batch


def test_query_tokens_are_truncated_and_padded(dataset: PreparedDataset) -> None:
    samples = dataset.samples("test")
    inputs = model_inputs(
        dataset.timelines(),
        samples["user"].to_numpy(),
        samples["ts"].to_numpy(),
        HistoryLengths(clicks=1, queries=4, tokens=2),
    )
    assert inputs.query_tokens.shape == (samples.height, 4, 2)
    assert (inputs.query_tokens[inputs.query_index < 0] == 0).all()
    assert (inputs.query_age[inputs.query_index < 0] == 0).all()
    has_query = inputs.query_index[:, -1] >= 0
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
