"""Structured logs: one JSON line per event (`python-json-logger`), nothing per request.

`event(name, **fields)` writes one line at INFO with `"event": name` and the fields, for
the lifecycle (start, ready, reload, drain, stop) and for Redis lost / regained. Every
line `serve` writes is JSON, the one stdout line that says it serves too (`serving_line`),
so a value from a bundle or a request (escaped by the JSON encoder) cannot forge a line.

What a client can trigger is never one line per call:
- degraded answers are counted per reason (`DegradedBursts`) and written as one summary
  line per interval, on a timer (`Summaries`), so an outage's counts appear while it lasts;
- a warning or error a request can cause (an unparsable request, a failing graph) goes
  through `LimitedEvents`: at most `burst` lines per event name per interval, the rest
  counted and written as one `<name>_suppressed` line by the same timer.
"""

from __future__ import annotations

import asyncio
import contextlib
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


def _json_formatter() -> JsonFormatter:
    return JsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "asctime": "time"},
    )


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for the whole process (uvicorn's and gRPC's loggers too).
    Idempotent: a second call replaces its own handler, not other handlers."""
    handler = _StderrHandler()
    handler.setFormatter(_json_formatter())
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StderrHandler)]
    root.addHandler(handler)
    root.setLevel(level)


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured line: message and `event` are the name, the fields ride along."""
    log.log(level, name, extra={"event": name, **fields})


def serving_line(message: str, **fields: Any) -> None:
    """The one line on stdout that a supervisor, `queryrec demo` or a test waits for: a JSON
    line (event "serving") whose message reads "queryrec serve: listening on HOST:PORT ..."."""
    record = log.makeRecord(
        log.name,
        logging.INFO,
        __file__,
        0,
        message,
        (),
        None,
        extra={"event": "serving", **fields},
    )
    print(_json_formatter().format(record), flush=True)


class DegradedBursts:
    """Counts degraded answers per reason; `flush` writes the counts since the last line
    (`Summaries` calls it on a timer, and the server once more when it stops)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def add(self, reasons: list[str]) -> None:
        self._counts.update(reasons)

    def flush(self) -> None:
        """Log what was counted since the last line (nothing when nothing was)."""
        if self._counts:
            event("degraded_answers", logging.WARNING, counts=dict(self._counts))
            self._counts.clear()


class LimitedEvents:
    """`event` for lines a client can trigger: at most `burst` lines per event name per
    `interval_s`; the others are counted, and `flush` writes one `<name>_suppressed` line
    per name with the count."""

    def __init__(self, burst: int = 5, interval_s: float = 10.0) -> None:
        self.burst, self.interval_s = burst, interval_s
        self._window: dict[str, tuple[float, int]] = {}  # name -> (window start, lines)
        self._suppressed: Counter[str] = Counter()

    def event(self, name: str, level: int = logging.WARNING, **fields: Any) -> None:
        now = time.monotonic()
        start, lines = self._window.get(name, (now, 0))
        if now - start >= self.interval_s:
            start, lines = now, 0
        if lines >= self.burst:
            self._suppressed[name] += 1
            self._window[name] = (start, lines)
            return
        self._window[name] = (start, lines + 1)
        event(name, level, **fields)

    def flush(self) -> None:
        for name, count in self._suppressed.items():
            event(f"{name}_suppressed", logging.WARNING, count=count, interval_s=self.interval_s)
        self._suppressed.clear()


CLIENT_TRIGGERED = LimitedEvents()
"""The process's limiter of lines a client can trigger (one per process, like the log)."""


def limited_event(name: str, level: int = logging.WARNING, **fields: Any) -> None:
    """`event` through `CLIENT_TRIGGERED`: for lines a request can cause."""
    CLIENT_TRIGGERED.event(name, level, **fields)


class Summaries:
    """Writes the periodic summaries (degraded answers, suppressed lines) every
    `interval_s` while started, and once more when stopped."""

    def __init__(
        self, bursts: DegradedBursts, interval_s: float, limited: LimitedEvents = CLIENT_TRIGGERED
    ) -> None:
        self.bursts, self.limited, self.interval_s = bursts, limited, interval_s
        limited.interval_s = interval_s  # the limiter's window is the summary's interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="log-summaries")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()

    def flush(self) -> None:
        self.bursts.flush()
        self.limited.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.flush()
