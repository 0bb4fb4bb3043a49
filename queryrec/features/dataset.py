"""Load a prepared dataset and slice per-sample histories on demand (numpy, torch-free).

A sample stores pointers, not histories (see `queryrec.data.prepare`): `click_end` into
the click timeline and `search_end` into the search timeline, both exclusive and both
counting only events strictly before the sample's time. This module turns a batch of
pointers into padded arrays. Histories are **left-padded**: the most recent event is at
the last position, padding (index 0) fills the front, so "the last valid position" of a
sequence model is always position L-1 when the length is > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from queryrec.errors import SchemaMismatchError
from queryrec.features.schema import PADDING_INDEX, load_schema

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ClickHistory:
    """Feed clicks before each sample, left-padded."""

    items: np.ndarray  # (B, H) int32 item indices, 0 = padding
    ts: np.ndarray  # (B, H) int64 Unix ms, 0 = padding
    lengths: np.ndarray  # (B,) int64 valid entries, <= H


@dataclass(frozen=True)
class QueryHistory:
    """Search sessions before each sample, left-padded."""

    tokens: np.ndarray  # (B, L, T) int32 word indices, 0 = padding
    session: np.ndarray  # (B, L) int64 global row in search.parquet, -1 = padding
    ts: np.ndarray  # (B, L) int64 Unix ms, 0 = padding
    lengths: np.ndarray  # (B,) int64 valid sessions, <= L


def _csr(lists: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (offsets (n+1,), flat values) arrays."""
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = lists.explode().drop_nulls().to_numpy().astype(np.int32)
    if len(values) != offsets[-1]:
        raise SchemaMismatchError(f"list column '{lists.name}' holds nulls inside lists")
    return offsets, values


def _gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """values[index], or zeros when `values` is empty (every index is then masked anyway)."""
    if len(values) == 0:
        return np.zeros(index.shape, dtype=values.dtype)
    return values[index]


def _window(ends: np.ndarray, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded index windows [max(start, end - length), end) as (B, length) + valid mask."""
    positions = ends[:, None] - length + np.arange(length)[None, :]  # (B, length)
    valid = positions >= starts[:, None]
    return np.where(valid, positions, 0), valid


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
        self.clicked_offsets, self.clicked_items = _csr(search["clicked"])

    @property
    def content_hash(self) -> str:
        return str(self.schema["content_hash"])

    def samples(self, split: str) -> pl.DataFrame:
        """The samples of one split, ordered by time."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        return pl.read_parquet(self.root / f"samples/{split}.parquet")

    def click_history(self, users: np.ndarray, click_ends: np.ndarray, length: int) -> ClickHistory:
        """The last `length` feed clicks of each user strictly before each sample."""
        users = np.asarray(users, dtype=np.int64)
        ends = np.asarray(click_ends, dtype=np.int64)
        index, valid = _window(ends, self.click_user_start[users], length)
        return ClickHistory(
            items=np.where(valid, _gather(self.click_item, index), PADDING_INDEX).astype(np.int32),
            ts=np.where(valid, _gather(self.click_ts, index), 0),
            lengths=valid.sum(axis=1),
        )

    def query_history(
        self, users: np.ndarray, search_ends: np.ndarray, length: int, tokens: int
    ) -> QueryHistory:
        """The last `length` queries (first `tokens` words each) strictly before each sample."""
        users = np.asarray(users, dtype=np.int64)
        ends = np.asarray(search_ends, dtype=np.int64)
        session, valid = _window(ends, self.search_user_start[users], length)  # (B, L)
        starts = self.query_offsets[session]  # (B, L)
        sizes = self.query_offsets[session + 1] - starts
        word_pos = starts[..., None] + np.arange(tokens)  # (B, L, T)
        word_ok = valid[..., None] & (np.arange(tokens) < sizes[..., None])
        safe = np.where(word_ok, word_pos, 0)
        words = _gather(self.query_words, safe)
        return QueryHistory(
            tokens=np.where(word_ok, words, PADDING_INDEX).astype(np.int32),
            session=np.where(valid, session, -1),
            ts=np.where(valid, _gather(self.search_ts, session), 0),
            lengths=valid.sum(axis=1),
        )
