"""The gRPC server (`grpc.aio`): Scorer API, health, reflection, admin HTTP; a factory.

`create_server(settings)` loads and verifies the bundle, connects to Redis (or starts an
embedded one when no URL is configured), binds (port 0 picks a free port: tests do) and
returns a `ScoringServer`; `await server.start()` starts the admin API, warms every batch
shape and only then sets health to SERVING. Every refusal is a status code with a
message (`service.transport.calls`); a request whose bytes do not parse is INVALID_ARGUMENT; the
server keeps serving after each.

Shutdown (`drain()`, on SIGTERM): health NOT_SERVING and /readyz 503 first, keep serving
for `drain_delay_s`, then refuse new calls with UNAVAILABLE, let in-flight calls finish
within `shutdown_grace_s`, end health Watch streams with OK, stop the batchers (awaiting
the background cache writes), the admin API, Redis and the embedded Redis.

Why refused calls are held until the listener closes: grpc core cancels (CANCELLED) every
call that reaches a server after its shutdown began and before the client has read the
GOAWAY, and every call not yet handed to the application (measured: about one call per
busy client connection at each close). A refused call answered at once is retried at once
on the same connection and is then such a call. So a call that arrives once new calls are
refused is held (`_hold`) until the shutdown has begun and its GOAWAY is on the wire, and
only then answered UNAVAILABLE: the client retries elsewhere, never into the close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.api import scorer_pb2 as pb
from service.deadline import finish_by
from service.errors import BundleError, Rejected, SettingsError, StateUnavailable
from service.inference.bundle import Bundle
from service.inference.bundle_loader import load_bundle
from service.inference.model_holder import ModelHolder, ReloadResult
from service.inference.scoring import Scorer
from service.logs import DegradedBursts, Summaries, event, limited_event
from service.metrics import MetricsObserver, ServiceMetrics
from service.settings import ServiceSettings
from service.state.by_url import open_state
from service.state.embedded_redis import EmbeddedRedis
from service.state.store import HistoryCaps, StateStore
from service.transport.admin import AdminServer, build_admin_app
from service.transport.auth import api_token, client_ca, interceptors, is_loopback, read_token
from service.transport.calls import GRPC_CODES, Calls
from service.transport.health import NOT_SERVING, SERVING, Health

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Scorer"].full_name
HEALTH_SERVICE = "grpc.health.v1.Health"
WAITING_FOR_FLEET = "waiting_for_fleet"  # a held worker's /readyz reason (`release`)
READY_PING_S = 0.25  # how long /readyz waits for Redis's PING
# After the drain delay, new calls are refused with UNAVAILABLE for at least this long
# before the listener closes: calls already on the wire then get UNAVAILABLE from the
# handler instead of being cut (CANCELLED) by the transport's shutdown.
REFUSAL_WINDOW_S = 0.5
HOLD_MARGIN_S = 0.005  # a held call is answered this long before its deadline at the latest


class _Unparsable:
    """Stands in for a request whose bytes did not parse (answered INVALID_ARGUMENT)."""


def _lenient(message_type: type[Message]) -> Callable[[bytes], Message | _Unparsable]:
    def parse(data: bytes) -> Message | _Unparsable:
        try:
            return message_type.FromString(data)
        except (DecodeError, RuntimeError, ValueError):
            return _Unparsable()

    return parse


@dataclass
class ScoringServer:
    """A bound, not yet started server and everything it owns."""

    server: grpc.aio.Server
    port: int
    settings: ServiceSettings
    holder: ModelHolder
    calls: Calls
    state: StateStore
    health: Health
    metrics: ServiceMetrics
    embedded_redis: EmbeddedRedis | None = None
    admin: AdminServer | None = None
    accepting: bool = True  # False: new calls get UNAVAILABLE
    draining: bool = False  # health NOT_SERVING, /readyz 503, still serving
    warmed: bool = False
    # A worker of `serve --workers N`: warmed, health stays NOT_SERVING (and /readyz says
    # `waiting_for_fleet`) until its supervisor says every worker is ready (`release`).
    held: bool = False
    _in_flight: int = field(default=0, init=False)  # calls being answered (held ones not)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _closing: asyncio.Event = field(default_factory=asyncio.Event, init=False)  # GOAWAY sent
    _stopped: bool = field(default=False, init=False)
    summaries: Summaries = field(init=False)  # degraded answers, suppressed lines: on a timer

    def __post_init__(self) -> None:
        self.summaries = Summaries(self.calls.bursts, self.settings.log_summary_interval_s)

    @property
    def scorer(self) -> Scorer:
        """The scorer serving new calls now (follows reloads)."""
        return self.holder.current

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start serving; health turns SERVING once every batch shape is warmed."""
        await self.listen()
        await self.warm_up_and_serve()

    async def listen(self) -> None:
        """Accept calls (health answers NOT_SERVING; the Scorer RPCs already work) and
        start the admin API (/healthz answers, /readyz says warming up)."""
        await self.server.start()
        self.scorer.start()
        self.summaries.start()
        if self.admin is not None:
            await self.admin.start()
        event(
            "listening",
            port=self.port,
            admin_port=self.admin.port if self.admin else None,
            model_version=self.scorer.model_version,
            tls=self.settings.tls_cert_file is not None,
        )

    async def warm_up_and_serve(self) -> None:
        """Run every batch shape once, then report SERVING."""
        began = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, self.scorer.warm_up)
        self.warmed = True
        if not self.draining and not self.held:
            await self.health.set_all(SERVING)
            self.metrics.ready.set(1)
        event(
            "ready",
            model_version=self.scorer.model_version,
            warm_up_s=round(time.perf_counter() - began, 3),
            **({"held": True} if self.held else {}),  # NOT_SERVING until `release`
        )

    async def release(self) -> None:
        """A held worker: its supervisor says the whole fleet is ready, so report SERVING
        (unless draining). Before this, the supervisor's /readyz already answers 200: a
        load balancer may see /readyz ready a moment before this worker's gRPC health
        says SERVING, never a worker SERVING while the fleet is not ready."""
        self.held = False
        if self.warmed and not self.draining:
            await self.health.set_all(SERVING)
            self.metrics.ready.set(1)

    async def readiness(self) -> dict[str, Any]:
        """/readyz: ready when warmed, not draining and Redis answers; else the reasons.
        `serving_degraded`: the service answers Score, but without Redis's state."""
        reasons = []
        if not self.warmed:
            reasons.append("warming_up")
        if self.held:
            reasons.append(WAITING_FOR_FLEET)
        if self.draining or not self.accepting:
            reasons.append("draining")
        redis_ok = self.state.available  # known down: no PING while it reconnects
        if redis_ok:
            try:
                until = asyncio.get_running_loop().time() + READY_PING_S
                await finish_by(self.state.ping(), until)
            except (TimeoutError, StateUnavailable):
                redis_ok = False
        if not redis_ok:
            reasons.append("redis_unavailable")
        serving = self.warmed and self.accepting
        self.metrics.ready.set(0 if reasons else 1)
        return {
            "ready": not reasons,
            "reasons": reasons,
            "model_version": self.scorer.model_version,
            "serving": serving,
            "serving_degraded": serving and not redis_ok,
        }

    async def reload(self, path: Path | None = None) -> ReloadResult:
        """Zero-downtime reload (`ModelHolder.reload`); health follows the new model."""
        return await self.holder.reload(path)

    async def drain(self) -> None:
        """The SIGTERM path: NOT_SERVING, keep serving `drain_delay_s`, then stop."""
        if self.draining or self._stopped:
            return
        self.draining = True
        self.metrics.ready.set(0)
        await self.health.set_all(NOT_SERVING)
        event("drain_started", drain_delay_s=self.settings.drain_delay_s)
        await asyncio.sleep(self.settings.drain_delay_s)  # load balancers notice meanwhile
        await self.stop(self.settings.shutdown_grace_s)

    async def stop(self, grace_s: float | None = None) -> None:
        """Refuse new calls (UNAVAILABLE), finish in-flight ones within `grace_s`, end
        health streams, stop batchers (background writes awaited), admin and Redis."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self.draining, self.accepting = True, False
        self.metrics.ready.set(0)
        began = time.perf_counter()
        if self._in_flight:
            try:
                async with asyncio.timeout(grace):
                    await self._idle.wait()
            except TimeoutError:
                event("grace_expired", logging.WARNING, in_flight=self._in_flight)
        refused_for = time.perf_counter() - began
        await asyncio.sleep(max(min(REFUSAL_WINDOW_S, grace) - refused_for, 0.0))
        await self.health.close()
        # Shutdown first (GOAWAY to every client), then answer the held calls.
        closing = asyncio.ensure_future(
            self.server.stop(max(grace - (time.perf_counter() - began), 0.1))
        )
        await asyncio.sleep(0)  # the stop has begun: grpc core has queued the GOAWAYs
        self._closing.set()
        await closing
        await self.holder.close()
        await self.summaries.stop()
        if self.admin is not None:
            await self.admin.stop()
        await self.state.close()
        if self.embedded_redis is not None:
            self.embedded_redis.stop()
        event("stopped", seconds=round(time.perf_counter() - began, 3))

    async def _hold(self, remaining_s: float | None) -> None:
        """Wait until the shutdown has begun (GOAWAY sent), at most until shortly before
        the call's deadline (module docstring: why refused calls are held)."""
        if self._closing.is_set():
            return
        if remaining_s is None:
            await self._closing.wait()
            return
        until = asyncio.get_running_loop().time() + remaining_s - HOLD_MARGIN_S
        with contextlib.suppress(TimeoutError):
            await finish_by(self._closing.wait(), until)

    # The gRPC side: one wrapper for every RPC.
    def handler(
        self,
        method: str,
        call: Callable[[Any, float | None], Awaitable[Message]],
        request_type: type[Message],
    ) -> grpc.RpcMethodHandler:
        """The RPC with metrics, drain refusal, a bounded wait for the request message,
        lenient parsing and status mapping.

        Registered as a stream-unary handler (a unary call on the wire is a stream of one
        message) so that the handler itself awaits the message: grpc's own unary path
        leaves a call that half-closes without a message open until the client's
        deadline, never reaching the application. Here such a call is INVALID_ARGUMENT
        at once, and one whose message does not arrive within `receive_timeout_s` is
        INVALID_ARGUMENT then."""
        latency, requests = self.metrics.latency, self.metrics.requests
        in_flight = self.metrics.in_flight

        async def answer(_requests: Any, context: grpc.aio.ServicerContext) -> Message:
            began = time.perf_counter()
            code = grpc.StatusCode.OK
            if not self.accepting:
                code = grpc.StatusCode.UNAVAILABLE
                await self._hold(context.time_remaining())
                requests.labels(method, code.name).inc()
                latency.labels(method, code.name).observe(time.perf_counter() - began)
                await context.abort(code, "the server is shutting down; retry elsewhere")
            in_flight.inc()
            self._in_flight += 1
            self._idle.clear()
            try:
                request = await self._receive(context)
                if isinstance(request, _Unparsable):
                    limited_event("unparsable_request", logging.WARNING, method=method)
                    raise Rejected(
                        "invalid", f"the request does not parse as {request_type.DESCRIPTOR.name}"
                    )
                return await call(request, context.time_remaining())
            except Rejected as rejected:
                code = GRPC_CODES[rejected.kind]
                await context.abort(code, str(rejected))
                raise  # abort raises; this keeps the type checker informed
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # a bug: one line in the log, a plain INTERNAL out
                code = grpc.StatusCode.INTERNAL
                limited_event("rpc_failed", logging.ERROR, method=method, error=repr(error))
                await context.abort(code, "internal error")
                raise
            finally:
                seconds = time.perf_counter() - began
                latency.labels(method, code.name).observe(seconds)
                requests.labels(method, code.name).inc()
                in_flight.dec()
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()

        return grpc.stream_unary_rpc_method_handler(
            answer,
            request_deserializer=_lenient(request_type),
            response_serializer=lambda message: message.SerializeToString(),
        )

    async def _receive(self, context: grpc.aio.ServicerContext) -> Any:
        """The call's one request message, within `receive_timeout_s`; Rejected("invalid")
        when the call ends without one or it does not arrive in time."""
        limit = self.settings.receive_timeout_s
        until = asyncio.get_running_loop().time() + limit
        try:
            request = await finish_by(context.read(), until)
        except TimeoutError:
            raise Rejected("invalid", f"no request message arrived within {limit:g} s") from None
        if request is grpc.aio.EOF:
            raise Rejected("invalid", "the call carried no request message")
        return request


