"""A call that sends no request message is answered at once (or at the receive bound),
never held until the client's deadline or the connection's age (real gRPC server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.service.harness import ServerThread

SCORE = "/queryrec.v1.Scorer/Score"


def _raw_stream_call(channel: grpc.Channel) -> grpc.StreamUnaryMultiCallable:
    return channel.stream_unary(
        SCORE, request_serializer=lambda data: data, response_deserializer=lambda data: data
    )


def test_a_call_half_closed_without_a_message_is_invalid_at_once(
    bundle: Path, redis_client_url: str
) -> None:
    with ServerThread(bundle, redis_client_url) as harness:
        assert harness.channel is not None
        with pytest.raises(grpc.RpcError) as caught:
            _raw_stream_call(harness.channel)(iter([]), timeout=600)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no request message" in (caught.value.details() or "")


def test_a_call_that_never_sends_its_message_ends_at_the_receive_bound(
    bundle: Path, redis_client_url: str
) -> None:
    """The client keeps the stream open and sends nothing; the 600 s deadline is not what
    ends it: the server's receive bound (0.2 s here) is. 200 such calls at once on one
    connection all end that way. (Not more than its 256 concurrent streams: a client that
    opens more before the server's SETTINGS arrive has the extra ones refused, UNAVAILABLE,
    by HTTP/2 itself.)"""
    release = threading.Event()

    def nothing() -> Iterator[bytes]:
        release.wait(600)  # the client sends no message until the test ends
        yield from ()

    with ServerThread(bundle, redis_client_url, receive_timeout_s=0.2) as harness:
        assert harness.channel is not None
        call = _raw_stream_call(harness.channel)
        try:
            futures = [call.future(nothing(), timeout=600) for _ in range(200)]
            errors = [future.exception(600) for future in futures]
        finally:
            release.set()
    codes = {error.code() for error in errors if isinstance(error, grpc.RpcError)}
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
    assert all("within 0.2 s" in (error.details() or "") for error in errors)
