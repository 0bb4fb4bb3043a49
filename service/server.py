"""The gRPC server (`grpc.aio`): Scorer API, health, reflection; built by a factory.

`create_server(settings)` loads and verifies the bundle, connects to Redis (or starts an
embedded one when no URL is configured), binds (port 0 picks a free port: tests do) and
returns a `ScoringServer`; `await server.start()` warms every batch shape and only then
sets health to SERVING. Every domain error becomes a status code: bad input
INVALID_ARGUMENT, a full queue RESOURCE_EXHAUSTED, Redis down on a write UNAVAILABLE;
the server keeps serving after each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.api import scorer_pb2, scorer_pb2_grpc
from service.bundle import Bundle, load_bundle
from service.embedded_redis import EmbeddedRedis
from service.errors import Overloaded, SettingsError, StateUnavailable
from service.scoring import Scorer, now_ms
from service.settings import ServiceSettings
from service.state import HistoryCaps, RedisState

log = logging.getLogger("queryrec.serve")
SERVICE_NAME = scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name
INT64_MAX = (1 << 63) - 1


class ScorerService(scorer_pb2_grpc.ScorerServicer):
    """The three RPCs of DESIGN.md "gRPC API"."""

    def __init__(self, scorer: Scorer, settings: ServiceSettings):
        self.scorer, self.settings = scorer, settings

    async def Score(
        self, request: scorer_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.ScoreResponse:
        items = list(request.item_ids)
        await _validate(
            context,
            request.user_id,
            ("item_ids", items, self.settings.max_candidates, "send at least one candidate"),
            ("request_time_ms", request.request_time_ms),
        )
        budget = self.settings.budget_ms / 1e3
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        try:
            result = await self.scorer.score(
                request.user_id, items, request.request_time_ms or now_ms(), budget, remaining
            )
        except Overloaded as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "scoring did not finish")
        return scorer_pb2.ScoreResponse(
            scores=result.scores.tolist(),
            model_version=self.scorer.model_version,
            degraded=result.degraded,
            degraded_reasons=result.reasons,
        )

    async def RecordQuery(
        self, request: scorer_pb2.RecordQueryRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.RecordQueryResponse:
        tokens = list(request.token_ids)
        await _validate(
            context,
            request.user_id,
            # A search without words is a history slot, as offline (queryrec.features).
            ("token_ids", tokens, self.settings.max_query_tokens, None),
            ("timestamp_ms", request.timestamp_ms),
        )
        kept = await _stored(
            context,
            self.scorer.state.append_query(
                request.user_id, request.timestamp_ms or now_ms(), tokens
            ),
        )
        return scorer_pb2.RecordQueryResponse(history_length=kept)

    async def RecordClicks(
        self, request: scorer_pb2.RecordClicksRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.RecordClicksResponse:
        items = list(request.item_ids)
        await _validate(
            context,
            request.user_id,
            ("item_ids", items, self.settings.max_clicks_per_call, "send at least one click"),
            ("timestamp_ms", request.timestamp_ms),
        )
        kept = await _stored(
            context,
            self.scorer.state.append_clicks(
                request.user_id, request.timestamp_ms or now_ms(), items
            ),
        )
        return scorer_pb2.RecordClicksResponse(history_length=kept)


async def _validate(
    context: grpc.aio.ServicerContext,
    user_id: int,
    ids: tuple[str, list[int], int, str | None],
    time_field: tuple[str, int],
) -> None:
    """INVALID_ARGUMENT, with the field and what is wrong, for a bad request. `ids`:
    (field, values, most entries, what to send when it is empty; None: may be empty)."""
    field_name, values, maximum, need = ids
    problem = None
    if user_id <= 0:
        problem = f"user_id must be a positive id, not {user_id}"
    elif not values and need is not None:
        problem = f"{field_name} is empty: {need}"
    elif len(values) > maximum:
        problem = f"{field_name} has {len(values)} entries; the maximum is {maximum}"
    elif values and min(values) < 0:
        problem = f"{field_name} holds a negative id"
    elif time_field[1] < 0:
        problem = f"{time_field[0]} is negative"
    if problem is not None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)


async def _stored(context: grpc.aio.ServicerContext, write: Awaitable[int]) -> int:
    """The write's result; UNAVAILABLE when Redis did not store it."""
    try:
        return await write
    except StateUnavailable as error:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        raise  # abort raises; this keeps the type checker informed


@dataclass
class ScoringServer:
    """A bound, not yet started server and everything it owns."""

    server: grpc.aio.Server
    port: int
    scorer: Scorer
    health: health.HealthServicer
    embedded_redis: EmbeddedRedis | None = None
    _stopped: bool = field(default=False, init=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start serving; health turns SERVING once every batch shape is warmed."""
        await self.listen()
        await self.warm_up_and_serve()

    async def listen(self) -> None:
        """Accept calls (health answers NOT_SERVING; the Scorer RPCs already work)."""
        await self.server.start()
        self.scorer.start()

    async def warm_up_and_serve(self) -> None:
        """Run every batch shape once, then report SERVING."""
        await asyncio.get_running_loop().run_in_executor(None, self.scorer.warm_up)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on port %d", self.scorer.model_version, self.port)

    async def stop(self, grace_s: float = 2.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)
        await self.scorer.stop()
        await self.scorer.state.close()
        if self.embedded_redis is not None:
            self.embedded_redis.stop()


async def create_server(settings: ServiceSettings, bundle: Bundle | None = None) -> ScoringServer:
    """Load the bundle, connect Redis, bind the port; health NOT_SERVING until `start()`."""
    if bundle is None:
        if settings.bundle is None:
            raise SettingsError("no model bundle: set QUERYREC_BUNDLE or pass --bundle")
        bundle = load_bundle(
            settings.bundle, device=settings.device, threads=settings.inference_threads
        )
    lengths = bundle.manifest["max_lengths"]
    caps = HistoryCaps(
        queries=settings.query_history_cap or int(lengths["query_history"]),
        clicks=settings.click_history_cap or int(lengths["click_history"]),
        ttl_s=settings.state_ttl_s,
    )
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis()
        embedded.start()
        url = embedded.url
    state = RedisState(url, caps)
    try:
        await state.ping()
    except StateUnavailable:
        if embedded is not None:
            embedded.stop()
        raise
    scorer = Scorer(bundle, state, settings)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
    )
    scorer_pb2_grpc.add_ScorerServicer_to_server(ScorerService(scorer, settings), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise SettingsError(f"cannot bind {settings.host}:{settings.port}")
    return ScoringServer(server, port, scorer, health_servicer, embedded)
