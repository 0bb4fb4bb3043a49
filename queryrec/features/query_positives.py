"""The query -> pseudo-positive items table: the diffusion job's output, looked up at serving.

The paper's diffusion model runs offline and supplies positives for queries without clicks
(PAPER.md). Training's L_cl reads them per search session; the served QueryRec also reads
them as the "results" of a search that has none: a history slot of a query without
clicked results gets its query's pseudo-positives in place of clicks (and says so, in
`query_click_source`). A new search arrives at the service as words only, so the table is
keyed by the query itself, the set of its word indices (order and repeats do not matter),
hashed into an int64 (`csr_query_keys`).

Written by `queryrec diffusion augment` beside the per-session pseudo-positives (from the
training split's click-less sessions: a query's entry is the pseudo-positives of its most
recent click-less training session), carried in the bundle as
`features/query_positives.parquet` (columns `key` int64, `items` list of item indices,
best first), read here. Torch-free: the service imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from queryrec.errors import BundleError
from queryrec.features.schema import PADDING_INDEX

NO_RESULTS, CLICKED, PSEUDO = 0, 1, 2
"""`query_click_source` of a slot: no results, clicked by the user, pseudo-positives."""


_MIX = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
)


def _mix(words: np.ndarray) -> np.ndarray:
    """int64 word indices -> uint64 splitmix64 finaliser of each (a well-spread hash)."""
    z = words.astype(np.uint64) + _MIX[0]
    z = (z ^ (z >> np.uint64(30))) * _MIX[1]
    z = (z ^ (z >> np.uint64(27))) * _MIX[2]
    return z ^ (z >> np.uint64(31))


def csr_query_keys(word_start: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Queries as CSR word lists (offsets (Q + 1,), word indices (W,)) -> (Q,) int64 keys:
    the wrapping sum of the hash of each distinct non-padding word (order and repeats do
    not matter); 0 for a query without words (never a key in a table). Vectorised: the
    training timelines key every search once."""
    word_start = np.asarray(word_start, dtype=np.int64)
    words = np.asarray(words, dtype=np.int64)
    queries = len(word_start) - 1
    row = np.repeat(np.arange(queries), np.diff(word_start))
    order = np.lexsort((words, row))
    w, r = words[order], row[order]
    first = np.ones(len(w), dtype=bool)
    first[1:] = (w[1:] != w[:-1]) | (r[1:] != r[:-1])
    keep = first & (w != PADDING_INDEX)
    sums = np.zeros(queries, dtype=np.uint64)
    np.add.at(sums, r[keep], _mix(w[keep]))
    keys = sums.view(np.int64)
    has_words = np.bincount(r[keep], minlength=queries) > 0
    return np.where(has_words & (keys == 0), 1, np.where(has_words, keys, 0))


def query_key(words: np.ndarray) -> int:
    """One query's word indices -> its key (`csr_query_keys`)."""
    words = np.asarray(words, dtype=np.int64).reshape(-1)
    return int(csr_query_keys(np.array([0, len(words)]), words)[0])