def _server_options(settings: ServiceSettings, reuse_port: bool = False) -> list[tuple[str, int]]:
    """Channel arguments of the server. SO_REUSEPORT only for the workers of
    `serve --workers N` (they bind one port together); one process keeps the port to
    itself, so a second server on the same port fails to bind instead of sharing it."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(max(settings.shutdown_grace_s, 1) * 1000)),
        ("grpc.max_connection_idle_ms", int(settings.max_connection_idle_s * 1000)),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
    ]


def _check_key_pair(chain: Path, key: Path) -> None:
    """SettingsError in one line unless `chain` and `key` are a PEM certificate chain and
    its private key (checked with the standard library before grpc core sees them, which
    would log several non-JSON lines and fail with a traceback)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(chain, key)
    except (ssl.SSLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
        raise SettingsError(
            f"TLS: {chain} and {key} are not a PEM certificate chain and its private key "
            f"(QUERYREC_TLS_CERT_FILE, QUERYREC_TLS_KEY_FILE): {reason}"
        ) from None


def _bind(server: grpc.aio.Server, settings: ServiceSettings) -> int:
    """Bind the gRPC port, over TLS when a certificate is configured, requiring client
    certificates signed by `tls_client_ca_file` when that is set (mutual TLS); -> the port."""
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        port = server.add_insecure_port(address)
    else:
        try:
            chain = settings.tls_cert_file.read_bytes()
            key = settings.tls_key_file.read_bytes()
        except OSError as error:
            raise SettingsError(f"TLS: cannot read {error.filename} ({error.strerror})") from None
        _check_key_pair(settings.tls_cert_file, settings.tls_key_file)
        ca = client_ca(settings)
        credentials = grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
        )
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise SettingsError(f"cannot bind {address}")
    return port


