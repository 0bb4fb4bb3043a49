"""The serving model and its zero-downtime reload.

`ModelHolder.current` is the Scorer every new call takes. `reload(path)` loads, verifies
and warms a new bundle beside the old one (off the event loop, so the old one keeps
serving), then swaps the reference in one assignment: calls that already took the old
Scorer finish on it, and it stops once they have. On any failure the old one keeps
serving and the reason is returned, logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.errors import QueryRecError
from service.logs import event
from service.metrics import ServiceMetrics
from service.scoring import Scorer


class ReloadRefused(QueryRecError):
    """A reload cannot start now (another one runs, or the server is shutting down)."""


@dataclass(frozen=True)
class ReloadResult:
    """What a reload did."""

    ok: bool
    model_version: str  # the version serving after the reload
    previous_version: str
    seconds: float
    error: str | None = None  # one line, when not ok


class ModelHolder:
    """The current Scorer and how to replace it.

    `build(path)` is blocking: it loads, verifies and warms a Scorer for the bundle at
    `path` (raising a QueryRecError with one line when the bundle is bad).
    """

    def __init__(
        self,
        scorer: Scorer,
        build: Callable[[Path], Scorer],
        metrics: ServiceMetrics,
        retire_grace_s: float,
    ) -> None:
        self.current = scorer
        self._build = build
        self._metrics = metrics
        self._retire_grace_s = retire_grace_s
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.closed = False
        self.publish()

    def publish(self) -> None:
        """The info metric follows the scorer being served."""
        manifest = self.current.bundle.manifest
        self._metrics.model.info(
            {
                "model_version": self.current.model_version,
                "model_name": str(manifest.get("model_name", "")),
                "encoder_version": self.current.encoder_version,
                "bundle": str(self.current.bundle.root),
            }
        )

    async def reload(self, path: Path | None = None) -> ReloadResult:
        """Serve the bundle at `path` (None: the current bundle's folder, re-read)."""
        if self.closed:
            raise ReloadRefused("the server is shutting down")
        if self._lock.locked():
            raise ReloadRefused("a reload is already running")
        async with self._lock:
            old = self.current
            target = Path(path) if path is not None else old.bundle.root
            began = time.perf_counter()
            event("reload_started", bundle=str(target), serving=old.model_version)
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, self._build, target)
            except Exception as error:
                detail = str(error) if isinstance(error, QueryRecError) else repr(error)
                self._metrics.reloads.labels("failure").inc()
                event("reload_failed", logging.ERROR, bundle=str(target), error=detail)
                return ReloadResult(
                    False, old.model_version, old.model_version, time.perf_counter() - began, detail
                )
            if self.closed:  # shutdown began while the new bundle was warming
                await new.stop()
                raise ReloadRefused("the server is shutting down")
            new.start()
            self.current = new  # the swap: new calls take the new scorer from here on
            self.publish()
            task = asyncio.get_running_loop().create_task(old.retire(self._retire_grace_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            seconds = time.perf_counter() - began
            self._metrics.reloads.labels("success").inc()
            event(
                "reload_done",
                model_version=new.model_version,
                previous_version=old.model_version,
                seconds=round(seconds, 3),
            )
            return ReloadResult(True, new.model_version, old.model_version, seconds)

    async def close(self) -> None:
        """No more reloads; wait for retiring scorers and stop the current one."""
        self.closed = True
        async with self._lock:  # a reload in progress finishes (or gives up) first
            pass
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        await self.current.stop()
