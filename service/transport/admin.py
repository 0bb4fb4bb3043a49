"""The admin HTTP API (FastAPI, served by uvicorn in the gRPC server's event loop).

| endpoint | what |
|---|---|
| `GET /healthz` | 200 while the process is alive |
| `GET /readyz` | 200 when the bundle is loaded and warmed, not draining, Redis answers; else 503 with the reasons |
| `GET /metrics` | Prometheus text format |
| `GET /v1/model` | the serving bundle's manifest |
| `POST /v1/model/reload` | zero-downtime reload; optional JSON body `{"bundle": "/path"}` |
| `POST /v1/score` | JSON mirror of the Score RPC (debugging) |

The admin token (`QUERYREC_ADMIN_TOKEN` / `_FILE`, sent as `Authorization: Bearer
<token>`; a wrong or missing one is 401) guards what a stranger must not reach
(`_guard`). The probes (/healthz, /readyz, /metrics) are always open: orchestrators and
Prometheus call them without credentials.

- Reload, the mutating endpoint: needs the token whenever one is set; with none set it
  works only on a loopback admin bind (otherwise 403).
- /v1/model and /v1/score (the manifest, and scoring any user: data a stranger must not
  read, work a stranger must not cause): open on a loopback admin bind; on any other
  bind they need the token, and with none set they are off (403).

`build_admin_app` serves one server process. `build_fleet_admin_app` is the same API for
the supervisor of `serve --workers N` (service.transport.workers): readiness and reload fan out to
every worker, /metrics merges the workers' files, the rest is answered by one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from service.api import scorer_pb2 as pb
from service.errors import Rejected, SettingsError
from service.inference.model_holder import ModelHolder, ReloadRefused, ReloadResult
from service.metrics import ServiceMetrics
from service.transport.auth import is_loopback
from service.transport.calls import HTTP_CODES, Calls


class Operations(Protocol):
    """What the admin API needs from the server (service.transport.server.ScoringServer)."""

    holder: ModelHolder
    calls: Calls
    metrics: ServiceMetrics

    async def readiness(self) -> dict[str, Any]: ...

    async def reload(self, path: Path | None = None) -> ReloadResult: ...


class ReloadBody(BaseModel):
    bundle: str | None = Field(None, description="bundle folder; unset: re-read the current one")


class ScoreBody(BaseModel):
    user_id: int
    item_ids: list[int]
    request_time_ms: int = 0


class Fleet(Protocol):
    """What the supervisor's admin API needs from the supervisor (service.transport.workers).

    Every answer is an HTTP status and a JSON body, as the workers gave it or merged."""

    async def readiness(self) -> dict[str, Any]: ...

    def metrics_text(self) -> bytes: ...

    async def forward(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, Any]: ...

    async def reload(self, bundle: str | None) -> tuple[int, dict[str, Any]]: ...


def _guard(token: str | None, host: str, what: str, *, loopback_open: bool) -> Callable[..., None]:
    """A dependency that lets a request through on a loopback bind (always when
    `loopback_open`, else only while no token is set) or with the bearer token (compared
    in constant time: 401 otherwise); with no token set on a public bind, `what` ("reload
    is") is off (403)."""
    bearer = HTTPBearer(auto_error=False)
    loopback = is_loopback(host)

    def check(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if loopback and (loopback_open or token is None):
            return
        if token is None:
            why = f"{what} off: no admin token set on a public admin bind"
            raise HTTPException(403, f"{why} (QUERYREC_ADMIN_TOKEN)")
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    return check


def _operator_check(token: str | None, host: str) -> Callable[..., None]:
    """Guards reload: the token whenever one is set, else a loopback bind."""
    return _guard(token, host, "reload is", loopback_open=False)


def _reader_check(token: str | None, host: str) -> Callable[..., None]:
    """Guards /v1/model and /v1/score: open on a loopback bind, else the token."""
    return _guard(token, host, "/v1/model and /v1/score are", loopback_open=True)


def _probe_app(
    readiness: Callable[[], Awaitable[dict[str, Any]]], metrics_text: Callable[[], bytes]
) -> FastAPI:
    """A new admin app with the probes both kinds share: /healthz, /readyz, /metrics."""
    app = FastAPI(title="QueryRec admin", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"alive": True}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        report = await readiness()
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(metrics_text(), media_type=CONTENT_TYPE_LATEST)

    return app


def build_admin_app(ops: Operations, token: str | None, host: str) -> FastAPI:
    """The admin app over a server's operations."""
    app = _probe_app(ops.readiness, lambda: generate_latest(ops.metrics.registry))
    operator = _operator_check(token, host)
    reader = _reader_check(token, host)

    @app.get("/v1/model", dependencies=[Depends(reader)])
    async def model() -> dict[str, Any]:
        return dict(ops.holder.current.bundle.manifest)

    @app.post("/v1/model/reload", dependencies=[Depends(operator)])
    async def reload(body: ReloadBody | None = None) -> JSONResponse:
        path = Path(body.bundle) if body is not None and body.bundle else None
        try:
            result = await ops.reload(path)
        except ReloadRefused as error:
            return JSONResponse({"ok": False, "error": str(error)}, status_code=409)
        return JSONResponse(
            {
                "ok": result.ok,
                "model_version": result.model_version,
                "previous_version": result.previous_version,
                "seconds": round(result.seconds, 3),
                "error": result.error,
            },
            status_code=200 if result.ok else 422,
        )

    @app.post("/v1/score", dependencies=[Depends(reader)])
    async def score(body: ScoreBody) -> JSONResponse:
        request = pb.ScoreRequest(
            user_id=body.user_id, item_ids=body.item_ids, request_time_ms=body.request_time_ms
        )
        try:
            answer = await ops.calls.score(request, None)
        except Rejected as error:
            return JSONResponse(
                {"error": str(error), "kind": error.kind}, status_code=HTTP_CODES[error.kind]
            )
        except ValueError as error:  # an id outside int64
            return JSONResponse({"error": str(error), "kind": "invalid"}, status_code=400)
        return JSONResponse(
            {
                "scores": list(answer.scores),
                "model_version": answer.model_version,
                "degraded": answer.degraded,
                "degraded_reasons": list(answer.degraded_reasons),
            }
        )

    return app


def build_fleet_admin_app(fleet: Fleet, token: str | None, host: str) -> FastAPI:
    """The admin app of the supervisor of `serve --workers N`: the endpoints and the
    token rule of `build_admin_app`, answered by the workers (`Fleet`)."""
    app = _probe_app(fleet.readiness, fleet.metrics_text)
    operator = _operator_check(token, host)
    reader = _reader_check(token, host)

    @app.get("/v1/model", dependencies=[Depends(reader)])
    async def model() -> JSONResponse:
        status, payload = await fleet.forward("GET", "/v1/model", None)
        return JSONResponse(payload, status_code=status)

    @app.post("/v1/model/reload", dependencies=[Depends(operator)])
    async def reload(body: ReloadBody | None = None) -> JSONResponse:
        status, payload = await fleet.reload(body.bundle if body is not None else None)
        return JSONResponse(payload, status_code=status)

    @app.post("/v1/score", dependencies=[Depends(reader)])
    async def score(body: ScoreBody) -> JSONResponse:
        status, payload = await fleet.forward("POST", "/v1/score", body.model_dump())
        return JSONResponse(payload, status_code=status)

    return app


class _InLoopServer(uvicorn.Server):
    """uvicorn without its signal handlers: the gRPC process owns SIGTERM / SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AdminServer:
    """uvicorn serving the admin app on a socket bound here (port 0: a free one)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app, self.host, self._requested_port = app, host, port
        self.port = port
        self._server: _InLoopServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and serve; SettingsError with one line when the port cannot be bound."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError as error:
            sock.close()
            raise SettingsError(
                f"admin: cannot bind {self.host}:{self._requested_port} ({error.strerror})"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, lifespan="off"
        )
        self._server = _InLoopServer(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:  # uvicorn offers no event for "started"
            if self._task.done():
                self._task.result()
                raise SettingsError(f"admin: uvicorn did not start on {self.host}:{self.port}")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._server = self._task = None
