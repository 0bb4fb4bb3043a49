"""The one feature path: users' events + request times -> `ModelInputs` (numpy, torch-free).

Training (`queryrec.training.batches.BatchBuilder`), offline scoring of a bundle
(`queryrec.evaluation.bundle_scoring`) and the scoring service (`service.inference.features`)
all build the inputs of a request here; nothing else computes a window, a padding, an hour,
an age bucket or a search's clicked results. For a request of a user at time t:

| input | shape | rule |
|---|---|---|
| `user` | (U,) | the user's index |
| `hour` | (U,) | Beijing hour of t (`time_features.hour_of_day`) |
| `profile` | (U, P) | the user's profile codes |
| `click_history` | (U, H) | the newest H feed clicks with timestamp < t, oldest first, left-padded with 0 |
| `query_tokens` | (U, L, T) | the newest L searches with timestamp < t, oldest first, left-padded; the first T words of each, right-padded with 0 |
| `query_age` | (U, L) | age bucket of each of those searches at t (`time_features.query_age_buckets`); 0 = padding, so `query_age > 0` marks a slot that holds a search |
| `query_clicks` | (U, L, K) | the first K results clicked after each of those searches (in the order recorded: display order offline), 0 = none; with a query positives table, a search without clicked results gets its query's pseudo-positives (`features.query_positives`); optional |
| `query_click_source` | (U, L) | where a slot's results come from: 0 none, 1 clicked, 2 pseudo-positives; optional |
| `query_minutes`, `click_minutes` | (U, L), (U, H) | minutes from each history search / click to t, 0 on padding; optional |
| `item` | (N,) | candidate item indices |
| `pair_user` | (N,) or None | the user row of each candidate; None: candidate i goes with row i (N = U, a training batch) |

"Strictly before t" keeps an impression's own page (and the clicks logged at the same
millisecond) out of its features, offline and online alike. A search without any word is a
history slot like any other (it takes one of the L places and has an age, and may have
clicked results), with all-padding tokens. The service stores it too (`RecordQuery`
accepts an empty token list), so both sides see the same slots. The clicked results of a
search are part of its slot: offline from the search log, online recorded by
`RecordSearchClicks` into the query's Redis entry.

Which optional inputs are built is the model's choice (`ModelInputs` field names in
`reads`, written into a bundle's manifest as its graphs' inputs); training-only fields
(`candidate_rate_codes`, `search_task`) come from the training batch builder, never from
here.

Events come as `EventTimelines`: flat arrays, one CSR slice per user row, each slice in
time order (ties keep their given order). A prepared dataset is one such object over all
users (`PreparedDataset.timelines`); the service builds a one-user object per request from
what Redis holds (`EventTimelines.from_newest_first`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, TypeVar

import numpy as np

from queryrec.features.query_positives import (
    CLICKED,
    QueryPositives,
    csr_query_keys,
    fill_from_table,
)
from queryrec.features.schema import PADDING_INDEX
from queryrec.features.time_features import hour_of_day, query_age_buckets

_KEY_LIMIT = 1 << 62  # composite (row, time) keys must fit in int64
MINUTE_MS = 60_000

A = TypeVar("A")  # an array type: numpy.ndarray on the feature path, torch.Tensor in models
B = TypeVar("B")

OPTIONAL_INPUTS = ("query_clicks", "query_click_source", "query_minutes", "click_minutes")
"""The optional user-level inputs the feature path builds when a model reads them."""
USER_INPUTS = ("user", "hour", "profile", "click_history", "query_tokens", "query_age")
"""The user-level inputs every model gets (one row per user row U)."""
QUERY_SLOT_INPUTS = (
    "query_tokens",
    "query_age",
    "query_clicks",
    "query_click_source",
    "query_minutes",
)
"""The inputs with one entry per query slot (axis 1), trimmed together."""


@dataclass(frozen=True)
class HistoryLengths:
    """How much history a model reads (the model config's and the bundle's max lengths)."""

    clicks: int  # H
    queries: int  # L
    tokens: int  # T: words kept per query
    clicks_per_query: int = 4  # K: clicked results kept per search

    def __post_init__(self) -> None:
        if min(self.clicks, self.queries, self.tokens, self.clicks_per_query) < 1:
            raise ValueError(f"history lengths must be positive, not {self}")


@dataclass(frozen=True)
class SearchTask(Generic[A]):
    """A second task's training samples (PLE's search task): search impressions, each a
    (user, shown item) with the feed clicks before the search and the search's own query
    as its one query slot, labelled clicked or not. Training batches only."""

    inputs: ModelInputs[A]  # S rows; query_tokens (S, 1, T) the search's own words
    label: A  # (S,) float32, 1 = the shown item was clicked in that search


@dataclass(frozen=True)
class ModelInputs(Generic[A]):
    """The inputs of U user rows and N candidates (module docstring for the rules).

    The same type on the feature path (numpy arrays), in the models (torch tensors, after
    `map`), in export (the graphs' inputs are these fields by name) and in the tests.
    """

    user: A  # (U,) int64 user indices
    hour: A  # (U,) int64 Beijing hour of the request
    profile: A  # (U, P) int64 profile codes
    click_history: A  # (U, H) int64 item indices, left-padded with 0
    query_tokens: A  # (U, L, T) int64 word indices, left-padded slots, 0 = padding
    query_age: A  # (U, L) int64 age buckets, 0 = no search in the slot
    item: A  # (N,) int64 candidate item indices
    pair_user: A | None = None  # (N,) int64 user row of each candidate; None: N = U, row i
    query_clicks: A | None = None  # (U, L, K) int64 clicked results per slot, 0 = none
    # (U, L) int64 where each slot's results come from: 0 none, 1 clicked by the user,
    # 2 the query's pseudo-positives (`features.query_positives`)
    query_click_source: A | None = None
    query_minutes: A | None = None  # (U, L) int64 minutes from each search to t, 0 = padding
    click_minutes: A | None = None  # (U, H) int64 minutes from each click to t, 0 = padding
    # Training rows only: the candidate's out-of-fold item and author rate codes (the
    # "-stats" models; `features.item_statistics`), which replace the table's codes.
    candidate_rate_codes: A | None = None  # (N, 2) int64
    search_task: SearchTask[A] | None = None  # training only (PLE)

    @property
    def batch_size(self) -> int:
        """N: the number of candidates (one output each)."""
        return len(self.item)  # type: ignore[arg-type]

    def map(self, convert: Callable[[A], B]) -> ModelInputs[B]:
        """Every array (nested ones too) through `convert`, e.g. numpy -> torch on a device."""
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, SearchTask):
                value = SearchTask(value.inputs.map(convert), convert(value.label))
            elif value is not None:
                value = convert(value)
            values[spec.name] = value
        return ModelInputs(**values)

    def replace(self, **changes: Any) -> ModelInputs[A]:
        return dataclasses.replace(self, **changes)

    def user_fields(self) -> dict[str, A]:
        """The user-level inputs present, by name (one row per user row)."""
        names = (*USER_INPUTS, *OPTIONAL_INPUTS)
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def per_pair(self) -> ModelInputs[A]:
        """The same inputs with every user-level field gathered to one row per candidate
        (pair_user None): what a model that scores row i with candidate i reads."""
        if self.pair_user is None:
            return self
        index = self.pair_user
        gathered = {name: value[index] for name, value in self.user_fields().items()}  # type: ignore[index]
        return dataclasses.replace(self, pair_user=None, **gathered)


@dataclass(frozen=True, eq=False)
class EventTimelines:
    """Events of R user rows as flat arrays; row r's events are `[start[r], start[r+1])`,
    in time order. All ids are model indices (0 = padding, 1 = unknown)."""

    click_start: np.ndarray  # (R + 1,) int64 CSR offsets into click_*
    click_item: np.ndarray  # (C,) item indices
    click_ts: np.ndarray  # (C,) int64 Unix ms
    query_start: np.ndarray  # (R + 1,) int64 CSR offsets into query_*
    query_ts: np.ndarray  # (Q,) int64 Unix ms
    word_start: np.ndarray  # (Q + 1,) int64 CSR offsets into words; a query may have none
    words: np.ndarray  # (W,) word indices
    profile: np.ndarray  # (R, P) int64 profile codes per user row
    # The results clicked after each search, in recorded order; None: no search clicks known.
    query_click_start: np.ndarray | None = None  # (Q + 1,) int64 CSR offsets into query_click_items
    query_click_items: np.ndarray | None = None  # (C_q,) item indices

    @classmethod
    def from_newest_first(
        cls,
        click_ts: np.ndarray,
        click_item: np.ndarray,
        query_ts: np.ndarray,
        query_sizes: np.ndarray,
        words: np.ndarray,
        profile: np.ndarray,
        query_click_sizes: np.ndarray | None = None,
        query_click_items: np.ndarray | None = None,
    ) -> EventTimelines:
        """One user's events as the service's Redis lists hold them, newest first: clicks
        (n,) and (n,), queries (m,) with their word counts (m,) and their words one query
        after the other (sum of sizes,), optionally each query's clicked-result counts (m,)
        and items one query after the other -> a one-row timeline in time order (equal
        times: the one stored first comes first, as in the offline timeline)."""
        clicks = _oldest_first(np.asarray(click_ts, dtype=np.int64))
        queries = _oldest_first(np.asarray(query_ts, dtype=np.int64))
        word_start, word_values = _reorder_csr(query_sizes, words, queries)
        click_start, click_values = None, None
        if query_click_sizes is not None and query_click_items is not None:
            click_start, click_values = _reorder_csr(query_click_sizes, query_click_items, queries)
        return cls(
            click_start=np.array([0, len(clicks)], dtype=np.int64),
            click_item=np.asarray(click_item, dtype=np.int64)[clicks],
            click_ts=np.asarray(click_ts, dtype=np.int64)[clicks],
            query_start=np.array([0, len(queries)], dtype=np.int64),
            query_ts=np.asarray(query_ts, dtype=np.int64)[queries],
            word_start=word_start,
            words=word_values,
            profile=np.asarray(profile, dtype=np.int64).reshape(1, -1),
            query_click_start=click_start,
            query_click_items=click_values,
        )

    @cached_property
    def query_word_keys(self) -> np.ndarray:
        """(Q,) int64 each search's query key (`query_positives.csr_query_keys`: its set
        of words; 0 without words), what the query positives table is looked up by."""
        return csr_query_keys(self.word_start, self.words)

    @cached_property
    def _click_keys(self) -> _TimeKeys:
        return _TimeKeys(self.click_start, self.click_ts)

    @cached_property
    def _query_keys(self) -> _TimeKeys:
        return _TimeKeys(self.query_start, self.query_ts)

    def history_ends(
        self, rows: np.ndarray, request_ms: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The window rule: per request, the exclusive end of its user's events with
        timestamp < t, as (click end (B,), query end (B,)) indices into the flat arrays."""
        rows = np.asarray(rows, dtype=np.int64)
        request_ms = np.asarray(request_ms, dtype=np.int64)
        return (
            self._click_keys.end_before(rows, request_ms),
            self._query_keys.end_before(rows, request_ms),
        )


