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
class StageTimes:
    """Wall time per stage, summed over requests (for the benchmark and metrics)."""

    requests: int = 0
    redis_s: float = 0.0
    encoder_s: float = 0.0
    ctr_s: float = 0.0
    cache_hits: int = 0
    encoded: int = 0
    no_query: int = 0
    degraded: int = 0


class Scorer:
    """The scoring pipeline over one bundle and one Redis state."""

    def __init__(self, bundle: Bundle, state: RedisState, settings: ServiceSettings):
        self.bundle, self.state, self.settings = bundle, state, settings
        self.features = FeatureBuilder(bundle)
        self.times = StageTimes()
        self._background: set[asyncio.Task[None]] = set()
        self.no_query: np.ndarray | None = None
        if bundle.encoder is not None:
            empty = encoder_inputs(
                [(np.zeros((0, self.features.query_tokens), np.int64), np.zeros(0, np.int64))]
            )
            self.no_query = bundle.encoder.run(None, empty)[0][0]  # (d,)
        self.encoder: MicroBatcher[tuple[np.ndarray, np.ndarray], np.ndarray] = MicroBatcher(
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

    def warm_up(self) -> None:
        """Run every batch-shape bucket once (ORT allocates per new shape): encoder
        batches 1, 2, 4, ... up to the max at every history length, CTR pair counts
        1, 2, 4, ... up to the max over 1 and several user rows."""
        h, length, tokens = (
            self.features.click_history,
            self.features.query_history,
            self.features.query_tokens,
        )
        if self.bundle.encoder is not None:
            for users in _powers_of_two(self.settings.encoder_max_batch):
                for queries in range(1, length + 1):
                    feed = {
                        "query_tokens": np.ones((users, queries, tokens), dtype=np.int64),
                        "query_age": np.ones((users, queries), dtype=np.int64),
                    }
                    self.bundle.encoder.run(None, feed)
        row = UserRow(
            0,
            0,
            np.zeros(len(self.features.profile_fields), np.int64),
            np.zeros(h, np.int64),
            np.zeros((0, tokens), np.int64),
            np.zeros(0, np.int64),
            b"",
        )
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
        loop = asyncio.get_running_loop()
        start = loop.time()
        reasons: list[str] = []
        items = self.bundle.items(np.asarray(raw_items, dtype=np.int64))
        cache_version = self.model_version if self.settings.cache_query_repr else None
        try:
            # (asyncio.timeout, not wait_for: no extra task per stage)
            async with asyncio.timeout(budget_s * self.settings.redis_share):
                (state,) = await self.state.read([raw_user], cache_version)
        except TimeoutError:
            state, reasons = UserState(), ["redis: no answer within its share of the budget"]
        except StateUnavailable as error:
            state, reasons = UserState(), [f"redis: {error}"]
        after_redis = loop.time()
        row = self.features.user_row(raw_user, state, request_ms)
        query = None
        if self.no_query is not None:
            query = self.no_query
            if reasons:
                pass  # no history to encode: score with the "no query" input
            elif len(row.query_age) == 0:
                self.times.no_query += 1
            elif (cached := _cached(state.cached_query_repr, row.history_version)) is not None:
                query = cached
                self.times.cache_hits += 1
            else:
                share = start + budget_s * self.settings.encoder_share - loop.time()
                try:
                    async with asyncio.timeout(max(share, 0.0)):
                        query = await self.encoder.submit((row.query_tokens, row.query_age))
                    self.times.encoded += 1
                    if cache_version is not None:
                        task = loop.create_task(
                            self.state.cache_query_reprs(
                                cache_version, [(raw_user, row.history_version, query)]
                            )
                        )
                        self._background.add(task)  # kept alive until done
                        task.add_done_callback(self._background.discard)
                except TimeoutError:
                    query = self.no_query
                    reasons.append("encoder: no answer within its share of the budget")
        after_encoder = loop.time()
        # The CTR call is the answer itself: it may use the rest of the gRPC deadline (or,
        # without one, `ctr_timeout_ms`); past that the request fails rather than hangs.
        limit = self.settings.ctr_timeout_ms / 1e3
        if deadline_s is not None:
            limit = max(start + deadline_s - loop.time(), 0.0)
        async with asyncio.timeout(limit):
            scores = await self.ctr.submit((row, query, items), units=len(items))
        done = loop.time()
        t = self.times
        t.requests += 1
        t.redis_s += after_redis - start
        t.encoder_s += after_encoder - after_redis
        t.ctr_s += done - after_encoder
        t.degraded += bool(reasons)
        return ScoreResult(scores, bool(reasons), reasons)

    def _encode_batch(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> Sequence[np.ndarray]:
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
