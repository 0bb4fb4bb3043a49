"""Structured logs: one JSON object per line; degraded answers logged in rate-limited bursts."""

from __future__ import annotations

import io
import json
import logging

import pytest

from service.logs import DegradedBursts, configure_logging, event


def test_events_are_one_json_object_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    try:
        configure_logging()
        event("ready", model_version="m-1", warm_up_s=0.25)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "ready" and record["model_version"] == "m-1"
    assert record["level"] == "INFO" and record["name"] == "queryrec.serve"


def test_degraded_answers_are_counted_and_logged_at_most_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bursts = DegradedBursts(interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="queryrec.serve"):
        bursts.add(["redis_timeout"])  # the first one is logged at once
        for _ in range(500):
            bursts.add(["redis_timeout"])
        bursts.add(["encoder_timeout", "redis_timeout"])
        assert len(caplog.records) == 1
        bursts.flush()
    first, second = (record.__dict__["counts"] for record in caplog.records)
    assert first == {"redis_timeout": 1}
    assert second == {"redis_timeout": 501, "encoder_timeout": 1}