class _TimeKeys:
    """Sorted composite keys row * span + (ts - origin), for one vectorised searchsorted
    over every row's slice at once (each slice is sorted by time, rows follow each other).
    A one-row timeline (a service request) searches its times directly."""

    def __init__(self, start: np.ndarray, ts: np.ndarray):
        self.one_row = len(start) == 2
        self.keys, self.origin, self.span = ts, 0, 1
        if self.one_row or not len(ts):
            return
        self.origin = int(ts.min())
        self.span = int(ts.max()) - self.origin + 2
        if (len(start) - 1) * self.span >= _KEY_LIMIT:
            raise ValueError("event times span too long for composite int64 keys")
        row = np.repeat(np.arange(len(start) - 1, dtype=np.int64), np.diff(start))
        self.keys = row * self.span + (ts - self.origin)

    def end_before(self, rows: np.ndarray, request_ms: np.ndarray) -> np.ndarray:
        """(B,) exclusive ends of the events of `rows` with ts < request_ms."""
        if self.one_row or not len(self.keys):
            return np.searchsorted(self.keys, request_ms, side="left")
        # A request before every event maps to offset 0 (nothing before it), one after
        # every event to span - 1 (everything before it).
        offset = np.minimum(np.maximum(request_ms - self.origin, 0), self.span - 1)
        return np.searchsorted(self.keys, rows * self.span + offset, side="left")


