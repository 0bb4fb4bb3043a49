"""What Redis holds for a user + a request -> the bundle's graph feeds, by the one feature path.

The rules (windows strictly before t, padding, hour, age buckets, a search's clicked
results) are `queryrec.features.model_inputs`, the code training runs; this module only
adapts the service's state to it: raw ids -> model indices with the bundle's id maps
(unknown -> index 1), Redis's newest-first lists -> a one-user timeline, and the profile
(the Redis hash when it holds every field, else the bundle's table, else zeros). The
feeds take each graph input by name from `ModelInputs` (`queryrec.features.graph_feeds`),
so the inputs a bundle's graphs read are what it gets. `queryrec replay` checks every
served score against the offline score of the same impression.

The encoder's outputs for one request (`Encoded`) are what the service caches per
history version: `query_repr` (d,) and, for the served QueryRec, `query_states` (n, d),
the SAS outputs of the request's n searches (the slots before them are padding, whose
states are zero); a CTR batch left-pads each request's states to the batch's slot count.
With the split CTR graph (`ctr_user.onnx`, `ctr_pair.onnx`) the same dict also carries
the request's user side (`USER_SIDE`, the user graph's outputs), cached with it; the
history version then digests every input of the user graph too (click history, user,
profile), so a feed click invalidates it as a search does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from queryrec.features.bundle_format import IdMap, history_lengths, read_query_positives
from queryrec.features.dataset import profile_table
from queryrec.features.graph_feeds import COMPUTED_INPUTS, cut_history_padding, graph_feed
from queryrec.features.model_inputs import (
    EventTimelines,
    HistoryLengths,
    ModelInputs,
    model_inputs,
    trim_query_columns,
)
from queryrec.features.query_positives import QueryPositives
from service.inference.bundle import Bundle
from service.state.keys import VERSION_BYTES
from service.state.store import UserState

_ONE_ROW = np.zeros(1, dtype=np.int64)


class GraphSession(Protocol):
    """What feeding a graph needs of an ONNX Runtime session."""

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[Any]: ...


Encoded = dict[str, np.ndarray]
"""One request's encoder outputs by name: query_repr (d,), query_states (n, d); with the
split CTR graph also its user side: user_first (M1,), history_rows (H, d + 1),
count_keys (K,), click_total ()."""


@dataclass(frozen=True)
class IdMaps:
    """Raw id -> model index for users, items and words (the bundle's maps)."""

    users: IdMap
    items: IdMap
    words: IdMap


@dataclass
class UserRow:
    """One request's user-level model inputs (one user row, no candidates)."""

    inputs: ModelInputs[np.ndarray]
    query_count: int  # slots holding a search; 0: the user has no search before t
    history_version: bytes  # digest of the encoder's inputs: the cache key


class FeatureBuilder:
    """Knows the id maps, history lengths, profile table and graph inputs of one bundle."""

    def __init__(
        self,
        lengths: HistoryLengths,
        maps: IdMaps,
        profile_fields: list[str],
        profile_table: np.ndarray,
        reads: frozenset[str] = frozenset(),
        encoder_names: tuple[str, ...] = ("query_tokens", "query_age"),
        ctr_names: tuple[str, ...] = (),
        query_positives: QueryPositives | None = None,
        user_names: tuple[str, ...] = (),
        pair_names: tuple[str, ...] = (),
        cut_history: bool = False,
    ):
        self.lengths = lengths
        self.maps = maps
        self.profile_fields = profile_fields
        self.profile_table = profile_table  # (users, P) int64 codes by user index
        self.reads = reads  # optional inputs the bundle's graphs read
        self.encoder_names = encoder_names  # the encoder graph's inputs, in order
        self.ctr_names = ctr_names  # the CTR graph's inputs, in order
        self.query_positives = query_positives  # the bundle's table by query, if any
        self.user_names = user_names  # the split CTR graph's user side inputs, in order
        self.pair_names = pair_names  # its per-request side's inputs, in order
        self.cut_history = cut_history  # the pair graph takes a shorter history (dynamic H)
        # What the history version digests: every model input a cached value depends on.
        self.version_names = tuple(
            n for n in dict.fromkeys((*encoder_names, *user_names)) if n not in COMPUTED_INPUTS
        )

    @classmethod
    def for_bundle(cls, bundle: Bundle) -> FeatureBuilder:
        manifest = bundle.manifest
        fields: list[str] = list(manifest["profile_fields"])
        table = profile_table(bundle.profiles(), fields)
        maps = IdMaps(users=bundle.users, items=bundle.items, words=bundle.words)
        graphs = manifest["graphs"]
        encoder = tuple(graphs["query_encoder"]["inputs"]) if "query_encoder" in graphs else ()
        return cls(
            history_lengths(manifest),
            maps,
            fields,
            table,
            frozenset(manifest["reads"]),
            encoder,
            tuple(graphs["ctr"]["inputs"]),
            read_query_positives(bundle.root, manifest),
            tuple(graphs["ctr_user"]["inputs"]) if "ctr_user" in graphs else (),
            tuple(graphs["ctr_pair"]["inputs"]) if "ctr_pair" in graphs else (),
            "ctr_pair" in graphs
            and isinstance(graphs["ctr_pair"]["inputs"]["history_rows"]["shape"][1], str),
        )

    def timelines(self, user: int, state: UserState) -> EventTimelines:
        """The user's Redis state as a one-user timeline of model indices."""
        clicks = "query_clicks" in self.reads
        return EventTimelines.from_newest_first(
            click_ts=state.click_ts,
            click_item=self.maps.items(state.click_items),
            query_ts=state.query_ts,
            query_sizes=state.query_sizes,
            words=self.maps.words(state.query_words),
            profile=self._profile(user, state.profile),
            query_click_sizes=state.query_click_sizes if clicks else None,
            query_click_items=self.maps.items(state.query_click_items) if clicks else None,
        )

    def user_row(self, raw_user: int, state: UserState, request_ms: int) -> UserRow:
        user = self.maps.users(np.array([raw_user]))
        inputs = model_inputs(
            self.timelines(int(user[0]), state),
            _ONE_ROW,
            np.array([request_ms]),
            self.lengths,
            reads=self.reads,
            user_index=user,
            query_positives=self.query_positives,
        )
        digest = hashlib.blake2b(digest_size=VERSION_BYTES)
        for name in self.version_names:
            digest.update(getattr(inputs, name).tobytes())
        return UserRow(
            inputs=inputs,
            query_count=int((inputs.query_age > 0).sum()),
            history_version=digest.digest(),
        )

    def _profile(self, user: int, stored: dict[str, int]) -> np.ndarray:
        if stored and all(f in stored for f in self.profile_fields):
            return np.array([stored[f] for f in self.profile_fields], dtype=np.int64)
        if user < len(self.profile_table):
            return self.profile_table[user]
        return np.zeros(len(self.profile_fields), dtype=np.int64)

    def encoder_feed(self, rows: list[UserRow]) -> dict[str, np.ndarray]:
        """Requests' query histories -> the encoder's batch, with the slots that hold no
        search in any of them cut off (`trim_query_columns`)."""
        return graph_feed(self.encoder_names, trim_query_columns(stack_rows(rows)))

    def ctr_feed(
        self, rows: list[UserRow], encoded: list[Encoded] | None, items: list[np.ndarray]
    ) -> dict[str, np.ndarray]:
        """User rows, their encoder outputs (None: a bundle without an encoder) and item
        indices per request -> the CTR graph's flat layout (one user row per request,
        one pair per candidate)."""
        counts = np.array([len(i) for i in items])
        inputs = trim_query_columns(stack_rows(rows)).replace(
            item=np.concatenate(items),
            pair_user=np.repeat(np.arange(len(rows), dtype=np.int64), counts),
        )
        by_name: dict[str, np.ndarray] = {}
        if encoded is not None:
            by_name["query_repr"] = np.stack([e["query_repr"] for e in encoded])
            if "query_states" in self.ctr_names:
                slots = inputs.query_age.shape[1]
                by_name["query_states"] = np.stack(
                    [left_pad(e["query_states"], slots) for e in encoded]
                )
        return graph_feed(self.ctr_names, inputs, by_name)

    def user_feed(
        self, rows: list[UserRow], encoded: list[Encoded] | None
    ) -> dict[str, np.ndarray]:
        """Requests' user rows and encoder outputs (None: a bundle without an encoder) ->
        the split CTR graph's user side feed. Not trimmed: every query slot is fed, so
        that the count keys (whose number follows the slot count) have one width per
        bundle and cache as one vector."""
        by_name = None
        if encoded is not None:
            by_name = {"query_repr": np.stack([e["query_repr"] for e in encoded])}
        return graph_feed(self.user_names, stack_rows(rows), by_name)

    def pair_feed(
        self, rows: list[UserRow], encoded: list[Encoded], items: list[np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Requests' user rows, their encoder outputs with the user side, and item indices
        per request -> the split CTR graph's per-request feed (the flat layout of
        `ctr_feed`), the history rows without the padding no request needs
        (`cut_history_padding`)."""
        counts = np.array([len(i) for i in items])
        inputs = stack_rows(rows).replace(
            item=np.concatenate(items),
            pair_user=np.repeat(np.arange(len(rows), dtype=np.int64), counts),
        )
        computed = [n for n in self.pair_names if n in COMPUTED_INPUTS]
        by_name = {name: np.stack([e[name] for e in encoded]) for name in computed}
        if self.cut_history:
            by_name["history_rows"] = cut_history_padding(
                by_name["history_rows"], inputs.click_history
            )
        return graph_feed(self.pair_names, inputs, by_name)


def split_encoded(
    outputs: list[np.ndarray], names: list[str], rows: list[UserRow]
) -> list[Encoded]:
    """An encoder batch's outputs (by `names`, rows in order) -> each request's own: its
    query vector and the states of its own searches (the last `query_count` slots)."""
    encoded: list[Encoded] = []
    for i, row in enumerate(rows):
        own: Encoded = {}
        for name, value in zip(names, outputs, strict=True):
            if name == "query_states":
                slots = value.shape[1]
                own[name] = value[i, slots - min(row.query_count, slots) :]
            else:
                own[name] = value[i]
        encoded.append(own)
    return encoded


def stack_rows(rows: list[UserRow]) -> ModelInputs[np.ndarray]:
    """Requests' one-row inputs -> one `ModelInputs` of len(rows) user rows (no candidates)."""
    if len(rows) == 1:
        return rows[0].inputs
    fields = rows[0].inputs.user_fields()
    stacked = {
        name: np.concatenate([r.inputs.user_fields()[name] for r in rows]) for name in fields
    }
    return rows[0].inputs.replace(**stacked)


def left_pad(states: np.ndarray, slots: int) -> np.ndarray:
    """(n, d) states of a request's n searches -> (slots, d), zeros in front; n <= slots
    (a batch's slot count is its largest request's)."""
    out = np.zeros((slots, states.shape[1]), dtype=np.float32)
    if len(states):
        out[slots - len(states) :] = states
    return out


def inline_feeds(
    builder: FeatureBuilder,
    encoder: GraphSession | None,
    encoder_outputs: list[str],
    rows: list[UserRow],
    items: list[np.ndarray],
) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray]]:
    """(encoder feed or None, CTR feed) of requests scored inline, the encoder run on the
    spot (no batching, no cache): the naive reference servers and the benchmarks."""
    if encoder is None:
        return None, builder.ctr_feed(rows, None, items)
    encoder_feed = builder.encoder_feed(rows)
    encoded = split_encoded(encoder.run(None, encoder_feed), encoder_outputs, rows)
    return encoder_feed, builder.ctr_feed(rows, encoded, items)
