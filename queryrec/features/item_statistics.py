"""Smoothed click rates of items and authors, from the training split only (numpy + polars).

The one place for this rule. A rate is the click share of a key's training impressions,
shrunk towards the global training click rate by `prior_weight` pseudo-impressions:

    rate(k) = (clicks(k) + prior_weight * global_rate) / (impressions(k) + prior_weight)

so a key with few impressions stays near the global rate and one never shown in training
gets the global rate exactly. Impressions are the samples of `samples/train.parquet`
(one per (user, item, time) row, label 0/1); an author's impressions are those of its
items, the item -> author map being `features/items.parquet` column `author` (row = item
index, as `queryrec.models.registry.feature_tables` reads it).

Why the training split only: validation and test samples are what a model is judged on;
a rate that counted their labels would hand the model the answer (leakage). Every model
that uses these statistics, the LightGBM reference (`queryrec.training.gbdt`) and neural
models given them as embedded bucket fields (`rate_bucket_edges`, `rate_buckets`), sees
the same numbers.

A training sample's own label is inside the rate computed over the whole training split;
`out_of_fold_rates` gives training rows rates that leave their own fold out, so a model
fitted on them meets rates on training rows that behave like those it meets on validation
and test (where no label of theirs is counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from queryrec.features.dataset import PreparedDataset

DEFAULT_PRIOR_WEIGHT = 20.0


@dataclass(frozen=True)
class ClickRates:
    """Smoothed training click rates by index (float32); `global_rate` fills the unseen."""

    item: np.ndarray  # (vocab items,) indexed by item index
    author: np.ndarray  # (vocab authors,) indexed by author index
    global_rate: float


def item_authors(dataset: PreparedDataset) -> np.ndarray:
    """(vocab items,) int64 author index of every item index (features/items.parquet)."""
    items = pl.read_parquet(dataset.root / "features/items.parquet", columns=["index", "author"])
    table = np.zeros(int(dataset.schema["vocab_sizes"]["items"]), dtype=np.int64)
    table[items["index"].to_numpy()] = items["author"].to_numpy()
    return table


def smoothed_rates(
    keys: np.ndarray,
    labels: np.ndarray,
    size: int,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    global_rate: float | None = None,
) -> np.ndarray:
    """(size,) float32 smoothed click rate per key index 0..size-1 from impressions
    (keys[i], labels[i]); `global_rate` defaults to the mean label of these impressions
    (0.0 when there are none). Keys without an impression get `global_rate`."""
    if prior_weight <= 0:
        raise ValueError(f"prior_weight must be positive, not {prior_weight}")
    keys = np.asarray(keys, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.float64)
    if global_rate is None:
        global_rate = float(labels.mean()) if len(labels) else 0.0
    impressions = np.bincount(keys, minlength=size)[:size].astype(np.float64)
    clicks = np.bincount(keys, weights=labels, minlength=size)[:size]
    return ((clicks + prior_weight * global_rate) / (impressions + prior_weight)).astype(np.float32)


def training_click_rates(
    dataset: PreparedDataset, prior_weight: float = DEFAULT_PRIOR_WEIGHT
) -> ClickRates:
    """The smoothed item and author click rates of the training split's samples."""
    train = dataset.samples("train")
    item = train["item"].to_numpy().astype(np.int64)
    label = train["label"].to_numpy().astype(np.float64)
    author = item_authors(dataset)[item]
    vocab = dataset.schema["vocab_sizes"]
    global_rate = float(label.mean()) if len(label) else 0.0
    return ClickRates(
        item=smoothed_rates(item, label, int(vocab["items"]), prior_weight, global_rate),
        author=smoothed_rates(author, label, int(vocab["authors"]), prior_weight, global_rate),
        global_rate=global_rate,
    )


