"""One Score request end to end: Redis read -> encoder micro-batch -> CTR micro-batch.

The budget (min(configured budget, gRPC deadline)) bounds the whole call (DESIGN.md
"Serving behaviour"):
1. one pipelined Redis round trip for the user's histories, profile and cached vector,
   within `redis_share` of the budget;
2. the query representation: the cached one when the history (and its age buckets) is
   unchanged since the last encode, the learned "no query" vector when the user has no
   query before t, otherwise the encoder micro-batcher, until `encoder_share` of the
   budget has passed;
3. the CTR micro-batcher scores the request's candidates together with other requests',
   within what is left of the budget.
Every stage degrades instead of failing or answering late, with stable reason codes
(`service.inference.degraded`): a late or failed Redis read or encoder scores the request
without the query representation (the "no query" vector; without Redis also without click
history); a CTR stage that cannot finish in time answers with each item's prior, the
model's score for a user without history, computed once per model at load
(`item_priors`): at once when the CTR queue's expected wait exceeds the time left
(`ctr_overloaded`), at the budget when the call does not finish (`ctr_timeout`). A full
queue (`max_queue` requests waiting) is overload, not lateness: RESOURCE_EXHAUSTED.

How a call on the event loop is bounded (the CPU default, where ONNX Runtime runs on the
loop and cannot be interrupted): a call waits on its own timer (`deadline.finish_by`);
the batcher starts a model call only for requests whose caller still waits and admits a
request only when its expected wait fits the time left; so a request is answered at the
latest one model call (the one running when its timer is due) after its budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from queryrec.features.bundle_format import CTR_USER_FILE, ENCODER_FILE
from queryrec.features.model_inputs import ModelInputs
from service.deadline import finish_by
from service.errors import BundleError, Overloaded, QueueFull, StateUnavailable
from service.inference.batcher import BatchObserver, MicroBatcher
from service.inference.bundle import Bundle
from service.inference.degraded import Degraded
from service.inference.features import Encoded, FeatureBuilder, UserRow, split_encoded
from service.logs import event, limited_event
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings
from service.state.keys import unpack_query_repr
from service.state.store import LATE, StateStore, UserState

RESPONSE_MARGIN_S = 0.005
"""Kept back from the budget: the model call that may be running on the loop when a
call's timer is due (about 1 ms at 100 candidates on this machine class, more on a busy
one), serialising and sending the answer, and the client reading it on a machine it
shares (the soak of docs/BENCHMARKS.md loses calls to the client's deadline that the
server answered within its budget)."""
GPU_CTR_MAX_PAIRS = 4096
"""Pairs per CTR call with CUDA when `ctr_max_pairs` is not set."""
PRIOR_CHUNK = 4096
"""Items per CTR call when the items' priors are computed."""
PRIORS_LOG_S = 1.0
"""Computing the priors takes at least this long: one log line says so."""


@dataclass
class ScoreResult:
    scores: np.ndarray  # (N,) float32 P(click), request order
    degraded: bool = False
    reasons: list[str] = field(default_factory=list)  # Degraded codes


@dataclass
class QueryPathCounts:
    """How each request got its query vector (tests read them; metrics count them too)."""

    cache_hits: int = 0
    encoded: int = 0
    no_query: int = 0
    user_sides: int = 0  # user sides computed by the split CTR graph's user graph


def runs_on_loop(settings: ServiceSettings, bundle: Bundle) -> bool:
    """Whether model calls run on the event loop (`inference_on`; auto: unless CUDA)."""
    if settings.inference_on == "auto":
        return not bundle.on_gpu
    return settings.inference_on == "loop"


def ctr_max_pairs(settings: ServiceSettings, bundle: Bundle) -> int:
    """Pairs per CTR call: the setting, else 4096 with CUDA and 1 on the CPU, where one
    call per request is cheaper per pair than a merged call (the per-pair gathers of a
    merged batch leave the cache; docs/BENCHMARKS.md)."""
    if settings.ctr_max_pairs is not None:
        return settings.ctr_max_pairs
    return GPU_CTR_MAX_PAIRS if bundle.on_gpu else 1


