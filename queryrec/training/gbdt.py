"""A gradient-boosted-trees reference (LightGBM) for the comparison table: rows "lightgbm"
(no query features) and "lightgbm-query" (adds query features).

Not in the paper: a yardstick that says how much of the neural models' AUC a plain
tabular model over hand-made features already reaches, with and without what the user
searched for. Every sample is one row of these features, built from the project's own
batch path (`BatchBuilder.build`, i.e. the one feature path `queryrec.features.model_inputs`,
strictly before the impression's time):

| feature | kind | what |
|---|---|---|
| `user`, `item` | categorical | user and candidate item indices |
| `category_1` .. `category_4`, `author` | categorical | the candidate's side features (features/items.parquet) |
| `hour` | numeric | Beijing hour of the impression |
| profile fields | categorical | the user's profile codes (`PreparedDataset.profile_table`) |
| `history_length` | numeric | non-padding slots of the click history (at most H) |
| `history_same_category_1`, `_2` | numeric | history clicks whose category_1 (category_2) is the candidate's |
| `item_rate`, `author_rate` | numeric | smoothed training click rate of the item and of its author (`queryrec.features.item_statistics`) |
| `overlap_last_query`, `overlap_last_3_queries` | numeric | with_query only: distinct words of the last 1 / 3 queries found in the candidate's caption |
| `queries_before` | numeric | with_query only: the user's searches before t (not capped at L) |
| `last_query_age` | numeric | with_query only: age bucket of the most recent query (0: none) |

Excluded: the L_next / L_cl targets (training-only signals of the neural objective), the
item type and caption words themselves (only their overlap with queries), the
diffusion pseudo-positives, and any learned representation of the queries: the query rows
get lexical overlap and recency only.

No leakage: the click rates come from the training split's samples only
(`training_click_rates`); validation and test rows look them up, training rows get
out-of-fold rates (`item_statistics.out_of_fold_rates`: a row's own label is never inside
its rate; chosen on validation AUC of `small`, see `GBDTParams`). Early stopping watches
validation AUC; test is scored once, with the best iteration.

The booster is written as `RUN_DIR/model.txt` beside `metrics.json` (the shape
`loop.train` writes); there is no `checkpoint.pt` and no export: the service scores ONNX
graphs built on the one feature path, and these hand-made features and trees are not
part of it, so this row cannot be served.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from queryrec.errors import QueryRecError
from queryrec.features.dataset import PreparedDataset
from queryrec.features.item_statistics import (
    ClickRates,
    out_of_fold_rates,
    training_click_rates,
)
from queryrec.features.model_inputs import HistoryLengths
from queryrec.progress import say
from queryrec.training.batches import BatchBuilder, SplitArrays
from queryrec.training.checkpoint import GBDT_MODEL_FILE
from queryrec.training.config import TrainConfig
from queryrec.training.results import TrainResult, calibration, jsonable, split_metrics

CHUNK_ROWS = 8192  # samples per feature batch
HISTORY_EVERY = 50  # boosting rounds between two `history` entries


@dataclass(frozen=True)
class GBDTParams:
    """LightGBM settings of both rows; `TrainConfig.model_overrides` may replace any field.

    Tuned a little on validation AUC of `small` (seed 0, the "lightgbm" row, one knob at a
    time from num_leaves 63, cat_smooth = cat_l2 = 10, max_cat_threshold 32: valid AUC
    0.7422), never on test. Kept: cat_smooth = cat_l2 = 50 (0.7448; 100: 0.7429),
    max_cat_threshold 16 (0.7442; 64: 0.7395), num_leaves 31 (0.7430; 127: 0.7396), together
    0.7452. No gain: learning_rate 0.03, min_data_in_leaf 300, min_data_per_group 300,
    feature_fraction 0.7, prior_weight 5 or 50 (0.7413-0.7432). Training rows' rates
    "in_sample" instead of out-of-fold: 0.7088 (the trees learn the own-label leak, best
    iteration 3)."""

    num_leaves: int = 31
    learning_rate: float = 0.05
    num_boost_round: int = 1000  # upper bound; early stopping usually stops sooner
    early_stopping_rounds: int = 50
    min_data_in_leaf: int = 100
    feature_fraction: float = 0.9
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    lambda_l2: float = 1.0
    cat_smooth: float = 50.0
    cat_l2: float = 50.0
    max_cat_threshold: int = 16
    min_data_per_group: int = 100
    num_threads: int = 2
    # Click rates: the smoothing prior, and for training rows "out_of_fold" (the row's fold
    # left out, `folds` folds) or "in_sample" (the full training rates, own label inside).
    prior_weight: float = 20.0
    train_rates: str = "out_of_fold"
    folds: int = 5

    def __post_init__(self) -> None:
        if self.train_rates not in ("out_of_fold", "in_sample"):
            raise QueryRecError(
                f"train_rates must be out_of_fold or in_sample, not {self.train_rates!r}"
            )

    def lightgbm(self, seed: int) -> dict[str, Any]:
        """The LightGBM parameter dict, seeded and deterministic."""
        return {
            "objective": "binary",
            "metric": ["auc", "binary_logloss"],  # the first one drives early stopping
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": self.bagging_freq,
            "lambda_l2": self.lambda_l2,
            "cat_smooth": self.cat_smooth,
            "cat_l2": self.cat_l2,
            "max_cat_threshold": self.max_cat_threshold,
            "min_data_per_group": self.min_data_per_group,
            "num_threads": self.num_threads,
            "seed": seed,
            "bagging_seed": seed,
            "feature_fraction_seed": seed,
            "data_random_seed": seed,
            "deterministic": True,
            "force_col_wise": True,  # with `deterministic`: the same trees every run
            "verbosity": -1,
        }


@dataclass(frozen=True)
class ItemSide:
    """The candidate-side tables, row = item index."""

    categories: np.ndarray  # (items, 4) int64
    author: np.ndarray  # (items,) int64
    caption: np.ndarray  # (items, C) int64 words, right-padded with 0

    @classmethod
    def load(cls, dataset: PreparedDataset) -> ItemSide:
        items = pl.read_parquet(dataset.root / "features/items.parquet")
        rows = int(dataset.schema["vocab_sizes"]["items"])
        index = items["index"].to_numpy()
        categories = np.zeros((rows, 4), dtype=np.int64)
        categories[index] = np.stack(
            [items[f"category_{i}"].to_numpy() for i in range(1, 5)], axis=1
        )
        author = np.zeros(rows, dtype=np.int64)
        author[index] = items["author"].to_numpy()
        captions = items["caption"].to_list()
        width = max((len(words) for words in captions), default=0)
        caption = np.zeros((rows, max(width, 1)), dtype=np.int64)
        for row, words in zip(index, captions, strict=True):
            caption[row, : len(words)] = words
        return cls(categories=categories, author=author, caption=caption)


def feature_names(profile_fields: list[str], *, with_query: bool) -> tuple[list[str], list[str]]:
    """(every feature name in column order, the categorical ones)."""
    categorical = [
        "user",
        "item",
        "category_1",
        "category_2",
        "category_3",
        "category_4",
        "author",
        *profile_fields,
    ]
    numeric = [
        "hour",
        "history_length",
        "history_same_category_1",
        "history_same_category_2",
        "item_rate",
        "author_rate",
    ]
    if with_query:
        numeric += [
            "overlap_last_query",
            "overlap_last_3_queries",
            "queries_before",
            "last_query_age",
        ]
    return categorical + numeric, categorical


def caption_overlap(query_words: np.ndarray, caption: np.ndarray) -> np.ndarray:
    """(B, W) query words (0 = padding), (B, C) caption words -> (B,) int64: how many
    distinct non-zero query words occur in the caption."""
    words = np.sort(query_words, axis=1)
    first = np.ones_like(words, dtype=bool)
    first[:, 1:] = words[:, 1:] != words[:, :-1]  # each distinct word counted once
    found = (words[:, :, None] == caption[:, None, :]).any(axis=2)
    return (found & first & (words > 0)).sum(axis=1).astype(np.int64)


def sample_features(
    dataset: PreparedDataset,
    builder: BatchBuilder,
    arrays: SplitArrays,
    side: ItemSide,
    item_rate: np.ndarray,
    author_rate: np.ndarray,
    *,
    with_query: bool,
) -> np.ndarray:
    """(n, F) float32 features of every sample of `arrays`, columns as `feature_names`;
    `item_rate`, `author_rate` are the (n,) rates of the samples' items and authors."""
    profile = dataset.profile_table()
    queries_before = arrays.search_end - builder.events.query_start[arrays.user]
    chunks = []
    for start in range(0, len(arrays), CHUNK_ROWS):
        rows = np.arange(start, min(start + CHUNK_ROWS, len(arrays)))
        inputs = builder.build(arrays, rows).inputs
        item = inputs.item
        history = inputs.click_history
        in_history = history > 0
        own = side.categories[item]  # (B, 4)
        seen = side.categories[history]  # (B, H, 4)
        columns = [
            inputs.user,
            item,
            *own.T,
            side.author[item],
            *profile[inputs.user].T,
            inputs.hour,
            in_history.sum(axis=1),
            (in_history & (seen[:, :, 0] == own[:, None, 0])).sum(axis=1),
            (in_history & (seen[:, :, 1] == own[:, None, 1])).sum(axis=1),
            item_rate[rows],
            author_rate[rows],
        ]
        if with_query:
            queries = inputs.query_tokens  # (B, L', T), newest last
            caption = side.caption[item]
            columns += [
                caption_overlap(queries[:, -1, :], caption),
                caption_overlap(queries[:, -3:, :].reshape(len(rows), -1), caption),
                queries_before[rows],
                inputs.query_age[:, -1],
            ]
        chunks.append(np.stack([np.asarray(c, dtype=np.float32) for c in columns], axis=1))
    width = len(
        feature_names(list(dataset.schema["vocab_sizes"]["profile"]), with_query=with_query)[0]
    )
    return np.concatenate(chunks) if chunks else np.zeros((0, width), dtype=np.float32)


