"""History slicing on demand, and the leakage rule: nothing at or after the sample's time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from queryrec.features.dataset import PreparedDataset

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def dataset(tiny_data: Path) -> PreparedDataset:
    return PreparedDataset(tiny_data)


@pytest.mark.parametrize("split", SPLITS)
def test_no_history_event_at_or_after_the_sample_time(dataset: PreparedDataset, split: str) -> None:
    samples = dataset.samples(split)
    users = samples["user"].to_numpy()
    ts = samples["ts"].to_numpy()
    clicks = dataset.click_history(users, samples["click_end"].to_numpy(), 50)
    queries = dataset.query_history(users, samples["search_end"].to_numpy(), 20, 8)
    valid_clicks = np.arange(50)[None, :] >= 50 - clicks.lengths[:, None]
    assert (clicks.ts[valid_clicks] < np.repeat(ts, clicks.lengths)).all()
    valid_queries = queries.session >= 0
    assert (queries.ts[valid_queries] < np.repeat(ts, queries.lengths)).all()
    # ... and every event in a slice belongs to the sample's own user.
    session_users = dataset.search_user[queries.session[valid_queries]]
    assert (session_users == np.repeat(users, queries.lengths)).all()


def test_slices_match_a_brute_force_scan(dataset: PreparedDataset) -> None:
    """Pointers give exactly 'the user's last H events strictly before t'."""
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
    history = dataset.click_history(users, samples["click_end"].to_numpy(), 5)
    queries = dataset.query_history(users, samples["search_end"].to_numpy(), 3, 8)
    for row, sample in enumerate(samples.iter_rows(named=True)):
        earlier = feed.filter(
            (pl.col("user") == sample["user"])
            & (pl.col("ts") < sample["ts"])
            & (pl.col("click") == 1)
        )
        expected = earlier["item"].to_list()[-5:]
        got = history.items[row][5 - history.lengths[row] :].tolist()
        assert got == expected
        assert history.lengths[row] == len(expected)
        sessions = np.flatnonzero(
            (dataset.search_user == sample["user"]) & (dataset.search_ts < sample["ts"])
        )
        assert queries.session[row][3 - queries.lengths[row] :].tolist() == sessions[-3:].tolist()


def test_feed_batch_never_sees_its_own_clicks(dataset: PreparedDataset) -> None:
    samples = pl.concat([dataset.samples(s) for s in SPLITS])
    per_batch = samples.group_by(["user", "ts"]).agg(pl.col("click_end").n_unique().alias("ends"))
    assert (per_batch["ends"] == 1).all()  # one pointer for every item of a batch


def test_query_tokens_are_truncated_and_padded(dataset: PreparedDataset) -> None:
    samples = dataset.samples("test")
    queries = dataset.query_history(
        samples["user"].to_numpy(), samples["search_end"].to_numpy(), 4, 2
    )
    assert queries.tokens.shape == (samples.height, 4, 2)
    assert (queries.tokens[queries.session < 0] == 0).all()
    has_query = queries.session[:, -1] >= 0
    assert has_query.any()
    assert (queries.tokens[has_query, -1, 0] >= 2).all()  # real words start at index 2


def test_features_package_imports_no_torch() -> None:
    """Serving uses queryrec.features: it must stay torch-free."""
    code = (
        "import sys, queryrec.features.dataset, queryrec.features.schema; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