@dataclass(frozen=True)
class HistoryWindows:
    """Which events fill the history slots of B requests (indices into the flat arrays of
    an `EventTimelines`); what training needs beyond the model inputs (the last search's
    session for L_cl, the slots' rows for its own lookups)."""

    rows: np.ndarray  # (B,) user rows
    request_ms: np.ndarray  # (B,) int64
    click_index: np.ndarray  # (B, H) row of each click slot in the flat click arrays, -1 = padding
    query_index: np.ndarray  # (B, L) row of each query slot in the flat query arrays, -1 = padding

    @property
    def query_count(self) -> np.ndarray:
        """(B,) valid query slots (<= L)."""
        return (self.query_index >= 0).sum(axis=1).astype(np.int64)


def history_windows(
    events: EventTimelines,
    rows: np.ndarray,
    request_ms: np.ndarray,
    lengths: HistoryLengths,
    ends: tuple[np.ndarray, np.ndarray] | None = None,
) -> HistoryWindows:
    """The slots of requests by user row `rows` (B,) at times `request_ms` (B,); `ends`:
    the window ends if already found by `EventTimelines.history_ends` (training finds
    them once per split, then gathers batch after batch)."""
    rows = np.asarray(rows, dtype=np.int64)
    request_ms = np.asarray(request_ms, dtype=np.int64)
    click_end, query_end = ends if ends is not None else events.history_ends(rows, request_ms)
    click, click_ok = _left_padded_window(click_end, events.click_start[rows], lengths.clicks)
    query, query_ok = _left_padded_window(query_end, events.query_start[rows], lengths.queries)
    return HistoryWindows(
        rows=rows,
        request_ms=request_ms,
        click_index=np.where(click_ok, click, -1),
        query_index=np.where(query_ok, query, -1),
    )


