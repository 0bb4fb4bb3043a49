"""Structured logs: one JSON line per event (`python-json-logger`), nothing per request.

`event(name, **fields)` writes one line at INFO with `"event": name` and the fields, for
the lifecycle (start, ready, reload, drain, stop) and for Redis lost / regained.
Degraded answers are not logged one by one: `DegradedBursts` writes at most one line
per interval with the counts per reason since the last line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from typing import Any

from pythonjsonlogger.json import JsonFormatter

log = logging.getLogger("queryrec.serve")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each record (a stream captured
    at configuration time may be closed later, for example by a test's capture)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the whole process (uvicorn's and gRPC's loggers too).
    Idempotent: a second call replaces its own handler, not other handlers."""
    handler = _StderrHandler()
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "asctime": "time"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StderrHandler)]
    root.addHandler(handler)
    root.setLevel(level)


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured line: message and `event` are the name, the fields ride along."""
    log.log(level, name, extra={"event": name, **fields})


class DegradedBursts:
    """Counts degraded answers per reason; logs the counts at most once per `interval_s`."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._counts: Counter[str] = Counter()
        self._last = float("-inf")

    def add(self, reasons: list[str]) -> None:
        self._counts.update(reasons)
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log what was counted since the last line (nothing when nothing was)."""
        if self._counts:
            event("degraded_answers", logging.WARNING, counts=dict(self._counts))
            self._counts.clear()
        self._last = time.monotonic() if now is None else now
