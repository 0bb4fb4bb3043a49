"""Raw state from Redis + request -> the bundle's model inputs, exactly as training built them.

Training (`queryrec.training.batches.BatchBuilder`) sees, for an impression at time t:
the last H feed clicks strictly before t and the last L queries strictly before t (first
T words each), left-padded, each query's age bucket at t (`queryrec.features.query_age`),
the Beijing hour of t, and the user's profile codes. This module computes the same from
what Redis holds (raw ids, newest first), mapping raw ids with the bundle's id maps
(unknown -> index 1). `queryrec replay` checks the two agree: served AUC = offline AUC.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from queryrec.data.kuaisar import BEIJING_OFFSET_MS
from queryrec.features.query_age import HOUR_MS, query_age_buckets
from service.bundle import Bundle
from service.redis_keys import VERSION_BYTES
from service.state import UserState


@dataclass
class UserRow:
    """One request's user-level model inputs."""

    user: int  # user index
    hour: int
    profile: np.ndarray  # (P,) int64 codes
    click_history: np.ndarray  # (H,) int64 item indices, left-padded
    query_tokens: np.ndarray  # (L_u, T) int64 word indices, oldest first; L_u may be 0
    query_age: np.ndarray  # (L_u,) int64 age buckets
    history_version: bytes  # digest of (query_tokens, query_age): the cache key


class FeatureBuilder:
    """Knows the bundle's maps, history lengths and profile table."""

    def __init__(self, bundle: Bundle):
        lengths = bundle.manifest["max_lengths"]
        self.click_history = int(lengths["click_history"])  # H
        self.query_history = int(lengths["query_history"])  # L
        self.query_tokens = int(lengths["query_tokens"])  # T
        self.bundle = bundle
        self.profile_fields: list[str] = list(bundle.manifest["profile_fields"])
        users = bundle.profiles()
        index = users["index"].to_numpy()
        table = np.zeros((int(index.max()) + 1 if len(index) else 1, len(self.profile_fields)))
        if len(index):
            table[index] = np.stack(
                [users[f].to_numpy().astype(np.int64) for f in self.profile_fields], axis=1
            )
        self.profile_table = table.astype(np.int64)

    def user_row(self, raw_user: int, state: UserState, request_ms: int) -> UserRow:
        user = int(self.bundle.users(np.array([raw_user]))[0])
        profile = self._profile(user, state.profile)
        # Clicks strictly before t, the newest H, oldest first, left-padded.
        before = state.click_ts < request_ms
        items = self.bundle.items(state.click_items[before][: self.click_history][::-1])
        clicks = np.zeros(self.click_history, dtype=np.int64)
        if len(items):
            clicks[-len(items) :] = items
        tokens, ages = self.query_inputs(state.queries, request_ms)
        digest = hashlib.blake2b(tokens.tobytes() + ages.tobytes(), digest_size=VERSION_BYTES)
        return UserRow(
            user=user,
            hour=int((request_ms + BEIJING_OFFSET_MS) // HOUR_MS % 24),
            profile=profile,
            click_history=clicks,
            query_tokens=tokens,
            query_age=ages,
            history_version=digest.digest(),
        )

    def query_inputs(
        self, queries: list[tuple[int, np.ndarray]], request_ms: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Queries (newest first) -> tokens (L_u, T) and age buckets (L_u,), oldest first."""
        kept = [(ts, raw) for ts, raw in queries if ts < request_ms][: self.query_history][::-1]
        tokens = np.zeros((len(kept), self.query_tokens), dtype=np.int64)
        ts = np.zeros(len(kept), dtype=np.int64)
        for row, (when, raw) in enumerate(kept):
            words = self.bundle.words(raw[: self.query_tokens])
            tokens[row, : len(words)] = words
            ts[row] = when
        valid = np.ones((1, len(kept)), dtype=bool)
        ages = query_age_buckets(np.array([request_ms]), ts[None, :], valid)[0]
        return tokens, ages.astype(np.int64)

    def _profile(self, user: int, stored: dict[str, int]) -> np.ndarray:
        if stored and all(f in stored for f in self.profile_fields):
            return np.array([stored[f] for f in self.profile_fields], dtype=np.int64)
        if user < len(self.profile_table):
            return self.profile_table[user]
        return np.zeros(len(self.profile_fields), dtype=np.int64)


def encoder_inputs(rows: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """[(tokens (L_u, T), ages (L_u,))] -> query_tokens (B, L', T), query_age (B, L'),
    left-padded to the longest history in the batch (L' >= 1; an empty row is all padding,
    which the encoder maps to its learned "no query" vector)."""
    length = max(1, *(len(ages) for _, ages in rows))
    width = rows[0][0].shape[1]
    tokens = np.zeros((len(rows), length, width), dtype=np.int64)
    ages = np.zeros((len(rows), length), dtype=np.int64)
    for i, (row_tokens, row_ages) in enumerate(rows):
        if len(row_ages):
            tokens[i, -len(row_ages) :] = row_tokens
            ages[i, -len(row_ages) :] = row_ages
    return {"query_tokens": tokens, "query_age": ages}


def ctr_inputs(
    users: list[UserRow], query_reprs: np.ndarray | None, items: list[np.ndarray]
) -> dict[str, np.ndarray]:
    """User rows, their query vectors (U, d) and item indices per request -> the CTR
    graph's flat layout (one user row per request, one pair per candidate)."""
    counts = np.array([len(i) for i in items])
    feed = {
        "user": np.array([u.user for u in users], dtype=np.int64),
        "hour": np.array([u.hour for u in users], dtype=np.int64),
        "profile": np.stack([u.profile for u in users]),
        "click_history": np.stack([u.click_history for u in users]),
        "pair_user": np.repeat(np.arange(len(users), dtype=np.int64), counts),
        "item": np.concatenate(items).astype(np.int64),
    }
    if query_reprs is not None:
        feed = {"query_repr": query_reprs.astype(np.float32), **feed}
    return feed