def inputs_from_windows(
    events: EventTimelines,
    windows: HistoryWindows,
    lengths: HistoryLengths,
    items: np.ndarray,
    *,
    pair_user: np.ndarray | None = None,
    reads: frozenset[str] | tuple[str, ...] = (),
    user_index: np.ndarray | None = None,
    query_positives: QueryPositives | None = None,
) -> ModelInputs[np.ndarray]:
    """The model inputs of the requests whose slots are `windows`, with candidates `items`
    (N,) (and `pair_user` (N,), None: one candidate per request); `reads`: the optional
    inputs to build (`OPTIONAL_INPUTS`); `user_index` (B,): the user indices when they
    are not the timeline rows (the service's one-row timelines); `query_positives`: the
    table that gives a search without clicked results its query's pseudo-positives."""
    unknown = sorted(set(reads) - set(OPTIONAL_INPUTS))
    if unknown:
        raise ValueError(f"unknown optional inputs {unknown}; choose from {OPTIONAL_INPUTS}")
    rows, request_ms = windows.rows, windows.request_ms
    click, query = windows.click_index, windows.query_index
    click_ok, query_ok = click >= 0, query >= 0
    click, query = np.maximum(click, 0), np.maximum(query, 0)
    query_ts = np.where(query_ok, _gather(events.query_ts, query), 0)  # (B, L)
    optional: dict[str, Any] = {}  # ndarrays (typed Any for the ModelInputs(**...) below)
    if "query_clicks" in reads:
        optional["query_clicks"] = _csr_rows(
            events.query_click_start,
            events.query_click_items,
            windows.query_index,
            lengths.clicks_per_query,
        )
    if "query_click_source" in reads:
        clicks = optional.get("query_clicks")
        if clicks is None:
            raise ValueError("query_click_source is built with query_clicks: read both")
        if query_positives is None:
            optional["query_click_source"] = np.where((clicks > 0).any(axis=-1), CLICKED, 0)
        else:
            keys = np.where(query_ok, _gather(events.query_word_keys, query), 0)  # (B, L)
            optional["query_clicks"], optional["query_click_source"] = fill_from_table(
                clicks, keys, query_positives
            )
    if "query_minutes" in reads:
        optional["query_minutes"] = minutes_before(query_ts, query_ok, request_ms)
    if "click_minutes" in reads:
        click_ts = np.where(click_ok, _gather(events.click_ts, click), 0)
        optional["click_minutes"] = minutes_before(click_ts, click_ok, request_ms)
    return ModelInputs(
        user=np.asarray(user_index if user_index is not None else rows, dtype=np.int64),
        hour=hour_of_day(request_ms),
        profile=events.profile[rows],
        click_history=np.where(click_ok, _gather(events.click_item, click), PADDING_INDEX).astype(
            np.int64
        ),
        query_tokens=_csr_rows(
            events.word_start, events.words, windows.query_index, lengths.tokens
        ),
        query_age=query_age_buckets(request_ms, query_ts, query_ok),
        item=np.asarray(items, dtype=np.int64),
        pair_user=None if pair_user is None else np.asarray(pair_user, dtype=np.int64),
        **optional,
    )


