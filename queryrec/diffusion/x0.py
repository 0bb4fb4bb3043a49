"""x0: the item universe and each search row's vector over it (numpy only).

A row is a search session of the prepared dataset, or, in the per-query view
(`query_units.QueryUnits`, `DiffusionTrainConfig.unit = "query"`), every session of one
query pooled, as the paper builds x0.

**Universe.** KuaiSAR has millions of items, so a dense x0 over all of them is out of the
question. The universe is the `max_items` items shown most often in training-split search
sessions (ties by item index): the items a query's clicks can be about, restricted to
those seen often enough to learn anything for. Cost per query: `max_items` floats in a
batch (4,096 on `small`: 16 KB; 20,000 at `kuaisar-small` scale: 80 KB, 41 MB per batch
of 512) and a denoiser of about 2 x max_items x hidden weights (10 M floats at 20,000 x
256). Clicks on items outside the universe are dropped from x0; the share kept is
reported by `diffusion train`.

**Encoding.** Clicked items +1 (`CLICKED`), shown and not clicked negative, never shown 0
(`UNSEEN`): the midpoint, because for an item the user never saw the session says nothing
either way, and the denoiser's output there is its own belief (the value the top-K
pseudo-positives are read from). A shown item is `SHOWN` (-1) plus, with
`position_weight` w > 0, w / log2(2 + position) for its display position (0 = first, the
order of the session's rows in src_inter.csv; an item shown twice keeps its first place):
-1 + w at the top, towards -1 further down. The discount is the usual DCG examination
curve, not fitted to any data; it tells the denoiser where each shown item sat, which a
set of -1s cannot, and it keeps every shown item negative (w < 1). w = 0 is the plain
+1 / -1 / 0 encoding. A click-less session is therefore negative on its shown items and
0 elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from queryrec.features.dataset import PreparedDataset

CLICKED, SHOWN, UNSEEN = 1.0, -1.0, 0.0


@dataclass(frozen=True)
class ItemUniverse:
    """The items x0 covers: column j is item index `items[j]`."""

    items: np.ndarray  # (U,) int64 item indices
    column: np.ndarray  # (n_items,) int64 column of each item index, -1 outside

    @classmethod
    def from_items(cls, items: np.ndarray, n_items: int) -> ItemUniverse:
        column = np.full(n_items, -1, dtype=np.int64)
        column[items] = np.arange(len(items))
        return cls(items.astype(np.int64), column)

    @classmethod
    def most_shown(
        cls, dataset: PreparedDataset, sessions: np.ndarray, max_items: int
    ) -> ItemUniverse:
        """The `max_items` items shown most often in `sessions` (rows of search.parquet)."""
        shown = _values(dataset.shown_offsets, dataset.shown_items, sessions)
        n_items = int(dataset.schema["vocab_sizes"]["items"])
        counts = np.bincount(shown, minlength=n_items)
        counts[:2] = 0  # padding and unknown
        order = np.lexsort((np.arange(n_items), -counts))  # most shown first, then by index
        kept = order[: min(max_items, int((counts > 0).sum()))]
        return cls.from_items(np.sort(kept), n_items)

    def __len__(self) -> int:
        return len(self.items)

    def save(self, path: Path) -> None:
        np.save(path, self.items)

    @classmethod
    def load(cls, path: Path, n_items: int) -> ItemUniverse:
        return cls.from_items(np.load(path), n_items)


def _values(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """All values of CSR rows `rows`, concatenated."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    starts, ends = offsets[rows], offsets[rows + 1]
    index = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)])
    return values[index.astype(np.int64)].astype(np.int64) if len(index) else index


def sessions_in(
    dataset: PreparedDataset, start_ms: int, end_ms: int, *, clicked: bool
) -> np.ndarray:
    """Rows of search.parquet in [start_ms, end_ms) with (clicked) or without clicks."""
    ts = dataset.search_ts
    has_click = np.diff(dataset.clicked_offsets) > 0
    return np.flatnonzero((ts >= start_ms) & (ts < end_ms) & (has_click == clicked))


def build_x0(
    dataset: PreparedDataset,
    universe: ItemUniverse,
    sessions: np.ndarray,
    *,
    hide_clicks: bool,
    position_weight: float = 0.0,
) -> np.ndarray:
    """(B,) session rows -> x0 (B, U) float32 (the encoding above). `hide_clicks`: encode
    as if click-less (clicked items get their shown value), the input of augmentation and
    of the hidden-click evaluation."""
    if not 0.0 <= position_weight < 1.0:
        raise ValueError(f"position_weight must be in [0, 1), got {position_weight}")
    x0 = np.full((len(sessions), len(universe)), UNSEEN, dtype=np.float32)
    offsets = dataset.shown_offsets
    sizes = offsets[sessions + 1] - offsets[sessions]
    rows = np.repeat(np.arange(len(sessions)), sizes)
    # The display position of each shown entry: its place in the row, or, for a view
    # that aggregates sessions (`query_units.QueryUnits`), the position it carries.
    given = getattr(dataset, "shown_positions", None)
    positions = (
        _values(offsets, given, sessions)
        if given is not None
        else np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    )
    values = SHOWN + position_weight / np.log2(2.0 + positions)
    columns = universe.column[_values(offsets, dataset.shown_items, sessions)]
    inside = np.flatnonzero(columns >= 0)[::-1]  # written last to first: first place wins
    x0[rows[inside], columns[inside]] = values[inside]
    if not hide_clicks:
        offsets = dataset.clicked_offsets
        sizes = offsets[sessions + 1] - offsets[sessions]
        rows = np.repeat(np.arange(len(sessions)), sizes)
        columns = universe.column[_values(offsets, dataset.clicked_items, sessions)]
        inside = columns >= 0
        x0[rows[inside], columns[inside]] = CLICKED
    return x0


def clicked_lists(
    dataset: PreparedDataset, universe: ItemUniverse, sessions: np.ndarray
) -> list[np.ndarray]:
    """Per session, the universe columns of its clicked items."""
    out = []
    for row in sessions:
        items = dataset.clicked_items[
            dataset.clicked_offsets[row] : dataset.clicked_offsets[row + 1]
        ]
        columns = universe.column[items.astype(np.int64)]
        out.append(np.unique(columns[columns >= 0]))
    return out
