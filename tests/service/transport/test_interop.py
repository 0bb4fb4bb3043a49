"""The server with clients that share nothing with grpcio's C core or our stubs.

`grpclib` is a second, pure-Python HTTP/2 implementation of gRPC: if framing, trailers,
status codes or the health service only worked with grpcio's own client, these tests
would catch it. `grpc-requests` knows nothing of the proto at all: it learns the services
by server reflection and sends a dict, as a debugging tool or another team would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from google.protobuf import message as protobuf_message
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2
from grpc_requests import Client  # type: ignore[import-untyped]
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from service.api import scorer_pb2 as pb
from tests.service.harness import ServerThread

T = 1_700_000_000_000  # a fixed request time
MINUTE_MS = 60_000
Reply = TypeVar("Reply", bound=protobuf_message.Message)
R = TypeVar("R")


@pytest.fixture(scope="module")
def served(bundle: Path, redis_url: str) -> Iterator[ServerThread]:
    with ServerThread(bundle, redis_url, budget_ms=5000, max_candidates=50) as harness:
        yield harness


def run(coroutine: Coroutine[Any, Any, R]) -> R:
    """Run a grpclib coroutine in a loop of its own (the server runs in another thread)."""
    return asyncio.run(coroutine)


async def grpclib_call(
    server: ServerThread, method: str, request: protobuf_message.Message, reply: type[Reply]
) -> Reply:
    """One unary call over a fresh grpclib channel (no generated grpclib stubs: the method
    path and the protobuf message classes are all grpclib needs)."""
    assert server.server is not None
    channel = Channel("127.0.0.1", server.server.port)
    try:
        call = UnaryUnaryMethod(channel, method, type(request), reply)
        return await call(request, timeout=10)
    finally:
        channel.close()


def grpclib_score(server: ServerThread, request: pb.ScoreRequest) -> pb.ScoreResponse:
    return run(grpclib_call(server, "/queryrec.v1.Scorer/Score", request, pb.ScoreResponse))


def test_record_then_score_through_grpclib_matches_grpcio(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    user, items = 881_000_001, raw["items"][:6]
    request = pb.ScoreRequest(user_id=user, item_ids=items, request_time_ms=T)
    before = grpclib_score(served, request)

    query = pb.RecordQueryRequest(
        user_id=user, token_ids=raw["words"][:3], timestamp_ms=T - 2 * MINUTE_MS
    )
    clicks = pb.RecordClicksRequest(
        user_id=user, item_ids=raw["items"][10:13], timestamp_ms=T - MINUTE_MS
    )
    queried = run(
        grpclib_call(served, "/queryrec.v1.Scorer/RecordQuery", query, pb.RecordQueryResponse)
    )
    clicked = run(
        grpclib_call(served, "/queryrec.v1.Scorer/RecordClicks", clicks, pb.RecordClicksResponse)
    )
    assert (queried.history_length, clicked.history_length) == (1, 3)

    after = grpclib_score(served, request)
    assert len(after.scores) == len(items)
    assert all(0.0 <= s <= 1.0 for s in after.scores)
    assert after.scores != before.scores  # the writes made through grpclib were stored
    assert not after.degraded
    assert served.server is not None
    assert after.model_version == served.server.scorer.model_version

    reference: pb.ScoreResponse = served.stub.Score(request, timeout=10)  # grpcio
    np.testing.assert_allclose(after.scores, reference.scores, rtol=1e-6)
    assert after.model_version == reference.model_version


def test_invalid_argument_arrives_through_grpclib_with_its_message(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    with pytest.raises(GRPCError) as caught:
        grpclib_score(served, pb.ScoreRequest(user_id=5, item_ids=[]))
    assert caught.value.status == Status.INVALID_ARGUMENT
    assert caught.value.message is not None and "item_ids" in caught.value.message
    with pytest.raises(GRPCError) as caught:
        grpclib_score(served, pb.ScoreRequest(user_id=5, item_ids=[3, -4]))
    assert caught.value.status == Status.INVALID_ARGUMENT
    assert caught.value.message == "item_ids holds a negative id"
    # The connection and the server are fine afterwards.
    ok = grpclib_score(served, pb.ScoreRequest(user_id=5, item_ids=raw["items"][:2]))
    assert len(ok.scores) == 2


def test_unknown_method_is_unimplemented_through_grpclib(served: ServerThread) -> None:
    with pytest.raises(GRPCError) as caught:
        run(
            grpclib_call(
                served, "/queryrec.v1.Scorer/NoSuchMethod", pb.ScoreRequest(), pb.ScoreResponse
            )
        )
    assert caught.value.status == Status.UNIMPLEMENTED


def test_health_check_through_grpclib(served: ServerThread) -> None:
    def check(service: str) -> Any:
        request = health_pb2.HealthCheckRequest(service=service)
        return run(
            grpclib_call(
                served, "/grpc.health.v1.Health/Check", request, health_pb2.HealthCheckResponse
            )
        )

    for service in ("", "queryrec.v1.Scorer"):
        assert check(service).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(GRPCError) as caught:
        check("no.such.Service")
    assert caught.value.status == Status.NOT_FOUND


@pytest.fixture
def reflection_client(served: ServerThread) -> Iterator[Any]:
    """A grpc-requests client that learnt the services by reflection only: it gets a
    descriptor pool of its own, so nothing of our compiled `scorer_pb2` can help it."""
    client = Client(served.address, descriptor_pool=DescriptorPool())
    try:
        yield client
    finally:
        client.channel.close()


def test_reflection_client_discovers_and_scores_with_dicts(
    reflection_client: Any, served: ServerThread, raw: dict[str, list[int]]
) -> None:
    assert {"queryrec.v1.Scorer", "grpc.health.v1.Health"} <= set(reflection_client.service_names)
    scorer = reflection_client.service("queryrec.v1.Scorer")
    assert set(scorer.method_names) == {
        "Score",
        "RecordQuery",
        "RecordClicks",
        "RecordSearchClicks",
    }

    user, items = raw["users"][0], raw["items"][:4]
    reply = reflection_client.request(
        "queryrec.v1.Scorer",
        "Score",
        {"user_id": user, "item_ids": items, "request_time_ms": T},
    )
    assert isinstance(reply, dict)
    assert len(reply["scores"]) == len(items)
    assert all(0.0 <= s <= 1.0 for s in reply["scores"])
    assert served.server is not None
    assert reply["model_version"] == served.server.scorer.model_version
    reference = served.stub.Score(
        pb.ScoreRequest(user_id=user, item_ids=items, request_time_ms=T), timeout=10
    )
    np.testing.assert_allclose(reply["scores"], reference.scores, rtol=1e-6)

    recorded = reflection_client.request(
        "queryrec.v1.Scorer",
        "RecordClicks",
        {"user_id": 881_000_002, "item_ids": items[:2], "timestamp_ms": T},
    )
    assert recorded == {"history_length": 2}


def test_reflection_client_gets_status_codes(reflection_client: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        reflection_client.request("queryrec.v1.Scorer", "Score", {"user_id": 5, "item_ids": []})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "item_ids" in caught.value.details()