def model_inputs(
    events: EventTimelines,
    rows: np.ndarray,
    request_ms: np.ndarray,
    lengths: HistoryLengths,
    items: np.ndarray | None = None,
    *,
    pair_user: np.ndarray | None = None,
    reads: frozenset[str] | tuple[str, ...] = (),
    user_index: np.ndarray | None = None,
    query_positives: QueryPositives | None = None,
) -> ModelInputs[np.ndarray]:
    """The model inputs of requests by user row `rows` (B,) at times `request_ms` (B,) with
    candidates `items` (default: none, for user-level work such as the encoder)."""
    windows = history_windows(events, rows, request_ms, lengths)
    candidates = np.zeros(0, dtype=np.int64) if items is None else items
    return inputs_from_windows(
        events,
        windows,
        lengths,
        candidates,
        pair_user=pair_user,
        reads=reads,
        user_index=user_index,
        query_positives=query_positives,
    )


def trim_query_columns(inputs: ModelInputs[np.ndarray]) -> ModelInputs[np.ndarray]:
    """Cut the leading query slots that hold no search in any row of a batch (every
    per-slot input together): (U, L, ...) -> (U, L', ...), L' >= 1. The models count slot
    positions from the most recent search and never attend to an empty slot, so their
    output is unchanged, and most histories are short, so this saves most of the
    encoder's work."""
    used = (inputs.query_age > 0).any(axis=0)  # (L,)
    first = int(np.argmax(used)) if used.any() else inputs.query_age.shape[1] - 1
    if first == 0:
        return inputs
    cut = {
        name: getattr(inputs, name)[:, first:]
        for name in QUERY_SLOT_INPUTS
        if getattr(inputs, name) is not None
    }
    return inputs.replace(**cut)


def minutes_before(ts: np.ndarray, valid: np.ndarray, request_ms: np.ndarray) -> np.ndarray:
    """(B, W) event times with validity, (B,) request times -> (B, W) int64 whole minutes
    from each event to its request, 0 on padding."""
    minutes = (np.asarray(request_ms, dtype=np.int64)[:, None] - ts) // MINUTE_MS
    return np.where(valid, np.maximum(minutes, 0), 0).astype(np.int64)


def first_k_per_row(
    offsets: np.ndarray, values: np.ndarray, rows: np.ndarray, k: int
) -> np.ndarray:
    """values[offsets[r]:offsets[r+1]][:k] for every r of `rows` (any shape), zero-padded:
    rows (...) -> (..., k) int64; r = -1 gives zeros."""
    if len(values) == 0:  # every list empty (also: no lists at all, offsets == [0])
        return np.zeros((*rows.shape, k), dtype=np.int64)
    flat = rows.reshape(-1)
    valid = flat >= 0
    safe = np.where(valid, flat, 0)
    start = offsets[safe]
    size = np.where(valid, offsets[safe + 1] - start, 0)
    ok = np.arange(k)[None, :] < size[:, None]  # (R, k)
    positions = np.where(ok, start[:, None] + np.arange(k)[None, :], 0)
    out = np.where(ok, values[positions], 0).astype(np.int64)
    return out.reshape(*rows.shape, k)


def _csr_rows(
    offsets: np.ndarray | None, values: np.ndarray | None, rows: np.ndarray, k: int
) -> np.ndarray:
    """`first_k_per_row`, or zeros when the timeline has no such lists."""
    if offsets is None or values is None:
        return np.zeros((*rows.shape, k), dtype=np.int64)
    return first_k_per_row(offsets, values, rows, k)


def _reorder_csr(
    sizes: np.ndarray, values: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Lists given by their sizes (m,) and values one after the other -> (offsets (m+1,),
    values) of the same lists in `order`."""
    sizes = np.asarray(sizes, dtype=np.int64)
    old_start = np.concatenate([[0], np.cumsum(sizes)])[:-1]
    new_sizes = sizes[order]
    new_start = np.concatenate([[0], np.cumsum(new_sizes)]).astype(np.int64)
    position = np.repeat(old_start[order] - new_start[:-1], new_sizes) + np.arange(new_start[-1])
    return new_start, np.asarray(values, dtype=np.int64)[position]


def _oldest_first(newest_first_ts: np.ndarray) -> np.ndarray:
    """Indices that put a newest-first list in time order, equal times oldest-stored first."""
    n = len(newest_first_ts)
    return (n - 1) - np.argsort(newest_first_ts[::-1], kind="stable")


def _left_padded_window(
    ends: np.ndarray, starts: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Index windows [max(start, end - length), end) as (B, length), left-padded, + valid."""
    positions = ends[:, None] - length + np.arange(length)[None, :]  # (B, length)
    valid = positions >= starts[:, None]
    return np.where(valid, positions, 0), valid


def _gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[index], or zeros when `values` is empty (every index is masked then)."""
    if len(values) == 0:
        return np.zeros(index.shape, dtype=values.dtype)
    return values[index]