@dataclass(frozen=True)
class QueryPositives:
    """Sorted query keys and each one's pseudo-positive items (CSR, best first)."""

    keys: np.ndarray  # (Q,) int64, sorted, distinct
    offsets: np.ndarray  # (Q + 1,) int64
    items: np.ndarray  # (offsets[-1],) int64 item indices

    @classmethod
    def from_lists(cls, keys: list[int], items: list[list[int]]) -> QueryPositives:
        order = np.argsort(np.asarray(keys, dtype=np.int64), kind="stable")
        sorted_keys = np.asarray(keys, dtype=np.int64)[order]
        lists = [items[i] for i in order]
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
        flat = np.asarray([i for x in lists for i in x], dtype=np.int64)
        return cls(sorted_keys, offsets, flat)

    @classmethod
    def read(cls, path: Path, items: int | None = None) -> QueryPositives:
        """The parquet table; BundleError naming the file when it is unreadable, lacks a
        column, or holds an item index outside [0, items)."""
        path = Path(path)
        try:
            frame = pl.read_parquet(path)
        except Exception as error:  # polars raises many types
            raise BundleError(f"{path}: not a readable query positives table ({error})") from None
        for name in ("key", "items"):
            if name not in frame.columns:
                raise BundleError(f"{path}: column '{name}' is missing")
        table = cls.from_lists(frame["key"].to_list(), frame["items"].to_list())
        if len(np.unique(table.keys)) != len(table.keys):
            raise BundleError(f"{path}: column 'key' holds a key twice")
        if len(table.items) and (
            table.items.min() < 0 or (items is not None and table.items.max() >= items)
        ):
            raise BundleError(f"{path}: column 'items' holds an index outside [0, {items})")
        return table

    def write(self, path: Path) -> None:
        lists = [
            self.items[a:b].tolist()
            for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)
        ]
        pl.DataFrame(
            {"key": self.keys, "items": lists}, schema={"key": pl.Int64, "items": pl.List(pl.Int64)}
        ).write_parquet(path)

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: np.ndarray, k: int) -> np.ndarray:
        """keys (...) -> (..., k) the first k items of each key's entry, 0 where none."""
        flat = np.asarray(keys, dtype=np.int64).reshape(-1)
        out = np.zeros((len(flat), k), dtype=np.int64)
        if not len(self.keys):
            return out.reshape(*np.shape(keys), k)
        at = np.minimum(np.searchsorted(self.keys, flat), len(self.keys) - 1)
        found = (self.keys[at] == flat) & (flat != 0)
        start = self.offsets[at]
        size = np.where(found, self.offsets[at + 1] - start, 0)
        ok = np.arange(k)[None, :] < size[:, None]
        positions = np.where(ok, start[:, None] + np.arange(k)[None, :], 0)
        if len(self.items):
            out = np.where(ok, self.items[np.minimum(positions, len(self.items) - 1)], 0)
        return out.reshape(*np.shape(keys), k)


def fill_from_table(
    query_clicks: np.ndarray, keys: np.ndarray, table: QueryPositives
) -> tuple[np.ndarray, np.ndarray]:
    """(U, L, K) clicked results and (U, L) query keys of the query slots (0: no search or
    no words) -> (the clicked results with the slots that have none filled from the
    table by their query, the source of each slot (U, L): NO_RESULTS, CLICKED or PSEUDO)."""
    clicked = (query_clicks > 0).any(axis=-1)  # (U, L)
    filled = table.lookup(keys, query_clicks.shape[-1])  # (U, L, K)
    use = np.asarray(~clicked & (filled > 0).any(axis=-1))
    out = np.where(use[..., None], filled, query_clicks)
    source = np.where(clicked, CLICKED, np.where(use, PSEUDO, NO_RESULTS)).astype(np.int64)
    return out, source


def table_from_sessions(
    word_offsets: np.ndarray,
    words: np.ndarray,
    session_ts: np.ndarray,
    sessions: np.ndarray,
    items: np.ndarray,
) -> QueryPositives:
    """Sessions (S,) (rows of timelines/search.parquet, CSR words `word_offsets` /
    `words`, times `session_ts`) with their pseudo-positives (S, K) -> the table by query:
    each query's entry is the pseudo-positives of its most recent session here; sessions
    without words, or without any item, are left out."""
    keys = csr_query_keys(word_offsets, words)
    latest: dict[int, tuple[int, list[int]]] = {}
    for row, chosen in zip(sessions.tolist(), items, strict=True):
        key = int(keys[row])
        kept = [int(i) for i in chosen if i > 0]
        if key == 0 or not kept:
            continue
        ts = int(session_ts[row])
        if key not in latest or ts >= latest[key][0]:
            latest[key] = (ts, kept)
    return QueryPositives.from_lists(list(latest), [entry[1] for entry in latest.values()])
