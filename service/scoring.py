"""One Score request end to end: Redis read -> encoder micro-batch -> CTR micro-batch.

Per request (DESIGN.md "Serving behaviour"):
1. one pipelined Redis round trip for the user's histories, profile and cached vector,
   within `redis_share` of the budget;
2. the query representation: the cached one when the history (and its age buckets) is
   unchanged since the last encode, the learned "no query" vector when the user has no
   query before t, otherwise the encoder micro-batcher, within `encoder_share`;
3. the CTR micro-batcher scores the request's candidates together with other requests'.
If Redis or the encoder misses its share, the request is scored without the query
representation (the "no query" vector; without Redis also without click history) and
marked degraded with the reason. The budget is min(configured budget, gRPC deadline).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from service.batcher import MicroBatcher
from service.bundle import Bundle
from service.errors import StateUnavailable
from service.features import FeatureBuilder, UserRow, ctr_inputs, encoder_inputs
from service.redis_keys import unpack_query_repr
from service.settings import ServiceSettings
from service.state import RedisState, UserState


@dataclass
class ScoreResult:
    scores: np.ndarray  # (N,) float32 P(click), request order
    degraded: bool = False
    reasons: list[str] = field(default_factory=list)


@dataclass
class QueryPathCounts:
    """How each request got its query vector (tests read them; metrics will)."""

    cache_hits: int = 0
    encoded: int = 0
    no_query: int = 0


class Scorer:
    """The scoring pipeline over one bundle and one Redis state."""

    def __init__(self, bundle: Bundle, state: RedisState, settings: ServiceSettings):
        self.bundle, self.state, self.settings = bundle, state, settings
        self.features = FeatureBuilder.for_bundle(bundle)
        self.counts = QueryPathCounts()
        self._background: set[asyncio.Task[None]] = set()
        self.no_query: np.ndarray | None = None
        if bundle.encoder is not None:
            empty = encoder_inputs([self._empty_row()])
            self.no_query = bundle.encoder.run(None, empty)[0][0]  # (d,)
        self.encoder: MicroBatcher[UserRow, np.ndarray] = MicroBatcher(
            "encoder",
            self._encode_batch,
            max_size=settings.encoder_max_batch,
            max_delay_s=settings.encoder_max_delay_ms / 1e3,
            max_queue=settings.max_queue,
        )
        self.ctr: MicroBatcher[tuple[UserRow, np.ndarray | None, np.ndarray], np.ndarray] = (
            MicroBatcher(
                "ctr",
                self._ctr_batch,
                max_size=settings.ctr_max_pairs,
                max_delay_s=settings.ctr_max_delay_ms / 1e3,
                max_queue=settings.max_queue,
            )
        )

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    def start(self) -> None:
        self.encoder.start()
        self.ctr.start()

    async def stop(self) -> None:
        await self.encoder.stop()
        await self.ctr.stop()

    def _empty_row(self) -> UserRow:
        """A request's row without any history (warm-up and the "no query" vector)."""
        lengths = self.features.lengths
        return UserRow(
            user=0,
            hour=0,
            profile=np.zeros(len(self.features.profile_fields), np.int64),
            click_history=np.zeros(lengths.clicks, np.int64),
            query_tokens=np.zeros((lengths.queries, lengths.tokens), np.int64),
            query_age=np.zeros(lengths.queries, np.int64),
            query_count=0,
            history_version=b"",
        )

    def warm_up(self) -> None:
        """Run every batch-shape bucket once (ORT allocates per new shape): encoder
        batches 1, 2, 4, ... up to the max at every history length, CTR pair counts
        1, 2, 4, ... up to the max over 1 and several user rows."""
        lengths = self.features.lengths
        if self.bundle.encoder is not None:
            for users in _powers_of_two(self.settings.encoder_max_batch):
                for queries in range(1, lengths.queries + 1):
                    feed = {
                        "query_tokens": np.ones((users, queries, lengths.tokens), dtype=np.int64),
                        "query_age": np.ones((users, queries), dtype=np.int64),
                    }
                    self.bundle.encoder.run(None, feed)
        row = self._empty_row()
        for pairs in _powers_of_two(self.settings.ctr_max_pairs):
            for users in sorted({1, min(pairs, 8)}):
                items = np.array_split(np.ones(pairs, dtype=np.int64), users)
                reprs = None if self.no_query is None else np.tile(self.no_query, (users, 1))
                self.bundle.ctr.run(None, ctr_inputs([row] * users, reprs, items))

    async def score(
        self,
        raw_user: int,
        raw_items: list[int],
        request_ms: int,
        budget_s: float,
        deadline_s: float | None = None,
    ) -> ScoreResult:
        """Scores in request order. `budget_s` bounds the Redis and encoder stages (they
        degrade when late); `deadline_s` (the gRPC deadline, None: none) bounds the whole
        call, whose CTR stage otherwise gets `settings.ctr_timeout_ms`."""
        start = asyncio.get_running_loop().time()
        items = self.bundle.items(np.asarray(raw_items, dtype=np.int64))
        state, reasons = await self._read_state(raw_user, budget_s)
        row = self.features.user_row(raw_user, state, request_ms)
        query = self.no_query  # None: a model without a query tower
        if query is not None and not reasons:  # without Redis: no history, "no query"
            encoder_until = start + budget_s * self.settings.encoder_share
            query = await self._query_vector(raw_user, row, state, encoder_until, reasons)
        scores = await self._ctr(row, query, items, start, deadline_s)
        return ScoreResult(scores, bool(reasons), reasons)

    async def _read_state(self, raw_user: int, budget_s: float) -> tuple[UserState, list[str]]:
        """The user's state within Redis's share of the budget; an empty state and the
        reason when Redis is late or down."""
        try:
            # (asyncio.timeout, not wait_for: no extra task per stage)
            async with asyncio.timeout(budget_s * self.settings.redis_share):
                (state,) = await self.state.read([raw_user], self._cache_version)
        except TimeoutError:
            return UserState(), ["redis: no answer within its share of the budget"]
        except StateUnavailable as error:
            return UserState(), [f"redis: {error}"]
        return state, []

    @property
    def _cache_version(self) -> str | None:
        """The model version the query-vector cache is keyed by; None: cache off."""
        return self.model_version if self.settings.cache_query_repr else None

    async def _query_vector(
        self, raw_user: int, row: UserRow, state: UserState, until: float, reasons: list[str]
    ) -> np.ndarray:
        """e_q for the request: "no query" without queries, the cached vector when the
        history is unchanged, else the encoder micro-batch until `until` (loop time; late:
        "no query" and a reason appended to `reasons`)."""
        assert self.no_query is not None
        if row.query_count == 0:
            self.counts.no_query += 1
            return self.no_query
        cached = _cached(state.cached_query_repr, row.history_version)
        if cached is not None:
            self.counts.cache_hits += 1
            return cached
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(until - loop.time(), 0.0)):
                query = await self.encoder.submit(row)
        except TimeoutError:
            reasons.append("encoder: no answer within its share of the budget")
            return self.no_query
        self.counts.encoded += 1
        self._cache_in_background(raw_user, row, query)
        return query

    def _cache_in_background(self, raw_user: int, row: UserRow, query: np.ndarray) -> None:
        """Store the new vector without making the request wait for the write."""
        version = self._cache_version
        if version is None:
            return
        task = asyncio.get_running_loop().create_task(
            self.state.cache_query_reprs(version, [(raw_user, row.history_version, query)])
        )
        self._background.add(task)  # kept alive until done
        task.add_done_callback(self._background.discard)

    async def _ctr(
        self,
        row: UserRow,
        query: np.ndarray | None,
        items: np.ndarray,
        start: float,
        deadline_s: float | None,
    ) -> np.ndarray:
        """The CTR micro-batch. It is the answer itself: it may use the rest of the gRPC
        deadline (or, without one, `ctr_timeout_ms`); past that the request fails
        (TimeoutError) rather than hangs."""
        limit = self.settings.ctr_timeout_ms / 1e3
        if deadline_s is not None:
            limit = max(start + deadline_s - asyncio.get_running_loop().time(), 0.0)
        async with asyncio.timeout(limit):
            return await self.ctr.submit((row, query, items), units=len(items))

    def _encode_batch(self, rows: list[UserRow]) -> Sequence[np.ndarray]:
        assert self.bundle.encoder is not None
        out = self.bundle.encoder.run(None, encoder_inputs(rows))[0]  # (B, d)
        return list(out)

    def _ctr_batch(
        self, requests: list[tuple[UserRow, np.ndarray | None, np.ndarray]]
    ) -> Sequence[np.ndarray]:
        rows = [r for r, _, _ in requests]
        reprs = None
        if self.no_query is not None:
            reprs = np.stack([q if q is not None else self.no_query for _, q, _ in requests])
        items = [i for _, _, i in requests]
        probs = self.bundle.ctr.run(None, ctr_inputs(rows, reprs, items))[0]  # (N,)
        return np.split(probs, np.cumsum([len(i) for i in items])[:-1])


def _cached(value: bytes | None, version: bytes) -> np.ndarray | None:
    if value is None:
        return None
    stored_version, vector = unpack_query_repr(value)
    return vector if stored_version == version else None


def _powers_of_two(limit: int) -> list[int]:
    sizes, size = [], 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return [*sizes, limit]


def now_ms() -> int:
    return int(time.time() * 1000)