def scorer_factory(
    settings: ServiceSettings,
    state: StateStore,
    metrics: ServiceMetrics,
    observer: MetricsObserver,
) -> Callable[[Path], Scorer]:
    """Blocking: load, verify and warm a Scorer for a bundle (reloads use it)."""

    def build(root: Path) -> Scorer:
        bundle = load_bundle(root, device=settings.device, threads=settings.inference_threads)
        _check_fits(bundle, state.caps)
        scorer = Scorer(bundle, state, settings, metrics, observer)
        scorer.warm_up()
        return scorer

    return build


def _check_fits(bundle: Bundle, caps: HistoryCaps) -> None:
    """A reloaded bundle must not need more history than Redis keeps (caps are set at
    start from the first bundle)."""
    lengths = bundle.manifest["max_lengths"]
    for name, kept in (("query_history", caps.queries), ("click_history", caps.clicks)):
        if int(lengths[name]) > kept:
            raise BundleError(
                f"{bundle.root}: needs {name} {lengths[name]} but Redis keeps {kept}; "
                "restart the service with a larger cap"
            )


async def create_server(
    settings: ServiceSettings, bundle: Bundle | None = None, *, reuse_port: bool = False
) -> ScoringServer:
    """Load the bundle, connect Redis, bind the port; health NOT_SERVING until `start()`.

    `reuse_port`: bind with SO_REUSEPORT, for a worker of `serve --workers N`
    (`service.transport.workers`), which shares its concrete port with the other workers.
    A public bind without authentication fails first, before anything loads
    (`service.transport.auth.api_token`)."""
    token = api_token(settings)
    admin_token = read_token(settings, "admin_token")
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
        search_clicks=settings.max_search_clicks,
    )
    password = settings.secret("redis_password")
    metrics = ServiceMetrics()
    observer = MetricsObserver(metrics)
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis()
        embedded.start()
        url = embedded.url
    state = open_state(
        url,
        caps,
        password=password,
        pool_size=settings.redis_pool_size,
        reconnect_max_s=settings.redis_reconnect_max_s,
    )
    try:
        await state.ping()
        state.report_to(observer)
        scorer = Scorer(bundle, state, settings, metrics, observer)
    except BaseException:
        await state.close()
        if embedded is not None:
            embedded.stop()
        raise
    holder = ModelHolder(
        scorer,
        scorer_factory(settings, state, metrics, observer),
        metrics,
        settings.shutdown_grace_s,
    )
    calls = Calls(holder, state, settings, DegradedBursts())
    server = grpc.aio.server(
        interceptors=interceptors(token), options=_server_options(settings, reuse_port)
    )
    health = Health(("", SERVICE_NAME))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflect = settings.reflection
    if reflect is None:
        reflect = is_loopback(settings.host)
    if reflect:
        reflection.enable_server_reflection(
            (SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
    try:
        port = _bind(server, settings)
    except SettingsError:
        await state.close()
        if embedded is not None:
            embedded.stop()
        raise
    scoring = ScoringServer(server, port, settings, holder, calls, state, health, metrics, embedded)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE_NAME,
                {
                    "Score": scoring.handler("Score", calls.score, pb.ScoreRequest),
                    "RecordQuery": scoring.handler(
                        "RecordQuery", calls.record_query, pb.RecordQueryRequest
                    ),
                    "RecordClicks": scoring.handler(
                        "RecordClicks", calls.record_clicks, pb.RecordClicksRequest
                    ),
                    "RecordSearchClicks": scoring.handler(
                        "RecordSearchClicks",
                        calls.record_search_clicks,
                        pb.RecordSearchClicksRequest,
                    ),
                },
            ),
        )
    )
    if settings.admin_port is not None:
        scoring.admin = AdminServer(
            build_admin_app(scoring, admin_token, settings.admin_host),
            settings.admin_host,
            settings.admin_port,
        )
    return scoring
