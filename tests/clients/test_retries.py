"""The clients' retry policy, against a real grpc.aio server that is UNAVAILABLE once."""

from __future__ import annotations

import asyncio

import grpc

from clients.retries import RETRY_OPTIONS
from service.api import scorer_pb2 as pb
from service.api import scorer_pb2_grpc


class FlakyScorer(scorer_pb2_grpc.ScorerServicer):
    """RecordQuery: UNAVAILABLE for the first `failures` calls, then stored."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def RecordQuery(
        self, request: pb.RecordQueryRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordQueryResponse:
        self.calls += 1
        if self.calls <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Redis write did not finish in time")
        return pb.RecordQueryResponse(history_length=1)


async def record_once(failures: int, options: list[tuple[str, str | int]]) -> tuple[str, int]:
    """(the status of one RecordQuery through a channel with `options`, server calls)."""
    servicer = FlakyScorer(failures)
    server = grpc.aio.server()
    scorer_pb2_grpc.add_ScorerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            try:
                await stub.RecordQuery(pb.RecordQueryRequest(user_id=1, token_ids=[2]), timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
    finally:
        await server.stop(None)
    return code, servicer.calls


def test_an_unavailable_write_is_retried() -> None:
    assert asyncio.run(record_once(2, RETRY_OPTIONS)) == ("OK", 3)


def test_retries_give_up_after_four_attempts() -> None:
    assert asyncio.run(record_once(10, RETRY_OPTIONS)) == ("UNAVAILABLE", 4)


def test_without_the_policy_nothing_is_retried() -> None:
    assert asyncio.run(record_once(1, [("grpc.enable_retries", 0)])) == ("UNAVAILABLE", 1)
