"""A reference for the pseudo-positives that is not the paper's method: the topic heuristic.

For a click-less query: the most-clicked training items of the second-level category most
common among its shown items, without the items it showed (padded with the most-clicked
items overall when the category has too few). It reads item categories, which the
diffusion model never sees, and on the generated data it is on the query's topic by
construction (second-level category = topic).

Two uses, both to tell what the diffusion model's pseudo-positives are worth:
- a row of the unshown-items quality table (`quality.py`): how far the diffusion model's
  ranking of the items a query did not show is from it;
- `queryrec diffusion augment --reference category`: these positives are written in place
  of the diffusion ones, so that `queryrec bench --models queryrec` measures what
  on-topic positives do for the CTR model (docs/HISTORY.md, "What on-topic positives are
  worth").
"""

from __future__ import annotations

import numpy as np

from queryrec.features.dataset import PreparedDataset

MISSING_CATEGORY = 1  # 0 / 1: missing / unknown second-level category (item_categories)


def main_shown_category(dataset: PreparedDataset, categories: np.ndarray, row: int) -> int:
    """Most common known second-level category among session `row`'s shown items; -1 when
    none is known."""
    shown = dataset.shown_items[dataset.shown_offsets[row] : dataset.shown_offsets[row + 1]]
    known = categories[shown.astype(np.int64)]
    known = known[known > MISSING_CATEGORY]
    return int(np.bincount(known).argmax()) if len(known) else -1


class CategoryReference:
    """Click counts over `fit_sessions` (rows of search.parquet with clicks) and every
    item's second-level category (`augment.item_categories`)."""

    def __init__(
        self, dataset: PreparedDataset, categories: np.ndarray, fit_sessions: np.ndarray
    ) -> None:
        self.dataset = dataset
        self.categories = categories  # (n_items,)
        self.clicks = np.zeros(len(categories))  # (n_items,)
        for row in fit_sessions:
            items = dataset.clicked_items[
                dataset.clicked_offsets[row] : dataset.clicked_offsets[row + 1]
            ]
            np.add.at(self.clicks, items.astype(np.int64), 1)

    def main_category(self, row: int) -> int:
        return main_shown_category(self.dataset, self.categories, row)

    def shown(self, row: int) -> np.ndarray:
        dataset = self.dataset
        items = dataset.shown_items[dataset.shown_offsets[row] : dataset.shown_offsets[row + 1]]
        return items.astype(np.int64)

    def scores(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(B,) session rows, (U,) candidate item indices -> (B, U): click count, plus more
        than any click count for items of the session's main category (those first)."""
        bonus = self.clicks.max() + 1.0
        out = np.broadcast_to(self.clicks[items], (len(rows), len(items))).copy()
        item_categories = self.categories[items]  # (U,)
        for i, row in enumerate(rows):
            out[i, item_categories == self.main_category(int(row))] += bonus
        return out

    def positives(self, rows: np.ndarray, k: int) -> np.ndarray:
        """(S,) click-less session rows -> (S, K) item indices, best first: the K highest
        `scores` among clicked items, shown items removed. ValueError when fewer than K
        clicked items are left for a session."""
        candidates = np.flatnonzero(self.clicks > 0)  # (C,)
        if len(candidates) < k:
            raise ValueError(f"only {len(candidates)} clicked items in the fit sessions, K = {k}")
        out = np.zeros((len(rows), k), dtype=np.int64)
        for lo in range(0, len(rows), 512):
            batch = rows[lo : lo + 512]
            scores = self.scores(batch, candidates)  # (B, C)
            for i, row in enumerate(batch):
                scores[i, np.isin(candidates, self.shown(int(row)))] = -np.inf
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (B, K)
            short = np.flatnonzero(np.isinf(np.take_along_axis(scores, top, axis=1)).any(axis=1))
            if len(short):
                row = int(batch[short[0]])
                left = int(np.isfinite(scores[short[0]]).sum())
                raise ValueError(f"session {row} leaves {left} clicked item unshown, K = {k}")
            out[lo : lo + len(batch)] = candidates[top]
        return out
