"""A real gRPC server on port 0 in a background thread with its own event loop.

Tests talk to it with the synchronous generated stub over a real channel, so nothing of
gRPC or Redis is mocked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc

from service.api import scorer_pb2, scorer_pb2_grpc
from service.settings import ServiceSettings
from service.transport.server import ScoringServer, create_server

T = TypeVar("T")


class ServerThread:
    """create() binds the server (health NOT_SERVING), start() warms it and serves."""

    def __init__(self, bundle: Path, redis_url: str | None, **settings: Any):
        settings.setdefault("admin_port", None)  # admin API only where a test asks (port 0)
        self.settings = ServiceSettings(bundle=bundle, redis_url=redis_url, port=0, **settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: ScoringServer | None = None
        self.channel: grpc.Channel | None = None

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def run_in_background(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start a coroutine in the server's loop; its result later (`.result(timeout)`)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def create(self) -> ScoringServer:
        self.server = self.run(create_server(self.settings))
        self.channel = grpc.insecure_channel(self.server.address)
        return self.server

    def start(self) -> None:
        assert self.server is not None
        self.run(self.server.start())

    @property
    def stub(self) -> scorer_pb2_grpc.ScorerStub:
        assert self.channel is not None
        return scorer_pb2_grpc.ScorerStub(self.channel)

    def score(
        self, user: int, items: list[int], request_time_ms: int, timeout: float = 60
    ) -> scorer_pb2.ScoreResponse:
        """One Score call over the real channel."""
        response: scorer_pb2.ScoreResponse = self.stub.Score(
            scorer_pb2.ScoreRequest(user_id=user, item_ids=items, request_time_ms=request_time_ms),
            timeout=timeout,
        )
        return response

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    def __enter__(self) -> ServerThread:
        """Created and started (health SERVING); `close` on leaving."""
        self.create()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.server is not None:
            self.run(self.server.stop(0.2))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
