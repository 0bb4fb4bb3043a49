"""The serving model and its zero-downtime reload.

`ModelHolder.current` is the Scorer every new call takes. `reload(path)` loads, verifies
and warms a new bundle beside the old one (off the event loop, so the old one keeps
serving), then swaps the reference in one assignment: calls that already took the old
Scorer finish on it, and it stops once they have. On any failure the old one keeps
serving and the reason is returned, logged and counted.

What a reload releases. Once the old Scorer is retired (its calls done, its batchers
stopped), nothing refers to it any more, so it is freed at once, without waiting for
Python's cyclic garbage collector: its two ONNX Runtime sessions with their memory
arenas (grown by the warm-up to the largest batch shape), their thread pools, its
batchers (and their worker thread on the GPU path), feature builder and id maps. Then
the freed C heap pages go back to the operating system (`release_freed_memory`). The
metrics keep no per-model children: `queryrec_model_info` drops the old bundle's label
set (multiprocess mode, which cannot drop one, keeps it at 0). The guarantee: memory does not grow with the number of reloads; the
resident memory after many reloads stays within 1.2x of that after the first
(tests/service/inference/test_reload_memory.py holds both: every retired Scorer and its sessions
are freed without a collection, the number of live sessions and metric samples stays
constant, and RSS after 20 reloads is within 1.2x; benchmarks/reload_memory.py measures
it against `queryrec serve`).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.errors import QueryRecError
from service.inference.scoring import Scorer
from service.logs import event
from service.metrics import ServiceMetrics


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the operating system (glibc `malloc_trim(0)`);
    -> whether it could (False off glibc).

    A Scorer's ONNX Runtime sessions allocate their arenas with malloc, from the thread
    that built and warmed them (a reload builds in an executor thread), so after the
    sessions are freed their memory sits free inside glibc's per-thread heaps, where the
    next reload's allocations only partly reuse it: without a trim the process's RSS
    still creeps up over many reloads. `malloc_trim(0)` walks every heap and gives back
    each free page (about a millisecond here, once per reload)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
    return trim


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
            task = asyncio.get_running_loop().create_task(self._retire(old))
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

    async def _retire(self, scorer: Scorer) -> None:
        """Retire `scorer` (its calls finish first, at most the grace), let go of it, and
        hand the memory it held back to the operating system (`release_freed_memory`).

        Nothing else holds a retired Scorer (the batchers let go of its methods when they
        stop, `MicroBatcher.stop`), so dropping the last reference here frees it at once:
        its ONNX Runtime sessions with their memory arenas, its feature builder and maps."""
        await scorer.retire(self._retire_grace_s)
        del scorer
        release_freed_memory()

    async def retired(self) -> None:
        """Wait until every scorer reloaded away so far is retired and let go of (its
        memory freed: `_retire`)."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def close(self) -> None:
        """No more reloads; wait for retiring scorers and stop the current one."""
        self.closed = True
        async with self._lock:  # a reload in progress finishes (or gives up) first
            pass
        await self.retired()
        await self.current.stop()
