"""Batch inputs that only some baselines read (`CTRModel.batch_extras`), numpy only.

They come from the same windows as the standard inputs (`queryrec.features.model_inputs`:
events strictly before the impression's time t), so they leak nothing either:

| key | shape | what | read by |
|---|---|---|---|
| `query_clicks` | (B, L', K) | items clicked in each history query's session (first K in display order), 0 = none; the query slots are those of `query_history` | sesrec, unisar |
| `query_minutes` | (B, L') | minutes from each history query to t, 0 on padding | unisar |
| `click_minutes` | (B, H) | minutes from each history click to t, 0 on padding | unisar |
| `search_user`, `search_item`, `search_hour` | (S,) | S search impressions drawn uniformly from the training split's search sessions (every shown item of every session is one impression) | ple |
| `search_click_history` | (S, H) | the feed clicks before that search | ple |
| `search_query` | (S, T) | the search's own query words | ple |
| `search_label` | (S,) float32 | whether the shown item was clicked in that search | ple |
| `train_rate_buckets` | (B, 2) | the training row's out-of-fold item and author rate codes (`features.item_statistics.rate_bucket_fields`) | din-stats, queryrec-stats |

The `search_*` keys (PLE's second task) and `train_rate_buckets` exist only for training
batches (the builder is given a random generator, and the rows are training samples),
never for evaluation, which reads the rates from the item table as serving does.
"""

from __future__ import annotations

import numpy as np

from queryrec.features.dataset import PreparedDataset
from queryrec.features.item_statistics import rate_bucket_fields
from queryrec.features.model_inputs import HistoryLengths, ModelInputs, model_inputs

INPUT_EXTRAS = ("query_clicks", "query_minutes", "click_minutes")
TASK_EXTRAS = ("search_task", "train_rate_buckets")  # the search_* keys above, as one name
EXTRAS = INPUT_EXTRAS + TASK_EXTRAS
MINUTE_MS = 60_000


class ExtraInputs:
    """Builds the extras a model asked for, batch after batch."""

    def __init__(
        self,
        dataset: PreparedDataset,
        names: tuple[str, ...],
        lengths: HistoryLengths,
        query_clicks: int = 4,
    ):
        unknown = sorted(set(names) - set(EXTRAS))
        if unknown:
            raise ValueError(f"unknown batch extras {unknown}; choose from {EXTRAS}")
        self.ds = dataset
        self.names = names
        self.lengths = lengths
        self.query_clicks = query_clicks
        self.search = SearchImpressions(dataset) if "search_task" in names else None
        self.train_rates = (
            rate_bucket_fields(dataset).train_rows if "train_rate_buckets" in names else None
        )

    def build(
        self,
        inputs: ModelInputs,
        request_ms: np.ndarray,
        query_width: int,
        rng: np.random.Generator | None,
        rows: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """The extras of one batch; `query_width` = L' of its trimmed `query_history`,
        `rows` its sample rows in the split (training rows when `rng` is given)."""
        out: dict[str, np.ndarray] = {}
        query_index = inputs.query_index[:, inputs.query_index.shape[1] - query_width :]
        if "query_clicks" in self.names:
            out["query_clicks"] = first_k_per_row(
                self.ds.clicked_offsets, self.ds.clicked_items, query_index, self.query_clicks
            )
        if "query_minutes" in self.names:
            out["query_minutes"] = _minutes_before(self.ds.search_ts, query_index, request_ms)
        if "click_minutes" in self.names:
            out["click_minutes"] = _minutes_before(self.ds.click_ts, inputs.click_index, request_ms)
        if self.train_rates is not None and rng is not None:
            out["train_rate_buckets"] = self.train_rates[rows]
        if self.search is not None and rng is not None:
            out.update(self.search.draw(len(request_ms), self.lengths, rng))
        return out


class SearchImpressions:
    """Every (session, shown item, clicked?) of the training split's search sessions."""

    def __init__(self, dataset: PreparedDataset):
        self.ds = dataset
        train_end = int(dataset.schema["split"]["valid_start_ms"])
        sessions = np.flatnonzero(dataset.search_ts < train_end)
        sizes = np.diff(dataset.shown_offsets)[sessions]
        self.session = np.repeat(sessions, sizes).astype(np.int64)  # (I,)
        starts = np.repeat(dataset.shown_offsets[sessions], sizes)
        within = np.arange(len(self.session)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        self.item = dataset.shown_items[starts + within].astype(np.int64)  # (I,)
        clicked_session = np.repeat(
            np.arange(len(dataset.clicked_offsets) - 1), np.diff(dataset.clicked_offsets)
        )
        width = int(max(self.item.max(initial=0), dataset.clicked_items.max(initial=0))) + 1
        clicked_keys = clicked_session.astype(np.int64) * width + dataset.clicked_items
        self.label = np.isin(self.session * width + self.item, clicked_keys).astype(np.float32)

    def __len__(self) -> int:
        return len(self.session)

    def draw(
        self, count: int, lengths: HistoryLengths, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """`count` impressions, uniform with replacement, with their inputs (module table)."""
        if not len(self):
            raise ValueError("the training split has no search impression (no shown items)")
        pick = rng.integers(0, len(self), size=count)
        session = self.session[pick]
        user = self.ds.search_user[session].astype(np.int64)
        ts = self.ds.search_ts[session].astype(np.int64)
        inputs = model_inputs(self.ds.timelines(), user, ts, lengths)
        return {
            "search_user": user,
            "search_item": self.item[pick],
            "search_hour": inputs.hour,
            "search_click_history": inputs.click_history,
            "search_query": first_k_per_row(
                self.ds.query_offsets, self.ds.query_words, session, lengths.tokens
            ),
            "search_label": self.label[pick],
        }


def first_k_per_row(
    offsets: np.ndarray, values: np.ndarray, rows: np.ndarray, k: int
) -> np.ndarray:
    """values[offsets[r]:offsets[r+1]][:k] for every r of `rows` (any shape), zero-padded:
    rows (...) -> (..., k) int64; r = -1 gives zeros."""
    flat = rows.reshape(-1)
    valid = flat >= 0
    safe = np.where(valid, flat, 0)
    start = offsets[safe]
    size = np.where(valid, offsets[safe + 1] - start, 0)
    ok = np.arange(k)[None, :] < size[:, None]  # (R, k)
    if len(values) == 0:
        return np.zeros((*rows.shape, k), dtype=np.int64)
    positions = np.where(ok, start[:, None] + np.arange(k)[None, :], 0)
    out = np.where(ok, values[positions], 0).astype(np.int64)
    return out.reshape(*rows.shape, k)


def _minutes_before(ts: np.ndarray, index: np.ndarray, request_ms: np.ndarray) -> np.ndarray:
    """(B, W) minutes from events ts[index] (index -1 = padding) to request_ms (B,)."""
    valid = index >= 0
    if len(ts) == 0:
        return np.zeros(index.shape, dtype=np.int64)
    when = ts[np.where(valid, index, 0)]
    minutes = (request_ms[:, None] - when) // MINUTE_MS
    return np.where(valid, np.maximum(minutes, 0), 0).astype(np.int64)
