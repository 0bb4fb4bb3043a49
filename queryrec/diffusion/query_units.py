"""x0 per query (PAPER.md, "Diffusion-augmented positives"): the search log with one row per query.

The paper builds x0 per *query*: every training session of q, by any user, adds to one
vector. `QueryUnits` is a view of a prepared dataset in which each "search session row"
is a unit = (normalised query, split period) (`queryrec.features.query_identity`;
training, validation and test sessions of the same query are different units, so no
unit mixes periods), carrying the aggregate of its sessions:

| array | per unit |
|---|---|
| `clicked_items` | the items clicked in any of its sessions (each once, ascending) |
| `shown_items`, `shown_positions` | every item shown in any of its sessions, once, with its best (smallest) display position over them; ordered by that position, then item |
| `query_words` | the query's word set |
| `search_ts` | the earliest session time (all lie in one period) |

so that `build_x0` gives exactly the per-query encoding: clicked +1, shown and not clicked
-1 + w / log2(2 + best position) (an item shown at the top for one user and low for
another was at least once where it is seen most), never shown 0. The diffusion job
(train, quality, augment) runs unchanged on the view: a click-less unit is a query whose
I+_q is empty across all users of its period, and its pseudo-positives are written for
every one of its sessions (`sessions_of`).

Every other attribute (feed timelines, samples, ...) is the base dataset's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from queryrec.features.dataset import PreparedDataset
from queryrec.features.query_identity import normalised_query_ids

UNITS = ("session", "query")


def period_codes(ts: np.ndarray, valid_start: int, test_start: int) -> np.ndarray:
    """(n,) 0 train, 1 valid, 2 test by the split rule (ts < valid_start is train)."""
    return (np.asarray(ts) >= valid_start).astype(np.int64) + (np.asarray(ts) >= test_start)


def aggregate_queries(
    query: np.ndarray,
    period: np.ndarray,
    ts: np.ndarray,
    shown_offsets: np.ndarray,
    shown_items: np.ndarray,
    clicked_offsets: np.ndarray,
    clicked_items: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per-session arrays -> per-unit arrays (module table); units ordered by (query,
    period). Also `unit_of` (n_sessions,) and the CSR `session_offsets` / `sessions`."""
    n = len(query)
    key = np.asarray(query, dtype=np.int64) * 3 + np.asarray(period, dtype=np.int64)
    keys, unit_of = np.unique(key, return_inverse=True)
    unit_of = unit_of.reshape(-1).astype(np.int64)
    n_units = len(keys)
    order = np.argsort(unit_of, kind="stable")
    first_ts = np.full(n_units, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_ts, unit_of, np.asarray(ts, dtype=np.int64))

    sizes = np.diff(shown_offsets)
    position = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(
        np.asarray(shown_offsets[:-1], dtype=np.int64), sizes
    )
    shown = (
        pl.DataFrame(
            {
                "unit": np.repeat(unit_of, sizes),
                "item": np.asarray(shown_items, dtype=np.int64),
                "pos": position,
            }
        )
        .group_by(["unit", "item"])
        .agg(pl.col("pos").min())
        .sort(["unit", "pos", "item"])
    )
    clicked = (
        pl.DataFrame(
            {
                "unit": np.repeat(unit_of, np.diff(clicked_offsets)),
                "item": np.asarray(clicked_items, dtype=np.int64),
            }
        )
        .unique()
        .sort(["unit", "item"])
    )

    def offsets(units: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(np.bincount(units, minlength=n_units))]).astype(
            np.int64
        )

    return {
        "unit_of": unit_of,
        "session_offsets": offsets(unit_of),
        "sessions": np.arange(n, dtype=np.int64)[order],
        "search_ts": first_ts,
        "shown_offsets": offsets(shown["unit"].to_numpy()),
        "shown_items": shown["item"].to_numpy().astype(np.int32),
        "shown_positions": shown["pos"].to_numpy().astype(np.int64),
        "clicked_offsets": offsets(clicked["unit"].to_numpy()),
        "clicked_items": clicked["item"].to_numpy().astype(np.int32),
    }


class QueryUnits(PreparedDataset):
    """A prepared dataset seen with one search row per (query, period) unit (module
    docstring); everything else is delegated to the base dataset."""

    def __init__(self, base: PreparedDataset):
        self.base = base
        self.root, self.schema = base.root, base.schema  # and so the base's content hash
        split = base.schema["split"]
        query = normalised_query_ids(base.query_offsets, base.query_words)
        units = aggregate_queries(
            query,
            period_codes(base.search_ts, int(split["valid_start_ms"]), int(split["test_start_ms"])),
            base.search_ts,
            base.shown_offsets,
            base.shown_items,
            base.clicked_offsets,
            base.clicked_items,
        )
        self.session_offsets, self.sessions = units["session_offsets"], units["sessions"]
        self.search_ts = units["search_ts"]
        self.shown_offsets, self.shown_items = units["shown_offsets"], units["shown_items"]
        self.shown_positions = units["shown_positions"]
        self.clicked_offsets, self.clicked_items = units["clicked_offsets"], units["clicked_items"]
        # The query's words: those of its first session, normalised (a set, ascending).
        first = self.sessions[self.session_offsets[:-1]]
        words = [
            np.unique(base.query_words[base.query_offsets[s] : base.query_offsets[s + 1]])
            for s in first
        ]
        words = [w[w != 0] for w in words]
        self.query_offsets = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(
            np.int64
        )
        self.query_words = (
            np.concatenate(words).astype(np.int32) if words else np.zeros(0, dtype=np.int32)
        )

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not set above: the base dataset's own.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def timelines(self) -> Any:
        """The base dataset's per-session timelines (the model inputs never see units)."""
        return self.base.timelines()

    def sessions_of(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(S,) unit rows -> (session rows of the base dataset, the unit index (0..S-1)
        each came from)."""
        starts, ends = self.session_offsets[units], self.session_offsets[units + 1]
        sizes = ends - starts
        index = np.repeat(starts, sizes) + (
            np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        )
        return self.sessions[index], np.repeat(np.arange(len(units)), sizes)


def diffusion_view(dataset: PreparedDataset, unit: str) -> PreparedDataset:
    """The dataset as the diffusion job sees it: per session (as prepared) or per query."""
    if unit not in UNITS:
        raise ValueError(f"diffusion unit must be session or query, not {unit!r}")
    if unit == "session" or isinstance(dataset, QueryUnits):
        return dataset
    return QueryUnits(dataset)