def train_gbdt(
    dataset: PreparedDataset,
    run_dir: Path,
    cfg: TrainConfig,
    *,
    with_query: bool,
    params: GBDTParams | None = None,
) -> TrainResult:
    """Fit the LightGBM row ("lightgbm-query" with `with_query`, else "lightgbm") on the
    training split, early-stopped on validation AUC; write `run_dir/metrics.json` and the
    booster `run_dir/model.txt`. Seeded by `cfg.seed` (the same seed gives the same trees);
    `cfg.max_train_samples` caps the training rows (a seeded random subset); fields of
    `GBDTParams` may come in `cfg.model_overrides`. Not exportable (module docstring)."""
    name = "lightgbm-query" if with_query else "lightgbm"
    params = _with_overrides(params or GBDTParams(), cfg.model_overrides)
    started = time.perf_counter()
    lengths = dataset.schema["max_lengths"]
    builder = BatchBuilder(
        dataset,
        HistoryLengths(
            clicks=int(lengths["click_history"]),
            queries=int(lengths["query_history"]),
            tokens=int(lengths["query_tokens"]),
        ),
    )
    side = ItemSide.load(dataset)
    rates = training_click_rates(dataset, params.prior_weight)
    profile_fields = list(dataset.schema["vocab_sizes"]["profile"])
    names, categorical = feature_names(profile_fields, with_query=with_query)

    splits = {s: builder.split_arrays(s, with_aux=False) for s in ("train", "valid", "test")}
    train_rows = _train_rows(len(splits["train"]), cfg)
    features = {
        split: sample_features(
            dataset,
            builder,
            arrays,
            side,
            *_rates_of(arrays, split, rates, side, params, cfg),
            with_query=with_query,
        )
        for split, arrays in splits.items()
    }
    if cfg.progress:
        say(
            f"[train] {name} seed {cfg.seed}: {len(names)} features of "
            f"{len(train_rows):,} training samples in {time.perf_counter() - started:.1f}s"
        )

    train_set = lgb.Dataset(
        features["train"][train_rows],
        label=splits["train"].label[train_rows],
        feature_name=names,
        categorical_feature=categorical,
        free_raw_data=False,
    )
    valid_set = lgb.Dataset(features["valid"], label=splits["valid"].label, reference=train_set)
    evaluations: dict[str, Any] = {}
    callbacks: list[Callable[..., Any]] = [
        lgb.early_stopping(params.early_stopping_rounds, first_metric_only=True, verbose=False),
        lgb.record_evaluation(evaluations),
    ]
    if cfg.progress:
        callbacks.append(_progress(name, cfg.seed))
    fit_started = time.perf_counter()
    booster = lgb.train(
        params.lightgbm(cfg.seed),
        train_set,
        num_boost_round=params.num_boost_round,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=callbacks,
    )
    train_seconds = time.perf_counter() - fit_started
    best = int(booster.best_iteration) or booster.current_iteration()
    rounds = len(evaluations.get("valid", {}).get("auc", [])) or booster.current_iteration()

    probabilities = {
        split: np.asarray(booster.predict(features[split], num_iteration=best), dtype=np.float32)
        for split in ("valid", "test")
    }
    valid_metrics, _ = split_metrics(dataset, splits["valid"], probabilities["valid"])
    test_metrics, slices = split_metrics(dataset, splits["test"], probabilities["test"])
    result = TrainResult(
        model=name,
        seed=cfg.seed,
        valid=valid_metrics,
        test=test_metrics,
        slices=slices,
        history=_history(evaluations, best, rounds),
        best_epoch=best,
        train_seconds=train_seconds,
        # Each boosting round passes over every training row once (histograms).
        samples_per_second=len(train_rows) * rounds / train_seconds if train_seconds else 0.0,
        calibration=calibration(
            splits["valid"], probabilities["valid"], splits["test"], probabilities["test"]
        ),
    )
    if cfg.progress:
        say(
            f"[train] {name} seed {cfg.seed}: best iteration {best} of {rounds}, valid AUC "
            f"{valid_metrics['auc']:.4f}, test AUC {test_metrics['auc']:.4f}, "
            f"{train_seconds:.1f}s boosting"
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(run_dir / GBDT_MODEL_FILE), num_iteration=best)
    (run_dir / "metrics.json").write_text(
        json.dumps(jsonable(dataclasses.asdict(result)), indent=2) + "\n"
    )
    return result