def out_of_fold_rates(
    keys: np.ndarray,
    labels: np.ndarray,
    size: int,
    folds: int,
    seed: int,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
) -> np.ndarray:
    """(n,) float32 rate of keys[i] computed without the fold of impression i: the rows
    are dealt into `folds` random folds (from `seed`), each row gets the smoothed rate of
    the other folds' impressions, shrunk to the global rate of all of them. For training
    rows only; validation and test use the full training rates."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, not {folds}")
    keys = np.asarray(keys, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.float64)
    global_rate = float(labels.mean()) if len(labels) else 0.0
    fold = np.random.default_rng(seed).integers(0, folds, size=len(keys))
    impressions = np.bincount(keys, minlength=size)[:size].astype(np.float64)
    clicks = np.bincount(keys, weights=labels, minlength=size)[:size]
    out = np.empty(len(keys), dtype=np.float32)
    for f in range(folds):
        rows = fold == f
        own_impressions = np.bincount(keys[rows], minlength=size)[:size]
        own_clicks = np.bincount(keys[rows], weights=labels[rows], minlength=size)[:size]
        rest = (clicks - own_clicks + prior_weight * global_rate) / (
            impressions - own_impressions + prior_weight
        )
        out[rows] = rest[keys[rows]]
    return out


def rate_bucket_edges(rates_of_train_impressions: np.ndarray, n_buckets: int = 16) -> np.ndarray:
    """Increasing float64 bucket edges: the interior quantiles (1/n .. (n-1)/n) of the rate
    of every training impression (e.g. `rates.item[train_items]`), duplicates dropped, so
    each bucket holds about the same number of training impressions (many keys share the
    global rate, so fewer than n buckets may remain)."""
    if n_buckets < 2:
        raise ValueError(f"n_buckets must be at least 2, not {n_buckets}")
    values = np.asarray(rates_of_train_impressions, dtype=np.float64)
    if len(values) == 0:
        return np.zeros(0, dtype=np.float64)
    quantiles = np.quantile(values, np.arange(1, n_buckets) / n_buckets)
    return np.unique(quantiles)


def rate_buckets(rates: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """int64 bucket code of each rate: 1 + the number of edges <= rate, so codes run
    1..len(edges) + 1 (at most n_buckets); 0 is left for padding, as in every
    embedded field of the project."""
    return 1 + np.searchsorted(np.asarray(edges), np.asarray(rates), side="right").astype(np.int64)


RATE_BUCKETS = 16  # bucket codes 1..16 of the rates as embedded item fields (0 = padding)
RATE_FOLDS = 5  # folds of the training rows' out-of-fold codes


@dataclass(frozen=True)
class RateBucketFields:
    """The rates as the neural "-stats" models read them: bucket codes of the item's and
    its author's rate. `table` (the full training rates) is what validation, test and
    serving see, carried in the item vectors of the bundle; `train_rows` holds each
    training sample's out-of-fold codes, which replace the table's codes of its candidate
    in training, so that no row learns from a rate that counts its own label."""

    table: np.ndarray  # (vocab items, 2) int64: item rate code, author rate code
    train_rows: np.ndarray  # (n train samples, 2) int64, in samples/train.parquet order


def rate_bucket_fields(
    dataset: PreparedDataset, seed: int = 0, prior_weight: float = DEFAULT_PRIOR_WEIGHT
) -> RateBucketFields:
    """Both code tables; the edges are the quantiles of the full rates over the training
    impressions, the same edges for the table and the out-of-fold codes."""
    rates = training_click_rates(dataset, prior_weight)
    authors = item_authors(dataset)
    train = dataset.samples("train")
    item = train["item"].to_numpy().astype(np.int64)
    label = train["label"].to_numpy().astype(np.float64)
    table, rows = [], []
    # (rate per key, each training row's key, the rate of each item index)
    columns = (
        (rates.item, item, rates.item),
        (rates.author, authors[item], rates.author[authors]),
    )
    for per_key, keys, per_item in columns:
        edges = rate_bucket_edges(per_item[item], RATE_BUCKETS)
        table.append(rate_buckets(per_item, edges))
        fold_rates = out_of_fold_rates(keys, label, len(per_key), RATE_FOLDS, seed, prior_weight)
        rows.append(rate_buckets(fold_rates, edges))
    return RateBucketFields(np.stack(table, axis=1), np.stack(rows, axis=1))
