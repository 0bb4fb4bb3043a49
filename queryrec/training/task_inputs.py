"""Training-only model inputs (numpy): a second task's samples and out-of-fold rate codes.

The model inputs every split shares come from the one feature path
(`queryrec.features.model_inputs`); these two exist only for training batches (the builder
is given a random generator and the rows are training samples), never for evaluation,
which reads what serving reads:

| `ModelInputs` field | what | read by |
|---|---|---|
| `search_task` | S search impressions drawn uniformly from the training split's search sessions (every shown item of every session is one impression), each with the feed clicks before the search, the search's own words as its one query slot, and clicked or not | ple |
| `candidate_rate_codes` | (B, 2) the training row's out-of-fold item and author rate codes (`features.item_statistics.rate_bucket_fields`) | din-stats, queryrec-stats |
"""

from __future__ import annotations

import numpy as np

from queryrec.features.dataset import PreparedDataset
from queryrec.features.model_inputs import (
    HistoryLengths,
    ModelInputs,
    SearchTask,
    first_k_per_row,
    model_inputs,
)

TRAINING_INPUTS = ("search_task", "candidate_rate_codes")


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
    ) -> SearchTask[np.ndarray]:
        """`count` impressions, uniform with replacement, with their inputs."""
        if not len(self):
            raise ValueError("the training split has no search impression (no shown items)")
        pick = rng.integers(0, len(self), size=count)
        session = self.session[pick]
        user = self.ds.search_user[session].astype(np.int64)
        ts = self.ds.search_ts[session].astype(np.int64)
        inputs = model_inputs(self.ds.timelines(), user, ts, lengths, self.item[pick])
        own_query = first_k_per_row(
            self.ds.query_offsets, self.ds.query_words, session, lengths.tokens
        )  # (S, T)
        inputs = inputs.replace(
            query_tokens=own_query[:, None, :],
            query_age=np.ones((count, 1), dtype=np.int64),  # the search itself: < 1 h old
        )
        return SearchTask(inputs, self.label[pick])


def search_task_inputs(
    names: tuple[str, ...], dataset: PreparedDataset
) -> SearchImpressions | None:
    """The search impressions when a model reads `search_task`, else None."""
    unknown = sorted(set(names) - set(TRAINING_INPUTS))
    if unknown:
        raise ValueError(f"unknown training inputs {unknown}; choose from {TRAINING_INPUTS}")
    return SearchImpressions(dataset) if "search_task" in names else None


def with_training_inputs(
    inputs: ModelInputs[np.ndarray],
    rows: np.ndarray,
    rng: np.random.Generator,
    search: SearchImpressions | None,
    rate_codes: np.ndarray | None,
    lengths: HistoryLengths,
) -> ModelInputs[np.ndarray]:
    """A training batch's inputs plus the training-only fields the model reads."""
    changes: dict[str, object] = {}
    if rate_codes is not None:
        changes["candidate_rate_codes"] = rate_codes[rows]
    if search is not None:
        changes["search_task"] = search.draw(len(rows), lengths, rng)
    return inputs.replace(**changes) if changes else inputs
