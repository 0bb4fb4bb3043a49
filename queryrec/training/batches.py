"""Training and evaluation batches, built vectorised from a prepared dataset (numpy only).

The model inputs come from the one feature path (`queryrec.features.model_inputs`), the
same code the service runs per request; this module adds what only training has: labels,
the L_next and L_cl targets, the training-only inputs (`training.task_inputs`) and the
order of samples. A batch is a `TrainingBatch`:

| field | shape | what |
|---|---|---|
| `inputs` | `ModelInputs` | the model inputs (one candidate per row), with the optional inputs the model reads |
| `label` | (B,) float32 | click 0/1 |
| `next_positive`, `next_negative` | (B, P), (B, N) | L_next samples (training only) |
| `cl_positive` | (B, K) | L_cl positives of the last search (training only) |

Query slots that hold no search in any sample of a batch are cut off
(`model_inputs.trim_query_columns`, which the service's encoder batches use too); most
samples have few queries (a mean of about 4 of L = 20 on `small`), so it saves most of
the encoder's work. `query_count` lets the training loop batch samples of similar history
length together (`batch_order`).

L_next sampling (choice; the paper names r+ and r- but not how they are drawn), for a
sample of user u at time t in split S, with W = `next_window_hours`:
- window: timestamps in (t, min(t + W, end of S)), strictly after t, so the impression's
  own batch is never a target, and never in a later split, so a training sample cannot
  learn validation or test labels;
- r+: P draws, uniform with replacement, from u's feed clicks in the window (a click
  counts once per clicked impression, so an item clicked twice is twice as likely);
- r-: N draws, uniform with replacement, from the impressions in the window of one of two
  sources (`next_negative_source`): "feed" (default), the impressions of every user, so
  L_next teaches the query representation what the user will engage with against what
  the feed shows in general; or "user", u's own non-clicked impressions (hard negatives,
  which L_ctr already covers). With `next_negatives_exclude_positives` (default) an
  impression whose item is one of u's r+ items of the window (any of them, not only the
  P drawn) is never a negative: N x `next_negative_draws` candidates are drawn, those
  items are rejected and the first N left are kept, which is a uniform draw from the
  filtered impressions; where fewer than N pass (a window made almost only of u's own
  clicked items), the remaining slots are empty.
Empty slots are 0 and masked out of the loss.

L_cl positives of the user's last search session s before t, from one of two sources
(`cl_positive_source`): "session" (default), the items clicked in s itself (first K in
display order); or "query", the paper's I+_q: the items clicked in any training-split
session of s's normalised query by any user, top K by click count, without the user's
own sessions of that query at or after t (`queryrec.training.query_positives`, built once
when the builder is made). Where that leaves no item, `PseudoPositives` (the diffusion
job's output) may supply items; without it such a query has no positive and adds no L_cl
term.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from queryrec.features.dataset import PreparedDataset
from queryrec.features.item_statistics import rate_bucket_fields
from queryrec.features.model_inputs import (
    HistoryLengths,
    ModelInputs,
    first_k_per_row,
    history_windows,
    inputs_from_windows,
    trim_query_columns,
)
from queryrec.features.pseudo_positives import PseudoPositives
from queryrec.features.query_positives import QueryPositives
from queryrec.features.time_features import HOUR_MS
from queryrec.training.query_positives import query_positives
from queryrec.training.task_inputs import search_task_inputs, with_training_inputs

A = TypeVar("A")
B = TypeVar("B")


@dataclass(frozen=True)
class TrainingBatch(Generic[A]):
    """One batch: the model inputs, the labels and the auxiliary-loss targets."""

    inputs: ModelInputs[A]
    label: A  # (B,) float32
    next_positive: A | None = None  # (B, P) L_next r+ items, 0 = empty slot
    next_negative: A | None = None  # (B, N) L_next r- items, 0 = empty slot
    cl_positive: A | None = None  # (B, K) L_cl positives of the last search, 0 = none

    def map(self, convert: Callable[[A], B]) -> TrainingBatch[B]:
        """Every array through `convert` (e.g. numpy -> torch on a device)."""
        targets = {
            f.name: None if getattr(self, f.name) is None else convert(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in ("inputs", "label")
        }
        return TrainingBatch(self.inputs.map(convert), convert(self.label), **targets)


@dataclass(frozen=True)
class AuxiliaryConfig:
    """How the auxiliary-loss targets are sampled."""

    next_window_hours: float = 24.0
    next_positives: int = 4  # P
    next_negatives: int = 4  # N
    next_negative_source: str = "feed"  # "feed": any user's impressions; "user": own non-clicks
    next_negatives_exclude_positives: bool = True  # drop draws whose item is in the user's r+
    next_negative_draws: int = 4  # draws per negative slot before the r+ filter (oversampling)
    cl_positives: int = 4  # K
    cl_positive_source: str = "session"  # "session": clicks of s; "query": pooled I+_q

    def __post_init__(self) -> None:
        if self.cl_positive_source not in ("session", "query"):
            raise ValueError(
                f"cl_positive_source must be session or query, not {self.cl_positive_source!r}"
            )
        if self.next_negative_source not in ("feed", "user"):
            raise ValueError(
                f"next_negative_source must be feed or user, not {self.next_negative_source!r}"
            )
        if self.next_negative_draws < 1:
            raise ValueError(
                f"next_negative_draws must be positive, not {self.next_negative_draws}"
            )


@dataclass
class SplitArrays:
    """Per-sample arrays of one split, plus the L_next sampling ranges."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    label: np.ndarray
    click_end: np.ndarray
    search_end: np.ndarray
    query_count: np.ndarray  # (n,) queries before t, capped at the history length L
    next_positive_range: tuple[np.ndarray, np.ndarray] | None = None
    next_negative_range: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.user)


