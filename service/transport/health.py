"""`grpc.health.v1` for the service: Check, and Watch streams that end cleanly on shutdown.

grpcio-health-checking's asyncio servicer keeps Watch streams open until the server
cancels them, so every watcher sees CANCELLED at shutdown. Here `close()` sends the last
status (NOT_SERVING) and then ends each stream with OK, before the server stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

Status = int  # a health_pb2.HealthCheckResponse.ServingStatus value
SERVING: Status = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Status = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: Status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Status per service name ("" is the whole server)."""

    def __init__(self, services: tuple[str, ...]) -> None:
        self._status: dict[str, Status] = dict.fromkeys(services, NOT_SERVING)
        self._changed = asyncio.Condition()
        self._closed = False

    def status(self, service: str = "") -> Status:
        return self._status.get(service, SERVICE_UNKNOWN)

    async def set_all(self, status: Status) -> None:
        """Every known service to `status` (ignored after `close()`)."""
        if self._closed:
            return
        async with self._changed:
            for service in self._status:
                self._status[service] = status
            self._changed.notify_all()

    async def close(self) -> None:
        """NOT_SERVING for good; every Watch stream sends it and ends with OK."""
        await self.set_all(NOT_SERVING)
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in self._status:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=self._status[request.service])

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: Status | None = None
        while True:
            async with self._changed:
                status, closed = self.status(request.service), self._closed
                if status == last and not closed:
                    await self._changed.wait()
                    continue
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            if closed:
                return
