"""The one feature path: users' events + request times -> the model inputs (numpy, torch-free).

Training (`queryrec.training.batches.BatchBuilder`), offline scoring of a bundle
(`queryrec.evaluation.bundle_scoring`) and the scoring service (`service.features`) all
build the inputs of a request here; nothing else computes a window, a padding, an hour or
an age bucket. For an impression (or a Score request) of a user at time t:

| input | shape | rule |
|---|---|---|
| `click_history` | (B, H) | the newest H feed clicks with timestamp < t, oldest first, left-padded with 0 |
| `query_tokens` | (B, L, T) | the newest L searches with timestamp < t, oldest first, left-padded; the first T words of each, right-padded with 0 |
| `query_age` | (B, L) | age bucket of each of those searches at t (`time_features.query_age_buckets`), 0 = padding |
| `hour` | (B,) | Beijing hour of t (`time_features.hour_of_day`) |
| `profile` | (B, P) | the user's profile codes |

"Strictly before t" keeps an impression's own page (and the clicks logged at the same
millisecond) out of its features, offline and online alike. A search without any word
is a history slot like any other (it takes one of the L places and has an age), with
all-padding tokens; the encoder treats a slot without words as padding (it attends to
words, `queryrec.models.ctr_model`), so such a search displaces an older one but adds no
words. The service stores it too (`RecordQuery` accepts an empty token list), so both
sides see the same slots.

Events come as `EventTimelines`: flat arrays, one CSR slice per user row, each slice in
time order (ties keep their given order). A prepared dataset is one such object over all
users (`PreparedDataset.timelines`); the service builds a one-user object per request from
what Redis holds (`EventTimelines.from_newest_first`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from queryrec.features.schema import PADDING_INDEX
from queryrec.features.time_features import hour_of_day, query_age_buckets

_KEY_LIMIT = 1 << 62  # composite (row, time) keys must fit in int64


@dataclass(frozen=True)
class HistoryLengths:
    """How much history a model reads (the model config's and the bundle's max lengths)."""

    clicks: int  # H
    queries: int  # L
    tokens: int  # T: words kept per query

    def __post_init__(self) -> None:
        if min(self.clicks, self.queries, self.tokens) < 1:
            raise ValueError(f"history lengths must be positive, not {self}")


@dataclass(frozen=True, eq=False)
class EventTimelines:
    """Events of U user rows as flat arrays; row u's events are `[start[u], start[u+1])`,
    in time order. All ids are model indices (0 = padding, 1 = unknown)."""

    click_start: np.ndarray  # (U + 1,) int64 CSR offsets into click_*
    click_item: np.ndarray  # (C,) item indices
    click_ts: np.ndarray  # (C,) int64 Unix ms
    query_start: np.ndarray  # (U + 1,) int64 CSR offsets into query_*
    query_ts: np.ndarray  # (Q,) int64 Unix ms
    word_start: np.ndarray  # (Q + 1,) int64 CSR offsets into words; a query may have none
    words: np.ndarray  # (W,) word indices
    profile: np.ndarray  # (U, P) int64 profile codes per user row

    @classmethod
    def from_newest_first(
        cls,
        click_ts: np.ndarray,
        click_item: np.ndarray,
        query_ts: np.ndarray,
        query_sizes: np.ndarray,
        words: np.ndarray,
        profile: np.ndarray,
    ) -> EventTimelines:
        """One user's events as the service's Redis lists hold them, newest first: clicks
        (n,) and (n,), queries (m,) with their word counts (m,) and their words one query
        after the other (sum of sizes,) -> a one-row timeline in time order (equal times:
        the one stored first comes first, as in the offline timeline)."""
        clicks = _oldest_first(np.asarray(click_ts, dtype=np.int64))
        queries = _oldest_first(np.asarray(query_ts, dtype=np.int64))
        sizes = np.asarray(query_sizes, dtype=np.int64)
        old_start = np.concatenate([[0], np.cumsum(sizes)])[:-1]
        new_sizes = sizes[queries]
        new_start = np.concatenate([[0], np.cumsum(new_sizes)])
        word_order = np.repeat(old_start[queries] - new_start[:-1], new_sizes) + np.arange(
            new_start[-1]
        )
        return cls(
            click_start=np.array([0, len(clicks)], dtype=np.int64),
            click_item=np.asarray(click_item, dtype=np.int64)[clicks],
            click_ts=np.asarray(click_ts, dtype=np.int64)[clicks],
            query_start=np.array([0, len(queries)], dtype=np.int64),
            query_ts=np.asarray(query_ts, dtype=np.int64)[queries],
            word_start=new_start.astype(np.int64),
            words=np.asarray(words, dtype=np.int64)[word_order],
            profile=np.asarray(profile, dtype=np.int64).reshape(1, -1),
        )

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
class ModelInputs:
    """The inputs of B requests (module docstring for the rules)."""

    click_history: np.ndarray  # (B, H) int64 item indices, left-padded with 0
    query_tokens: np.ndarray  # (B, L, T) int64 word indices, left-padded with 0
    query_age: np.ndarray  # (B, L) int64 age buckets, 0 = padding
    hour: np.ndarray  # (B,) int64
    profile: np.ndarray  # (B, P) int64
    query_index: np.ndarray  # (B, L) int64 row of each slot in the flat query arrays, -1 = padding
    query_count: np.ndarray  # (B,) int64 valid query slots (<= L)
    click_index: np.ndarray  # (B, H) int64 row of each slot in the flat click arrays, -1 = padding


def model_inputs(
    events: EventTimelines,
    rows: np.ndarray,
    request_ms: np.ndarray,
    lengths: HistoryLengths,
) -> ModelInputs:
    """The model inputs of requests by user row `rows` (B,) at times `request_ms` (B,)."""
    click_end, query_end = events.history_ends(rows, request_ms)
    return gather_inputs(events, rows, request_ms, click_end, query_end, lengths)


def gather_inputs(
    events: EventTimelines,
    rows: np.ndarray,
    request_ms: np.ndarray,
    click_end: np.ndarray,
    query_end: np.ndarray,
    lengths: HistoryLengths,
) -> ModelInputs:
    """`model_inputs` with the window ends already found by `EventTimelines.history_ends`
    (training finds them once per split, then gathers batch after batch)."""
    rows = np.asarray(rows, dtype=np.int64)
    request_ms = np.asarray(request_ms, dtype=np.int64)
    click, click_ok = _left_padded_window(click_end, events.click_start[rows], lengths.clicks)
    query, query_ok = _left_padded_window(query_end, events.query_start[rows], lengths.queries)
    starts = _gather(events.word_start[:-1], query)  # (B, L) first word of each slot
    sizes = _gather(events.word_start[1:], query) - starts
    word_ok = query_ok[..., None] & (np.arange(lengths.tokens) < sizes[..., None])  # (B, L, T)
    word_pos = np.where(word_ok, starts[..., None] + np.arange(lengths.tokens), 0)
    query_ts = np.where(query_ok, _gather(events.query_ts, query), 0)  # (B, L)
    return ModelInputs(
        click_history=np.where(click_ok, _gather(events.click_item, click), PADDING_INDEX).astype(
            np.int64
        ),
        query_tokens=np.where(word_ok, _gather(events.words, word_pos), PADDING_INDEX).astype(
            np.int64
        ),
        query_age=query_age_buckets(request_ms, query_ts, query_ok),
        hour=hour_of_day(request_ms),
        profile=events.profile[rows],
        query_index=np.where(query_ok, query, -1),
        query_count=query_ok.sum(axis=1).astype(np.int64),
        click_index=np.where(click_ok, click, -1),
    )


def trim_query_columns(
    query_tokens: np.ndarray, query_age: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the leading query slots that hold no word in any row of a batch: (B, L, T),
    (B, L) -> (B, L', T), (B, L'), L' >= 1. The encoder counts positions from the most
    recent query and never attends to a slot without words, so its output is unchanged,
    and most histories are short, so this saves most of its work."""
    used = (query_tokens > 0).any(axis=(0, 2))  # (L,)
    first = int(np.argmax(used)) if used.any() else query_tokens.shape[1] - 1
    return query_tokens[:, first:], query_age[:, first:]


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
