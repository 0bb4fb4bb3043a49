"""The LightGBM reference rows and the training click rates they (and neural bucket fields) use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from queryrec.features.dataset import PreparedDataset
from queryrec.features.item_statistics import (
    out_of_fold_rates,
    rate_bucket_edges,
    rate_buckets,
    smoothed_rates,
    training_click_rates,
)
from queryrec.features.model_inputs import HistoryLengths
from queryrec.training.batches import BatchBuilder
from queryrec.training.config import TrainConfig
from queryrec.training.gbdt import (
    ItemSide,
    caption_overlap,
    feature_names,
    sample_features,
    train_gbdt,
)


@pytest.fixture(scope="module")
def dataset(tiny_data: Path) -> PreparedDataset:
    return PreparedDataset(tiny_data)


class _FakeDataset:
    """What `training_click_rates` reads of a dataset: the split samples, items.parquet, vocab."""

    def __init__(self, root: Path, splits: dict[str, pl.DataFrame], authors: list[int]) -> None:
        self.root = root
        self.splits = splits
        (root / "features").mkdir(parents=True)
        pl.DataFrame({"index": list(range(len(authors))), "author": authors}).write_parquet(
            root / "features/items.parquet"
        )
        self.schema: dict[str, Any] = {"vocab_sizes": {"items": len(authors), "authors": 4}}

    def samples(self, split: str) -> pl.DataFrame:
        return self.splits[split]


def _samples(items: list[int], labels: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"item": items, "label": labels}, schema={"item": pl.Int32, "label": pl.Int8}
    )


def test_smoothing_formula_by_hand() -> None:
    # keys 2, 2, 3 with labels 1, 0, 1; prior 2 pseudo-impressions at the global rate 0.5.
    rates = smoothed_rates(np.array([2, 2, 3]), np.array([1, 0, 1]), 5, 2.0, 0.5)
    np.testing.assert_allclose(rates, [0.5, 0.5, (1 + 1) / (2 + 2), (1 + 1) / (1 + 2), 0.5])
    # The global rate defaults to the impressions' mean label: 2/3 here.
    np.testing.assert_allclose(
        smoothed_rates(np.array([2, 2, 3]), np.array([1, 0, 1]), 4, 3.0),
        [2 / 3, 2 / 3, (1 + 2) / (2 + 3), (1 + 2) / (1 + 3)],
        rtol=1e-6,
    )


def test_training_click_rates_by_hand(tmp_path: Path) -> None:
    # Items 0..5; authors: items 2, 3 -> author 2, item 4 -> author 3, item 5 -> author 3.
    train = _samples([2, 2, 2, 3, 4], [1, 1, 0, 0, 1])  # global rate 3/5
    valid = _samples([5, 5, 2], [1, 1, 1])  # item 5 is shown in valid only
    fake = _FakeDataset(
        tmp_path, {"train": train, "valid": valid, "test": valid}, [0, 1, 2, 2, 3, 3]
    )
    rates = training_click_rates(fake, prior_weight=10.0)
    g = 3 / 5
    assert rates.global_rate == pytest.approx(g)
    np.testing.assert_allclose(
        rates.item,
        [g, g, (2 + 10 * g) / (3 + 10), (0 + 10 * g) / (1 + 10), (1 + 10 * g) / (1 + 10), g],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        rates.author, [g, g, (2 + 10 * g) / (4 + 10), (1 + 10 * g) / (1 + 10)], rtol=1e-6
    )
    assert rates.item.dtype == np.float32 and rates.author.dtype == np.float32


def test_training_click_rates_match_a_group_by_of_the_train_split(
    dataset: PreparedDataset,
) -> None:
    rates = training_click_rates(dataset, prior_weight=20.0)
    vocab = dataset.schema["vocab_sizes"]
    assert rates.item.shape == (vocab["items"],) and rates.author.shape == (vocab["authors"],)
    train = dataset.samples("train")
    g = float(train["label"].mean())
    per_item = train.group_by("item").agg(
        pl.col("label").sum().alias("clicks"), pl.len().alias("n")
    )
    expected = (per_item["clicks"].to_numpy() + 20 * g) / (per_item["n"].to_numpy() + 20)
    np.testing.assert_allclose(rates.item[per_item["item"].to_numpy()], expected, rtol=1e-5)
    items = pl.read_parquet(dataset.root / "features/items.parquet", columns=["index", "author"])
    per_author = (
        train.join(items, left_on="item", right_on="index")
        .group_by("author")
        .agg(pl.col("label").sum().alias("clicks"), pl.len().alias("n"))
    )
    expected = (per_author["clicks"].to_numpy() + 20 * g) / (per_author["n"].to_numpy() + 20)
    np.testing.assert_allclose(rates.author[per_author["author"].to_numpy()], expected, rtol=1e-5)


def test_items_shown_outside_training_get_the_global_rate(dataset: PreparedDataset) -> None:
    rates = training_click_rates(dataset)
    in_train = set(dataset.samples("train")["item"].to_list())
    later = set(dataset.samples("valid")["item"].to_list()) | set(
        dataset.samples("test")["item"].to_list()
    )
    only_later = np.array(sorted(later - in_train))
    assert len(only_later) > 0
    np.testing.assert_allclose(rates.item[only_later], rates.global_rate, rtol=1e-6)


def test_rates_ignore_validation_and_test_labels(tmp_path: Path) -> None:
    train = _samples([2, 3, 3], [1, 0, 1])
    first = _FakeDataset(
        tmp_path / "a",
        {"train": train, "valid": _samples([2], [0]), "test": _samples([3], [0])},
        [0, 1, 2, 3],
    )
    second = _FakeDataset(
        tmp_path / "b",
        {"train": train, "valid": _samples([2], [1]), "test": _samples([3], [1])},
        [0, 1, 2, 3],
    )
    a = training_click_rates(first)
    b = training_click_rates(second)
    np.testing.assert_array_equal(a.item, b.item)
    np.testing.assert_array_equal(a.author, b.author)


def test_out_of_fold_rates_leave_the_own_label_out() -> None:
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 6, size=200)
    labels = rng.integers(0, 2, size=200).astype(np.float64)
    before = out_of_fold_rates(keys, labels, 6, folds=5, seed=3)
    # Flip row 17's label and, to keep the global rate, the opposite label of a row of
    # another key: row 17's own rate must not move, its key's rate elsewhere must.
    other = int(np.flatnonzero((keys != keys[17]) & (labels != labels[17]))[0])
    flipped = labels.copy()
    flipped[[17, other]] = 1 - flipped[[17, other]]
    after = out_of_fold_rates(keys, flipped, 6, folds=5, seed=3)
    assert after[17] == before[17]
    assert np.abs(after[keys == keys[17]] - before[keys == keys[17]]).max() > 1e-3


def test_rate_buckets() -> None:
    rates = np.linspace(0.0, 1.0, 1001)
    edges = rate_bucket_edges(rates, n_buckets=4)
    np.testing.assert_allclose(edges, [0.25, 0.5, 0.75])
    codes = rate_buckets(rates, edges)
    assert codes.dtype == np.int64 and codes.min() == 1 and codes.max() == 4
    assert np.all(np.diff(codes) >= 0)
    assert np.abs(np.bincount(codes)[1:] - 250).max() <= 1
    # Tied rates (the global rate of unseen keys) merge buckets but stay within 1..n.
    tied = rate_bucket_edges(np.array([0.5] * 90 + [0.9] * 10), n_buckets=16)
    assert set(rate_buckets(np.array([0.0, 0.5, 0.9, 1.0]), tied)) <= set(range(1, 17))


def test_caption_overlap_on_a_constructed_example() -> None:
    queries = np.array(
        [
            [5, 7, 7, 0],  # 5 and 7 in the caption; 7 counted once
            [9, 0, 0, 0],  # not in the caption
            [0, 0, 0, 0],  # no query: padding never matches the caption's padding
        ]
    )
    captions = np.array([[7, 5, 3, 0, 0], [1, 2, 3, 0, 0], [4, 0, 0, 0, 0]])
    np.testing.assert_array_equal(caption_overlap(queries, captions), [2, 0, 0])


def test_query_features_match_the_timelines(dataset: PreparedDataset) -> None:
    lengths = dataset.schema["max_lengths"]
    tokens = int(lengths["query_tokens"])
    builder = BatchBuilder(
        dataset,
        HistoryLengths(
            clicks=int(lengths["click_history"]),
            queries=int(lengths["query_history"]),
            tokens=tokens,
        ),
    )
    arrays = builder.split_arrays("test", with_aux=False)
    side = ItemSide.load(dataset)
    zeros = np.zeros(len(arrays), dtype=np.float32)
    features = sample_features(dataset, builder, arrays, side, zeros, zeros, with_query=True)
    names, _ = feature_names(list(dataset.schema["vocab_sizes"]["profile"]), with_query=True)
    column = {name: features[:, i] for i, name in enumerate(names)}
    captions = pl.read_parquet(dataset.root / "features/items.parquet")["caption"].to_list()
    checked = 0
    for row in range(len(arrays)):
        user, end = int(arrays.user[row]), int(arrays.search_end[row])
        start = int(dataset.search_user_start[user])
        sessions = range(max(start, end - 3), end)
        words = [
            set(
                dataset.query_words[dataset.query_offsets[s] : dataset.query_offsets[s + 1]][
                    :tokens
                ].tolist()
            )
            for s in sessions
        ]
        caption = set(captions[int(arrays.item[row])])
        last = words[-1] if words else set()
        assert column["overlap_last_query"][row] == len(last & caption)
        assert column["overlap_last_3_queries"][row] == len(set().union(*words) & caption)
        assert column["queries_before"][row] == end - start
        checked += int(bool(last & caption))
    assert checked > 0  # the sample holds rows whose last query meets the caption


@pytest.mark.parametrize("with_query", [False, True])
def test_train_gbdt_writes_its_run(
    dataset: PreparedDataset, tmp_path: Path, with_query: bool
) -> None:
    cfg = TrainConfig(model="lightgbm", seed=0, progress=False)
    result = train_gbdt(dataset, tmp_path / "run", cfg, with_query=with_query)
    assert result.model == ("lightgbm-query" if with_query else "lightgbm")
    assert 0.5 < result.valid["auc"] < 1.0 and 0.5 < result.test["auc"] < 1.0
    assert "no_click_recent_queries" in result.slices
    assert 1 <= result.best_epoch <= max(h["epoch"] for h in result.history)
    assert result.train_seconds > 0 and result.samples_per_second > 0
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["test"]["auc"] == pytest.approx(result.test["auc"])
    assert metrics["best_epoch"] == result.best_epoch
    assert (tmp_path / "run/model.txt").is_file()
    assert not (tmp_path / "run/checkpoint.pt").exists()


@pytest.mark.slow
def test_same_seed_same_trees(dataset: PreparedDataset, tmp_path: Path) -> None:
    cfg = TrainConfig(model="lightgbm", seed=1, progress=False)
    first = train_gbdt(dataset, tmp_path / "a", cfg, with_query=True)
    second = train_gbdt(dataset, tmp_path / "b", cfg, with_query=True)
    assert first.test == second.test
    assert (tmp_path / "a/model.txt").read_text() == (tmp_path / "b/model.txt").read_text()