def _with_overrides(params: GBDTParams, overrides: dict[str, Any]) -> GBDTParams:
    known = {f.name for f in dataclasses.fields(GBDTParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise QueryRecError(
            f"unknown LightGBM setting(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
        )
    return dataclasses.replace(params, **overrides)


def _train_rows(n: int, cfg: TrainConfig) -> np.ndarray:
    """The training rows used: all of them, or a seeded random subset of
    `cfg.max_train_samples` in time order."""
    if cfg.max_train_samples is None or cfg.max_train_samples >= n:
        return np.arange(n)
    picked = np.random.default_rng(cfg.seed).choice(n, cfg.max_train_samples, replace=False)
    return np.sort(picked)


def _rates_of(
    arrays: SplitArrays,
    split: str,
    rates: ClickRates,
    side: ItemSide,
    params: GBDTParams,
    cfg: TrainConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The (n,) item and author rates of a split's samples: the training rates looked up,
    or for training rows with `train_rates="out_of_fold"` the rates without the row's fold."""
    author = side.author[arrays.item]
    if split != "train" or params.train_rates == "in_sample":
        return rates.item[arrays.item], rates.author[author]
    label = arrays.label.astype(np.float64)
    return (
        out_of_fold_rates(
            arrays.item, label, len(rates.item), params.folds, cfg.seed, params.prior_weight
        ),
        out_of_fold_rates(
            author, label, len(rates.author), params.folds, cfg.seed, params.prior_weight
        ),
    )


def _history(evaluations: dict[str, Any], best: int, rounds: int) -> list[dict[str, float]]:
    """Validation AUC and log loss every `HISTORY_EVERY` rounds, at the best and the last
    round; `epoch` is the boosting round (the key `queryrec bench` plots)."""
    valid = evaluations.get("valid", {})
    aucs, losses = valid.get("auc", []), valid.get("binary_logloss", [])
    marks = sorted({*range(HISTORY_EVERY, rounds + 1, HISTORY_EVERY), best, rounds} - {0})
    return [
        {
            "epoch": float(i),
            "valid_auc": float(aucs[i - 1]),
            "valid_logloss": float(losses[i - 1]),
        }
        for i in marks
        if i <= len(aucs)
    ]


def _progress(name: str, seed: int) -> Callable[[Any], None]:
    """A LightGBM callback: one `say` line of validation AUC every `HISTORY_EVERY` rounds."""

    def callback(env: Any) -> None:
        round_ = env.iteration + 1
        if round_ % HISTORY_EVERY == 0:
            scores = {metric: value for _, metric, value, _ in env.evaluation_result_list}
            say(f"[train] {name} seed {seed} round {round_}: valid AUC {scores['auc']:.4f}")

    return callback
