"""Structured logs: one JSON object per line, the stdout line included; what a client can
trigger is rate-limited with counts; summaries are written on a timer."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import grpc
import pytest

from service.logs import (
    DegradedBursts,
    LimitedEvents,
    Summaries,
    configure_logging,
    event,
    serving_line,
)
from tests.service.harness import ServerThread


def test_events_are_one_json_object_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    try:
        configure_logging()
        event("ready", model_version='m-1\n{"event": "forged"}', warm_up_s=0.25)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    (line,) = stream.getvalue().splitlines()  # a newline in a value is escaped
    record = json.loads(line)
    assert record["event"] == "ready" and record["model_version"].startswith("m-1\n")
    assert record["level"] == "INFO" and record["name"] == "queryrec.serve"


def test_the_serving_line_is_json_that_still_reads_listening_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    serving_line(
        "queryrec serve: listening on 127.0.0.1:5 (model m\nx)", port=5, model_version="m\nx"
    )
    (line,) = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["event"] == "serving" and record["port"] == 5
    assert "listening on 127.0.0.1:5 " in line


def test_degraded_answers_are_written_only_as_summaries(caplog: pytest.LogCaptureFixture) -> None:
    bursts = DegradedBursts()
    with caplog.at_level(logging.WARNING, logger="queryrec.serve"):
        for _ in range(500):
            bursts.add(["redis_timeout"])
        bursts.add(["encoder_timeout", "redis_timeout"])
        assert caplog.records == []
        bursts.flush()
        bursts.flush()  # nothing new: no line
    (record,) = caplog.records
    assert record.__dict__["counts"] == {"redis_timeout": 501, "encoder_timeout": 1}


def test_client_triggered_lines_are_limited_and_the_rest_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limited = LimitedEvents(burst=5, interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="queryrec.serve"):
        for index in range(100):
            limited.event("unparsable_request", method="Score", index=index)
        limited.event("rpc_failed", logging.ERROR, method="Score")
        limited.flush()
    names = [record.__dict__["event"] for record in caplog.records]
    assert names == ["unparsable_request"] * 5 + ["rpc_failed", "unparsable_request_suppressed"]
    assert caplog.records[-1].__dict__["count"] == 95


def test_summaries_are_written_on_a_timer_without_a_new_answer() -> None:
    """An outage's counts appear while it lasts, not at the next degraded answer."""
    written = asyncio.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.__dict__.get("event") == "degraded_answers":
                written.set()

    async def go() -> None:
        bursts = DegradedBursts()
        summaries = Summaries(bursts, interval_s=0.05, limited=LimitedEvents())
        summaries.start()
        bursts.add(["redis_unavailable"])
        await asyncio.wait_for(written.wait(), 60)  # the timer wrote it; nothing else did
        await summaries.stop()

    handler = Seen()
    logger = logging.getLogger("queryrec.serve")
    logger.addHandler(handler)
    try:
        asyncio.run(go())
    finally:
        logger.removeHandler(handler)
    assert written.is_set()


def test_a_flood_of_unparsable_requests_writes_a_bounded_number_of_lines(
    bundle: Path, redis_client_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Real gRPC: 100 requests whose bytes do not parse are 100 INVALID_ARGUMENT answers
    but at most 5 warning lines, then one line with the count of the others."""
    harness = ServerThread(bundle, redis_client_url, log_summary_interval_s=3600)
    server = harness.create()
    harness.start()
    codes = []
    try:
        assert harness.channel is not None
        raw = harness.channel.unary_unary(
            "/queryrec.v1.Scorer/Score",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        with caplog.at_level(logging.WARNING, logger="queryrec.serve"):
            for _ in range(100):
                with pytest.raises(grpc.RpcError) as caught:
                    raw(b"\xff\xff\xff", timeout=60)
                codes.append(caught.value.code())
            harness.run(server.stop(0.2))
    finally:
        harness.server = None
        harness.close()
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
    names = [r.__dict__.get("event") for r in caplog.records]
    assert names.count("unparsable_request") <= 5
    (suppressed,) = [
        r for r in caplog.records if r.__dict__.get("event") == "unparsable_request_suppressed"
    ]
    assert names.count("unparsable_request") + suppressed.__dict__["count"] == 100
