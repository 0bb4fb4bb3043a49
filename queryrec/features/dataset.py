"""Load a prepared dataset (numpy, torch-free): timelines, samples, maps, profile table.

A sample stores pointers, not histories (see `queryrec.data.prepare`): `click_end` into
the click timeline and `search_end` into the search timeline, both exclusive and both
counting only events strictly before the sample's time. The model inputs of a sample are
built by the one feature path, `queryrec.features.model_inputs`, over `timelines()`
(which finds the same window ends from the times; a test checks they equal the stored
pointers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from queryrec.errors import SchemaMismatchError
from queryrec.features.model_inputs import EventTimelines
from queryrec.features.schema import load_schema

SPLITS = ("train", "valid", "test")


def profile_table(users: pl.DataFrame, fields: list[str], rows: int | None = None) -> np.ndarray:
    """A `features/users.parquet` frame -> (rows, P) int64 profile codes by user index
    (rows: default the largest index + 1; indices without a row are zeros). The dataset,
    the models and the service's bundle all read the table this way."""
    index = users["index"].to_numpy()
    if rows is None:
        rows = int(index.max()) + 1 if len(index) else 1
    table = np.zeros((rows, len(fields)), dtype=np.int64)
    if len(index):
        table[index] = np.stack([users[f].to_numpy() for f in fields], axis=1)
    return table


def _csr(lists: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (offsets (n+1,), flat values) arrays."""
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = lists.explode().drop_nulls().to_numpy().astype(np.int32)
    if len(values) != offsets[-1]:
        raise SchemaMismatchError(f"list column '{lists.name}' holds nulls inside lists")
    return offsets, values


def _distinct_per_row(offsets: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists -> the same lists without repeated values (first occurrence kept, order
    kept)."""
    if len(values) == 0:
        return offsets, values
    row = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    key = row * (int(values.max()) + 1) + values.astype(np.int64)
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(values), dtype=bool)
    keep[first] = True
    counts = np.bincount(row[keep], minlength=len(offsets) - 1)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), values[keep]


class PreparedDataset:
    """A dataset folder written by `queryrec data prepare`, with its schema checked."""

    def __init__(self, root: Path, *, verify_files: bool = True, expected_hash: str | None = None):
        self.root = Path(root)
        self.schema: dict[str, Any] = load_schema(
            self.root, verify_files=verify_files, expected_hash=expected_hash
        )
        feed = pl.read_parquet(self.root / "timelines/feed.parquet")
        n_users = int(self.schema["vocab_sizes"]["users"])
        self.feed_user = feed["user"].to_numpy()
        self.feed_item = feed["item"].to_numpy()
        self.feed_ts = feed["ts"].to_numpy()
        self.feed_click = feed["click"].to_numpy()
        # Per-user starts (CSR) of the feed timeline and of its clicked subsequence.
        self.feed_user_start = np.searchsorted(self.feed_user, np.arange(n_users + 1))
        clicked = np.flatnonzero(self.feed_click)
        self.click_item = self.feed_item[clicked]
        self.click_ts = self.feed_ts[clicked]
        self.click_user = self.feed_user[clicked]
        self.click_user_start = np.searchsorted(self.click_user, np.arange(n_users + 1))

        search = pl.read_parquet(self.root / "timelines/search.parquet")
        self.search_user = search["user"].to_numpy()
        self.search_ts = search["ts"].to_numpy()
        self.search_user_start = np.searchsorted(self.search_user, np.arange(n_users + 1))
        self.query_offsets, self.query_words = _csr(search["query"])
        self.shown_offsets, self.shown_items = _csr(search["shown"])
        # A search's clicked results are a set in display order (the service stores them
        # so: a retried or repeated click is one result): duplicates are dropped.
        self.clicked_offsets, self.clicked_items = _distinct_per_row(*_csr(search["clicked"]))
        self._timelines: EventTimelines | None = None

    @property
    def content_hash(self) -> str:
        return str(self.schema["content_hash"])

    def samples(self, split: str) -> pl.DataFrame:
        """The samples of one split, ordered by time."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        return pl.read_parquet(self.root / f"samples/{split}.parquet")

    def profile_table(self) -> np.ndarray:
        """(n_users, P) int64 profile codes by user index (features/users.parquet), the
        table the models and the bundle carry."""
        return profile_table(
            pl.read_parquet(self.root / "features/users.parquet"),
            list(self.schema["vocab_sizes"]["profile"]),
            rows=int(self.schema["vocab_sizes"]["users"]),
        )

    def timelines(self) -> EventTimelines:
        """Every user's events as the one feature path reads them (no copy but the
        profile table); row = user index."""
        if self._timelines is None:
            self._timelines = EventTimelines(
                click_start=self.click_user_start,
                click_item=self.click_item,
                click_ts=self.click_ts,
                query_start=self.search_user_start,
                query_ts=self.search_ts,
                word_start=self.query_offsets,
                words=self.query_words,
                profile=self.profile_table(),
                query_click_start=self.clicked_offsets,
                query_click_items=self.clicked_items,
            )
        return self._timelines

    def raw_ids(self, name: str) -> np.ndarray:
        """index -> raw id for maps/{name}.parquet (users, items, words); indices without
        a raw id (padding, unknown) get -1."""
        frame = pl.read_parquet(self.root / f"maps/{name}.parquet")
        index = frame["index"].to_numpy().astype(np.int64)
        table = np.full(int(index.max()) + 1 if len(index) else 2, -1, dtype=np.int64)
        table[index] = frame["raw_id"].to_numpy()
        return table
