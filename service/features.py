"""What Redis holds for a user + a request -> the bundle's model inputs, by the one feature path.

The rules (windows strictly before t, padding, hour, age buckets) are
`queryrec.features.model_inputs`, the code training runs; this module only adapts the
service's state to it: raw ids -> model indices with the bundle's id maps (unknown ->
index 1), Redis's newest-first lists -> a one-user timeline, and the profile (the Redis
hash when it holds every field, else the bundle's table, else zeros). `queryrec replay`
checks every served score against the offline score of the same impression.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from queryrec.features.bundle_format import IdMap, history_lengths
from queryrec.features.dataset import profile_table
from queryrec.features.graph_feeds import ctr_feed, encoder_feed
from queryrec.features.model_inputs import EventTimelines, HistoryLengths, model_inputs
from service.bundle import Bundle
from service.redis_keys import VERSION_BYTES
from service.state import UserState

_ONE_ROW = np.zeros(1, dtype=np.int64)


@dataclass(frozen=True)
class IdMaps:
    """Raw id -> model index for users, items and words (the bundle's maps)."""

    users: IdMap
    items: IdMap
    words: IdMap


@dataclass
class UserRow:
    """One request's user-level model inputs."""

    user: int  # user index
    hour: int
    profile: np.ndarray  # (P,) int64 codes
    click_history: np.ndarray  # (H,) int64 item indices, left-padded
    query_tokens: np.ndarray  # (L, T) int64 word indices, left-padded
    query_age: np.ndarray  # (L,) int64 age buckets, 0 = padding
    query_count: int  # valid query slots; 0: the user has no query before t
    history_version: bytes  # digest of (query_tokens, query_age): the cache key


class FeatureBuilder:
    """Knows the id maps, history lengths and profile table of one bundle."""

    def __init__(
        self,
        lengths: HistoryLengths,
        maps: IdMaps,
        profile_fields: list[str],
        profile_table: np.ndarray,
    ):
        self.lengths = lengths
        self.maps = maps
        self.profile_fields = profile_fields
        self.profile_table = profile_table  # (users, P) int64 codes by user index

    @classmethod
    def for_bundle(cls, bundle: Bundle) -> FeatureBuilder:
        fields: list[str] = list(bundle.manifest["profile_fields"])
        table = profile_table(bundle.profiles(), fields)
        maps = IdMaps(users=bundle.users, items=bundle.items, words=bundle.words)
        return cls(history_lengths(bundle.manifest), maps, fields, table)

    def timelines(self, user: int, state: UserState) -> EventTimelines:
        """The user's Redis state as a one-user timeline of model indices."""
        return EventTimelines.from_newest_first(
            click_ts=state.click_ts,
            click_item=self.maps.items(state.click_items),
            query_ts=state.query_ts,
            query_sizes=state.query_sizes,
            words=self.maps.words(state.query_words),
            profile=self._profile(user, state.profile),
        )

    def user_row(self, raw_user: int, state: UserState, request_ms: int) -> UserRow:
        user = int(self.maps.users(np.array([raw_user]))[0])
        inputs = model_inputs(
            self.timelines(user, state), _ONE_ROW, np.array([request_ms]), self.lengths
        )
        tokens, ages = inputs.query_tokens[0], inputs.query_age[0]
        digest = hashlib.blake2b(tokens.tobytes() + ages.tobytes(), digest_size=VERSION_BYTES)
        return UserRow(
            user=user,
            hour=int(inputs.hour[0]),
            profile=inputs.profile[0],
            click_history=inputs.click_history[0],
            query_tokens=tokens,
            query_age=ages,
            query_count=int(inputs.query_count[0]),
            history_version=digest.digest(),
        )

    def _profile(self, user: int, stored: dict[str, int]) -> np.ndarray:
        if stored and all(f in stored for f in self.profile_fields):
            return np.array([stored[f] for f in self.profile_fields], dtype=np.int64)
        if user < len(self.profile_table):
            return self.profile_table[user]
        return np.zeros(len(self.profile_fields), dtype=np.int64)


def encoder_inputs(rows: list[UserRow]) -> dict[str, np.ndarray]:
    """Requests' query histories -> the encoder's batch (`graph_feeds.encoder_feed`)."""
    return encoder_feed(
        np.stack([r.query_tokens for r in rows]), np.stack([r.query_age for r in rows])
    )


def ctr_inputs(
    users: list[UserRow], query_reprs: np.ndarray | None, items: list[np.ndarray]
) -> dict[str, np.ndarray]:
    """User rows, their query vectors (U, d) and item indices per request -> the CTR
    graph's flat layout (one user row per request, one pair per candidate)."""
    counts = np.array([len(i) for i in items])
    return ctr_feed(
        user=np.array([u.user for u in users], dtype=np.int64),
        hour=np.array([u.hour for u in users], dtype=np.int64),
        profile=np.stack([u.profile for u in users]),
        click_history=np.stack([u.click_history for u in users]),
        pair_user=np.repeat(np.arange(len(users), dtype=np.int64), counts),
        item=np.concatenate(items),
        query_repr=query_reprs,
    )