class BatchBuilder:
    """Turns sample rows into model inputs; knows the history lengths and L_next windows."""

    def __init__(
        self,
        dataset: PreparedDataset,
        lengths: HistoryLengths,
        *,
        aux: AuxiliaryConfig | None = None,
        pseudo_positives: PseudoPositives | None = None,
        reads: frozenset[str] = frozenset(),
        training_inputs: tuple[str, ...] = (),
        slot_positives: QueryPositives | None = None,
    ):
        """`reads`: the optional model inputs to build (`model_inputs.OPTIONAL_INPUTS`);
        `training_inputs`: the training-only ones (`task_inputs.TRAINING_INPUTS`);
        `slot_positives`: the diffusion table that gives searches without clicked results
        their query's pseudo-positives (`features.query_positives`), for the query slots."""
        self.ds = dataset
        self.lengths = lengths
        self.events = dataset.timelines()
        self.aux = aux
        self.reads = reads
        self.slot_positives = slot_positives
        self.search = search_task_inputs(training_inputs, dataset)
        self.rate_codes = (
            rate_bucket_fields(dataset).train_rows
            if "candidate_rate_codes" in training_inputs
            else None
        )
        self.pseudo = pseudo_positives
        self.query_positives = (
            query_positives(dataset, aux.cl_positives)
            if aux is not None and aux.cl_positive_source == "query"
            else None
        )
        unclicked = np.flatnonzero(dataset.feed_click == 0)
        self.noclick_user = dataset.feed_user[unclicked]
        self.noclick_ts = dataset.feed_ts[unclicked]
        self.noclick_item = dataset.feed_item[unclicked]
        by_time = np.argsort(dataset.feed_ts, kind="stable")
        self.feed_ts_sorted = dataset.feed_ts[by_time]
        self.feed_item_by_time = dataset.feed_item[by_time]
        self.t_lo = (
            int(min(dataset.feed_ts.min(), dataset.search_ts.min())) if len(dataset.feed_ts) else 0
        )
        self.span = int(dataset.feed_ts.max()) - self.t_lo + 2 * self._window_ms() + 1

    def _window_ms(self) -> int:
        return int((self.aux.next_window_hours if self.aux else 0) * HOUR_MS)

    def _key(self, users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        return users.astype(np.int64) * self.span + (ts - self.t_lo)

    def split_arrays(self, split: str, *, with_aux: bool) -> SplitArrays:
        frame = self.ds.samples(split)
        user = frame["user"].to_numpy().astype(np.int64)
        ts = frame["ts"].to_numpy()
        click_end, search_end = self.events.history_ends(user, ts)
        arrays = SplitArrays(
            user=user,
            item=frame["item"].to_numpy().astype(np.int64),
            ts=ts,
            label=frame["label"].to_numpy().astype(np.float32),
            click_end=click_end,
            search_end=search_end,
            query_count=np.clip(
                search_end - self.events.query_start[user], 0, self.lengths.queries
            ).astype(np.int64),
        )
        if with_aux and self.aux is not None:
            window = self._window_ms()
            # Targets never reach past the split: a train sample near the cut would
            # otherwise learn from validation labels through L_next.
            horizon = self._split_end(split)
            start = self._key(arrays.user, arrays.ts)  # strictly after t: side="right"
            stop = self._key(arrays.user, np.minimum(arrays.ts + window, horizon - 1))
            click_keys = self._key(self.ds.click_user, self.ds.click_ts)
            arrays.next_positive_range = (
                np.searchsorted(click_keys, start, side="right"),
                np.searchsorted(click_keys, stop, side="right"),
            )
            if self.aux.next_negative_source == "user":
                noclick_keys = self._key(self.noclick_user, self.noclick_ts)
                arrays.next_negative_range = (
                    np.searchsorted(noclick_keys, start, side="right"),
                    np.searchsorted(noclick_keys, stop, side="right"),
                )
            else:
                end = np.minimum(arrays.ts + window, horizon - 1)
                arrays.next_negative_range = (
                    np.searchsorted(self.feed_ts_sorted, arrays.ts, side="right"),
                    np.searchsorted(self.feed_ts_sorted, end, side="right"),
                )
        return arrays

    def _split_end(self, split: str) -> int:
        """The first timestamp after `split` (exclusive end of its period)."""
        cuts = self.ds.schema["split"]
        ends = {"train": cuts["valid_start_ms"], "valid": cuts["test_start_ms"]}
        return int(ends.get(split, np.iinfo(np.int64).max // 2))

    def build(
        self, arrays: SplitArrays, rows: np.ndarray, rng: np.random.Generator | None = None
    ) -> TrainingBatch[np.ndarray]:
        """The batch for `rows` of `arrays`; auxiliary targets and the training-only inputs
        only when `rng` is given (training rows)."""
        user, ts = arrays.user[rows], arrays.ts[rows]
        ends = (arrays.click_end[rows], arrays.search_end[rows])
        windows = history_windows(self.events, user, ts, self.lengths, ends)
        inputs = inputs_from_windows(
            self.events,
            windows,
            self.lengths,
            arrays.item[rows],
            reads=self.reads,
            query_positives=self.slot_positives,
        )
        inputs = trim_query_columns(inputs)
        if rng is not None:
            inputs = with_training_inputs(
                inputs, rows, rng, self.search, self.rate_codes, self.lengths
            )
        batch = TrainingBatch(inputs, arrays.label[rows])
        if rng is None or self.aux is None or arrays.next_positive_range is None:
            return batch
        assert arrays.next_negative_range is not None
        negatives = (
            self.noclick_item if self.aux.next_negative_source == "user" else self.feed_item_by_time
        )
        return dataclasses.replace(
            batch,
            next_positive=_sample_ranges(
                self.ds.click_item, arrays.next_positive_range, rows, self.aux.next_positives, rng
            ),
            next_negative=self._next_negatives(negatives, arrays, rows, rng),
            cl_positive=self._last_query_positives(windows.query_index[:, -1]),
        )

    def _next_negatives(
        self, values: np.ndarray, arrays: SplitArrays, rows: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """(B, N) r- draws: uniform with replacement from the window's impressions, without
        those whose item is one of the user's r+ items of the same window (when
        `next_negatives_exclude_positives`); by rejection: N x `next_negative_draws`
        candidates per row, the first N that pass are kept, slots left over are 0."""
        assert self.aux is not None and arrays.next_negative_range is not None
        n = self.aux.next_negatives
        if not self.aux.next_negatives_exclude_positives:
            return _sample_ranges(values, arrays.next_negative_range, rows, n, rng)
        assert arrays.next_positive_range is not None
        draws = _sample_ranges(
            values, arrays.next_negative_range, rows, n * self.aux.next_negative_draws, rng
        )  # (B, N * draws)
        own = _in_ranges(self.ds.click_item, arrays.next_positive_range, rows, draws)
        keep = (draws > 0) & ~own
        # Stable: the kept draws in drawing order, first n per row.
        order = np.argsort(~keep, axis=1, kind="stable")[:, :n]
        picked = np.take_along_axis(draws, order, axis=1)
        return np.where(np.take_along_axis(keep, order, axis=1), picked, 0).astype(np.int64)

    def _last_query_positives(self, session: np.ndarray) -> np.ndarray:
        """(B,) last session index (-1: none) -> (B, K) clicked (or pseudo) items, 0 = none."""
        assert self.aux is not None
        k = self.aux.cl_positives
        if self.query_positives is not None:
            offsets, items = self.query_positives.offsets, self.query_positives.items
        else:
            offsets, items = self.ds.clicked_offsets, self.ds.clicked_items
        out = first_k_per_row(offsets, items, session, k)
        if self.pseudo is not None:
            empty = (out[:, 0] == 0) & (session >= 0)
            out[empty] = first_k_per_row(self.pseudo.offsets, self.pseudo.items, session[empty], k)
        return out


def _in_ranges(
    values: np.ndarray,
    ranges: tuple[np.ndarray, np.ndarray],
    rows: np.ndarray,
    candidates: np.ndarray,
) -> np.ndarray:
    """(B, C) bool: candidates[i, c] is among values[lo:hi] of row rows[i]."""
    lo, hi = ranges[0][rows], ranges[1][rows]
    size = np.maximum(hi - lo, 0)
    owner = np.repeat(np.arange(len(rows), dtype=np.int64), size)
    index = np.arange(int(size.sum()), dtype=np.int64) - np.repeat(np.cumsum(size) - size, size)
    members = values[np.repeat(lo, size) + index].astype(np.int64)
    width = int(max(int(values.max(initial=0)), int(candidates.max(initial=0)))) + 1
    keys = np.arange(len(rows), dtype=np.int64)[:, None] * width + candidates.astype(np.int64)
    if len(members) == 0:
        return np.zeros(keys.shape, dtype=bool)
    # Membership by binary search in the sorted keys: np.isin / np.unique (hash-based in
    # numpy 2) took about 3/4 of a kuaisar-small training batch's build.
    member_keys = np.sort(owner * width + members)  # (M,)
    where = np.minimum(np.searchsorted(member_keys, keys), len(member_keys) - 1)  # (B, C)
    return member_keys[where] == keys


def _sample_ranges(
    values: np.ndarray,
    ranges: tuple[np.ndarray, np.ndarray],
    rows: np.ndarray,
    count: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """`count` uniform draws (with replacement) from values[lo:hi] per row; 0 where empty."""
    lo, hi = ranges[0][rows], ranges[1][rows]
    size = hi - lo
    draws = lo[:, None] + (rng.random((len(rows), count)) * size[:, None]).astype(np.int64)
    if len(values) == 0:
        return np.zeros((len(rows), count), dtype=np.int64)
    picked = values[np.clip(draws, 0, len(values) - 1)]
    return np.where(size[:, None] > 0, picked, 0).astype(np.int64)