def encoder_version(bundle: Bundle) -> str:
    """What a cached value depends on: the encoder graph and the word id map (the history
    version digests word indices), and with the split CTR graph its user side graph.
    Re-exporting only the CTR head of a bundle without the split keeps it."""
    files = bundle.manifest["files"]
    key = f"{files.get(ENCODER_FILE)}:{files.get('maps/words.parquet')}"
    if CTR_USER_FILE in files:
        key += f":{files[CTR_USER_FILE]}"
    return f"enc-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def serves_split(bundle: Bundle) -> bool:
    """Whether the service scores with the split CTR graph: the bundle has it and an
    encoder (whose cached outputs the user side is cached beside; without one, ctr.onnx)."""
    return (
        bundle.ctr_user is not None and bundle.ctr_pair is not None and bundle.encoder is not None
    )


class Scorer:
    """The scoring pipeline over one bundle and one Redis state.

    A reload builds a second Scorer beside this one; `retire()` lets the calls already in
    this one finish before its batchers stop.
    """

    def __init__(
        self,
        bundle: Bundle,
        state: StateStore,
        settings: ServiceSettings,
        metrics: ServiceMetrics | None = None,
        observer: BatchObserver | None = None,
    ):
        self.bundle, self.state, self.settings = bundle, state, settings
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        self.features = FeatureBuilder.for_bundle(bundle)
        self.counts = QueryPathCounts()
        self.encoder_version = encoder_version(bundle)
        self._background: set[asyncio.Task[None]] = set()
        # A single-node Redis read that outlived its share is left to finish (not
        # cancelled: a cancelled command costs its connection, and reconnecting to a
        # stopped Redis costs every call a connect); until it ends, calls do not read
        # Redis and degrade at once (redis_timeout). A cluster has per-node timeouts.
        self._cancel_late = state.cancel_late_reads
        self._late_read: asyncio.Future[list[UserState]] | None = None
        self._active = 0  # Score calls inside this scorer now
        self._idle: asyncio.Event | None = None  # set when retiring and no call is active
        graphs = bundle.manifest["graphs"]
        self.encoder_outputs: list[str] = (
            list(graphs["query_encoder"]["outputs"]) if "query_encoder" in graphs else []
        )
        self.no_query: Encoded | None = None  # the encoder outputs of a user without a search
        if bundle.encoder is not None:
            self.no_query = self._encode_batch([self._empty_row()])[0]
        # The split CTR graph: the user side's outputs and each one's shape for one user.
        self.split = serves_split(bundle)
        self.side_names: list[str] = list(graphs["ctr_user"]["outputs"]) if self.split else []
        self._side_shapes: dict[str, tuple[int, ...]] = {}
        if self.split:
            assert self.no_query is not None
            empty = self._user_side_batch([self._empty_row()], [self.no_query])[0]
            self._side_shapes = {name: value.shape for name, value in empty.items()}
        self.item_priors = self._item_priors()
        on_loop = runs_on_loop(settings, bundle)
        self.ctr_max_pairs = ctr_max_pairs(settings, bundle)
        self.encoder: MicroBatcher[UserRow, Encoded] = MicroBatcher(
            "encoder",
            self._encode_batch,
            max_size=settings.encoder_max_batch,
            max_delay_s=settings.encoder_max_delay_ms / 1e3,
            max_queue=settings.max_queue,
            observer=observer,
            on_loop=on_loop,
        )
        self.ctr: MicroBatcher[tuple[UserRow, Encoded | None, np.ndarray], np.ndarray] = (
            MicroBatcher(
                "ctr",
                self._ctr_batch,
                max_size=self.ctr_max_pairs,
                max_delay_s=settings.ctr_max_delay_ms / 1e3,
                max_queue=settings.max_queue,
                observer=observer,
                on_loop=on_loop,
            )
        )

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    def start(self) -> None:
        self.encoder.start()
        self.ctr.start()

    async def stop(self) -> None:
        """Stop the batchers and wait for the background cache writes."""
        await self.encoder.stop()
        await self.ctr.stop()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def retire(self, grace_s: float) -> None:
        """Stop once the calls already inside have finished (at most `grace_s`)."""
        self._idle = asyncio.Event()
        if self._active == 0:
            self._idle.set()
        try:
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        except TimeoutError:
            event("retire_timeout", logging.WARNING, model_version=self.model_version)
        await self.stop()

    def _item_priors(self) -> np.ndarray:
        """(n_items,) float32: every item's score for a user without history, query or
        profile (the empty row at hour 0), the CTR stage's fallback. One CTR call per
        `PRIOR_CHUNK` items, once per model (at start and on reload)."""
        began = time.perf_counter()
        count = int(self.bundle.manifest["vocab_sizes"]["items"])
        row = self._empty_row()
        encoded = None if self.no_query is None else [self.no_query]
        chunks = [
            self.bundle.ctr.run(None, self.features.ctr_feed([row], encoded, [indices]))[0]
            for indices in np.array_split(
                np.arange(count, dtype=np.int64), max(1, -(-count // PRIOR_CHUNK))
            )
        ]
        priors = np.concatenate(chunks).astype(np.float32)
        seconds = time.perf_counter() - began
        if seconds >= PRIORS_LOG_S:  # millions of items: say where the start-up time went
            event("item_priors", items=count, seconds=round(seconds, 1))
        return priors

    def _empty_row(self) -> UserRow:
        """A request's row without any history (warm-up and the "no query" outputs)."""
        slots = self.features.lengths.queries
        return UserRow(self._filled_inputs(1, slots, 0), query_count=0, history_version=b"")

    def _filled_inputs(self, users: int, slots: int, value: int) -> ModelInputs[np.ndarray]:
        """User rows whose every input is `value` (0: no history; 1: every slot filled,
        the warm-up's shapes), `slots` query slots, no candidates."""
        lengths, reads = self.features.lengths, self.features.reads

        def full(*shape: int) -> np.ndarray:
            return np.full(shape, value, dtype=np.int64)

        return ModelInputs(
            user=full(users),
            hour=full(users),
            profile=full(users, len(self.features.profile_fields)),
            click_history=full(users, lengths.clicks),
            query_tokens=full(users, slots, lengths.tokens),
            query_age=full(users, slots),
            item=full(0),
            query_clicks=(
                full(users, slots, lengths.clicks_per_query) if "query_clicks" in reads else None
            ),
            query_click_source=full(users, slots) if "query_click_source" in reads else None,
            query_minutes=full(users, slots) if "query_minutes" in reads else None,
            click_minutes=full(users, lengths.clicks) if "click_minutes" in reads else None,
        )

    def warm_up(self) -> None:
        """Run every batch-shape bucket once (ORT allocates per new shape): encoder
        batches 1, 2, 4, ... up to the max at every history length, CTR pair counts
        1, 2, 4, ... up to the larger of the batch cap and the request cap, over 1 and
        several user rows. A graph that fails here
        is a bundle problem: BundleError with one line."""
        try:
            self._warm_up()
        except Exception as error:
            raise BundleError(
                f"{self.bundle.root}: warm-up failed ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else 'no detail'})"
            ) from None

    def _warm_up(self) -> None:
        lengths = self.features.lengths
        if self.bundle.encoder is not None:
            for users in _powers_of_two(self.settings.encoder_max_batch):
                for queries in range(1, lengths.queries + 1):
                    rows = [UserRow(self._filled_inputs(1, queries, 1), queries, b"")] * users
                    self.bundle.encoder.run(None, self.features.encoder_feed(rows))
        row = self._empty_row()
        for pairs in _powers_of_two(max(self.ctr_max_pairs, self.settings.max_candidates)):
            for users in sorted({1, min(pairs, 8)}):
                items = np.array_split(np.ones(pairs, dtype=np.int64), users)
                encoded = None if self.no_query is None else [self.no_query] * users
                if self.split:
                    assert encoded is not None
                    self._ctr_batch(
                        [(row, dict(e), i) for e, i in zip(encoded, items, strict=True)]
                    )
                    continue
                self.bundle.ctr.run(None, self.features.ctr_feed([row] * users, encoded, items))

    async def score(
        self, raw_user: int, raw_items: list[int], request_ms: int, budget_s: float
    ) -> ScoreResult:
        """Scores in request order, within `budget_s` from now (the whole call)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._active += 1
        try:
            items = self.bundle.items(np.asarray(raw_items, dtype=np.int64))
            state, reasons = await self._read_state(raw_user, budget_s * self.settings.redis_share)
            row = self.features.user_row(raw_user, state, request_ms)
            encoded = self.no_query  # None: a model without an encoder graph
            if encoded is not None and not reasons:  # without Redis: no history, "no query"
                encoder_until = start + budget_s * self.settings.encoder_share
                encoded = await self._encoded(raw_user, row, state, encoder_until, reasons)
            fresh_side = False
            if self.split:  # the CTR batch adds the user side to this request's own dict
                assert encoded is not None
                encoded = dict(encoded)
                fresh_side = self.side_names[0] not in encoded
            scores = await self._ctr(
                row, encoded, items, start + budget_s - RESPONSE_MARGIN_S, reasons
            )
            if fresh_side and not reasons and encoded is not None and self.side_names[0] in encoded:
                self._cache_in_background(raw_user, row, encoded)
        finally:
            self._active -= 1
            if self._active == 0 and self._idle is not None:
                self._idle.set()
        for reason in reasons:
            self.metrics.degraded.labels(reason).inc()
        return ScoreResult(scores, bool(reasons), reasons)

    async def _read_state(self, raw_user: int, limit_s: float) -> tuple[UserState, list[str]]:
        """The user's state within `limit_s`; an empty state and the reason code when Redis
        is late or down (the detail is in the Redis metrics and log)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        if self._late_read is not None:
            if not self._late_read.done():  # Redis is late: no new read until it answers
                self.metrics.stage.labels("redis").observe(0.0)
                return UserState(), [Degraded.REDIS_TIMEOUT]
            self._late_read = None
        read = asyncio.ensure_future(self.state.read([raw_user], self._cache_version))
        try:
            # Not asyncio.timeout: a lost cancellation must not hold the call (deadline.py)
            (state,) = await finish_by(read, began + limit_s, cancel_late=self._cancel_late)
        except TimeoutError:
            if not self._cancel_late:
                self._late_read = read
            return UserState(), [Degraded.REDIS_TIMEOUT]
        except StateUnavailable:
            return UserState(), [Degraded.REDIS_UNAVAILABLE]
        finally:
            self.metrics.stage.labels("redis").observe(loop.time() - began)
        if state.unavailable is not None:  # cluster: this user's master failed, not all
            late = state.unavailable == LATE
            return UserState(), [Degraded.REDIS_TIMEOUT if late else Degraded.REDIS_UNAVAILABLE]
        return state, []

    @property
    def _cache_version(self) -> str | None:
        """The encoder version the query-vector cache is keyed by; None: cache off."""
        return self.encoder_version if self.settings.cache_query_repr else None

    async def _encoded(
        self, raw_user: int, row: UserRow, state: UserState, until: float, reasons: list[str]
    ) -> Encoded:
        """The encoder outputs for the request: "no query" without searches, the cached
        ones when the history is unchanged, else the encoder micro-batch until `until`
        (loop time; late, refused or failed: "no query" and a reason code appended to
        `reasons`)."""
        assert self.no_query is not None
        # Without the split a user without searches has nothing cached: "no query" at once.
        if row.query_count == 0 and not self.split:
            self.counts.no_query += 1
            return self.no_query
        cached = self._from_cache(state.cached_query_repr, row.history_version)
        if cached is not None:
            self.counts.cache_hits += 1
            self.metrics.cache_hits.inc()
            return cached
        if row.query_count == 0:  # the user side is computed by the CTR stage
            self.counts.no_query += 1
            return self.no_query
        self.metrics.cache_misses.inc()
        try:
            encoded = await finish_by(self.encoder.enqueue(row, deadline=until), until)
        except Overloaded:
            reasons.append(Degraded.ENCODER_OVERLOADED)
            return self.no_query
        except TimeoutError:
            reasons.append(Degraded.ENCODER_TIMEOUT)
            return self.no_query
        except Exception as error:  # the graph raised: degrade, and say why in the log
            limited_event("encoder_failed", logging.ERROR, error=f"{type(error).__name__}: {error}")
            reasons.append(Degraded.ENCODER_FAILED)
            return self.no_query
        self.counts.encoded += 1
        if not self.split:  # with the split: cached with the user side, after the CTR stage
            self._cache_in_background(raw_user, row, encoded)
        return encoded

    @property
    def _width(self) -> int:
        """d: the width of the query representation."""
        assert self.no_query is not None
        return len(self.no_query["query_repr"])

    def _cache_in_background(self, raw_user: int, row: UserRow, encoded: Encoded) -> None:
        """Store the new outputs without making the request wait for the write: the query
        vector, then the states of the request's searches or (split CTR graph) the user
        side in the user graph's output order, as one float32 vector."""
        version = self._cache_version
        if version is None:
            return
        names = [*self.encoder_outputs, *self.side_names]
        flat = np.concatenate([np.ravel(encoded[name]) for name in names])
        task = asyncio.get_running_loop().create_task(
            self.state.cache_query_reprs(version, [(raw_user, row.history_version, flat)])
        )
        self._background.add(task)  # kept alive until done; awaited by stop()
        task.add_done_callback(self._background.discard)

    async def _ctr(
        self,
        row: UserRow,
        encoded: Encoded | None,
        items: np.ndarray,
        deadline: float,
        reasons: list[str],
    ) -> np.ndarray:
        """The CTR micro-batch, done by `deadline` (loop time); the items' priors and a
        reason code appended to `reasons` when its expected wait ends later (at once) or
        it does not finish in time (at the deadline). QueueFull (its queue holds
        `max_queue` requests) propagates: that is overload, answered RESOURCE_EXHAUSTED."""
        try:
            pending = self.ctr.enqueue((row, encoded, items), units=len(items), deadline=deadline)
            return await finish_by(pending, deadline)
        except QueueFull:  # overload: RESOURCE_EXHAUSTED, so that callers back off
            raise
        except Overloaded:
            reasons.append(Degraded.CTR_OVERLOADED)
        except TimeoutError:
            reasons.append(Degraded.CTR_TIMEOUT)
        return self.item_priors[items]

    def _encode_batch(self, rows: list[UserRow]) -> Sequence[Encoded]:
        assert self.bundle.encoder is not None
        outputs = self.bundle.encoder.run(None, self.features.encoder_feed(rows))
        return split_encoded(outputs, self.encoder_outputs, rows)

    def _ctr_batch(
        self, requests: list[tuple[UserRow, Encoded | None, np.ndarray]]
    ) -> Sequence[np.ndarray]:
        rows = [r for r, _, _ in requests]
        encoded = None
        if self.no_query is not None:
            encoded = [e if e is not None else self.no_query for _, e, _ in requests]
        items = [i for _, _, i in requests]
        if self.split:
            assert encoded is not None and self.bundle.ctr_pair is not None
            missing = [i for i, e in enumerate(encoded) if self.side_names[0] not in e]
            if missing:  # one user-graph call for the requests whose side is not cached
                sides = self._user_side_batch(
                    [rows[i] for i in missing], [encoded[i] for i in missing]
                )
                for i, side in zip(missing, sides, strict=True):
                    encoded[i].update(side)
                self.counts.user_sides += len(missing)
            feed = self.features.pair_feed(rows, encoded, items)
            probs = self.bundle.ctr_pair.run(None, feed)[0]
        else:
            probs = self.bundle.ctr.run(None, self.features.ctr_feed(rows, encoded, items))[0]
        return np.split(probs, np.cumsum([len(i) for i in items])[:-1])

    def _user_side_batch(self, rows: list[UserRow], encoded: list[Encoded]) -> list[Encoded]:
        """The split CTR graph's user side of each row (one `ctr_user.onnx` call)."""
        assert self.bundle.ctr_user is not None
        outputs = self.bundle.ctr_user.run(None, self.features.user_feed(rows, encoded))
        return [
            {name: value[i] for name, value in zip(self.side_names, outputs, strict=True)}
            for i in range(len(rows))
        ]

    def _from_cache(self, value: bytes | None, version: bytes) -> Encoded | None:
        """A cached value of this history version -> what it holds: the query vector (d,),
        then the states of the request's searches (n, d) when stored or (split CTR graph)
        the user side; None when absent, of another version or of another layout."""
        if value is None:
            return None
        stored_version, vector = unpack_query_repr(value)
        if stored_version != version:
            return None
        width = self._width
        cached: Encoded = {"query_repr": vector[:width]}
        if not self.split:
            if len(vector) > width:
                cached["query_states"] = vector[width:].reshape(-1, width)
            return cached
        sizes = [int(np.prod(shape)) for shape in self._side_shapes.values()]
        if len(vector) != width + sum(sizes):  # written before the split: recompute
            return None
        offset = width
        for (name, shape), size in zip(self._side_shapes.items(), sizes, strict=True):
            cached[name] = vector[offset : offset + size].reshape(shape)
            offset += size
        return cached


def _powers_of_two(limit: int) -> list[int]:
    sizes, size = [], 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return [*sizes, limit]


def now_ms() -> int:
    return int(time.time() * 1000)
