"""An asyncio micro-batcher: many concurrent requests, one model call per batch, off the loop.

Requests queue up; one dispatcher task takes what is queued (up to `max_size` units, for
example users for the encoder or candidate pairs for the CTR graph), waits at most
`max_delay_s` for more while the batch is not full, runs the batch function in a
dedicated worker thread (ONNX Runtime releases the GIL, so the event loop keeps serving
gRPC and Redis meanwhile), and resolves each request's future with its own result. While
one batch runs, the next one fills: under load the batch grows by itself; at low load a
request waits at most `max_delay_s` (MEASURED.md: a fixed delay hurts at low load, so keep
it small).

Time, not queue length, decides admission: each request says by when (loop time) it
must have its result; `submit` refuses it at once (`Overloaded`) when the batcher is busy
and the expected wait, from the measured seconds per unit and what is queued and
running, would end past that. An idle batcher always admits (its next call refreshes
the estimate; otherwise one slow measurement could refuse every later request).
Requests whose caller is gone (cancelled, deadline passed) are dropped before the call.
`max_queue` is only a hard memory cap.

Inline fast path: a request that finds the batcher idle (nothing running, nothing
queued) and whose call is measured to take at most `inline_max_s` runs on the event loop
itself, without the two thread hand-offs (about 0.1 ms and a GIL round trip each). The
loop is blocked for that call, which is why it is bounded by the measured cost; a call
that has not been measured yet (or is slower) always goes to the worker thread, where
the caller's deadline can still cut the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from service.errors import Overloaded

In = TypeVar("In")
Out = TypeVar("Out")


# Weight of the newest batch in the running averages of the cost model.
COST_SMOOTHING = 0.2


class BatchObserver(Protocol):
    """What the batcher reports (the server turns it into metrics)."""

    def batch_ran(self, name: str, units: int, waits_s: list[float], compute_s: float) -> None:
        """One call ran: its units, each request's queue wait, the call's duration."""

    def dropped(self, name: str, count: int) -> None:
        """Queued requests whose caller was gone were not computed."""

    def refused(self, name: str) -> None:
        """A request was not queued: its expected wait exceeded its time left."""


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    units: int
    future: asyncio.Future[Out]
    deadline: float  # loop time by which the caller needs the result (inf: none)
    queued_at: float  # loop time


class MicroBatcher(Generic[In, Out]):
    """`await batcher.submit(item, units)` -> the item's result from one batched call.

    `run_batch(items) -> results` runs in the batcher's own thread, results in item order.
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[In]], Sequence[Out]],
        *,
        max_size: int,
        max_delay_s: float,
        max_queue: int,
        observer: BatchObserver | None = None,
        inline_max_s: float = 0.0,
    ):
        self.name = name
        self.run_batch = run_batch
        self.max_size, self.max_delay_s, self.max_queue = max_size, max_delay_s, max_queue
        self.observer = observer
        self.inline_max_s = inline_max_s
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue()
        self._queued_units = 0  # units waiting (queue + carry)
        self._running_since: float | None = None  # loop time the current call started
        # Cost model: running averages of a call's seconds and units (0: not measured yet).
        self._call_s = 0.0
        self._call_units = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._task: asyncio.Task[None] | None = None
        self._carry: _Pending[In, Out] | None = None  # did not fit the last batch

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    def expected_wait(self, units: int = 1) -> float:
        """Seconds until a request of `units` submitted now would have its result: the
        rest of the running call, then every queued unit and its own at the measured
        seconds per unit (0 before the first call is measured)."""
        if self._call_units == 0:
            return 0.0
        per_unit = self._call_s / self._call_units
        running = 0.0
        if self._running_since is not None:
            elapsed = asyncio.get_running_loop().time() - self._running_since
            running = max(self._call_s - elapsed, 0.0)
        return running + (self._queued_units + units) * per_unit

    async def submit(self, item: In, units: int = 1, deadline: float | None = None) -> Out:
        """The item's result. `deadline` (loop time): refuse at once (`Overloaded`) when
        the expected wait ends past it, and drop the item unrun once it has passed."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self.name} queue is full ({self.max_queue} waiting)")
        if deadline is not None and self._busy() and now + self.expected_wait(units) > deadline:
            if self.observer is not None:
                self.observer.refused(self.name)
            raise Overloaded(f"{self.name} is busy: the expected wait exceeds the time left")
        if self._idle() and 0 < self._expected_call_s(units) <= self.inline_max_s:
            return self._run_inline(item, units, now)
        future: asyncio.Future[Out] = loop.create_future()
        pending = _Pending(item, units, future, float("inf") if deadline is None else deadline, now)
        self._queued_units += units
        self._queue.put_nowait(pending)
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._queued_units -= sum(p.units for p in batch)
            started = loop.time()
            # Drop requests whose caller is gone (cancelled) or whose deadline has passed.
            live = [p for p in batch if not p.future.done() and p.deadline > started]
            for pending in batch:
                if not pending.future.done() and pending.deadline <= started:
                    pending.future.set_exception(TimeoutError(f"{self.name}: deadline passed"))
            if len(live) < len(batch) and self.observer is not None:
                self.observer.dropped(self.name, len(batch) - len(live))
            if not live:
                continue
            self._running_since = started
            try:
                results = await loop.run_in_executor(
                    self._executor, self.run_batch, [p.item for p in live]
                )
            except Exception as error:  # the batch failed: every request in it fails
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            finally:
                self._running_since = None
            self._measured(
                sum(p.units for p in live),
                [started - p.queued_at for p in live],
                loop.time() - started,
            )
            for pending, result in zip(live, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)

    def _idle(self) -> bool:
        return self._running_since is None and self._carry is None and self._queue.empty()

    def _busy(self) -> bool:
        """A call runs or requests wait. Only then is a request refused: an idle batcher
        always admits, so a cost estimate measured at a bad moment is refreshed by the
        next call instead of refusing every request from then on."""
        return self._running_since is not None or self._queued_units > 0

    def _expected_call_s(self, units: int) -> float:
        """Seconds one call of `units` is measured to take (0: not measured yet)."""
        if self._call_units == 0:
            return 0.0
        return units * self._call_s / self._call_units

    def _run_inline(self, item: In, units: int, now: float) -> Out:
        """The idle fast path: one call of one request, here on the loop."""
        started = time.perf_counter()
        (result,) = self.run_batch([item])
        self._measured(units, [0.0], time.perf_counter() - started)
        return result

    def _measured(self, units: int, waits_s: list[float], compute_s: float) -> None:
        """Fold one call into the cost model and report it."""
        if self._call_units == 0:
            self._call_s, self._call_units = compute_s, float(units)
        else:
            self._call_s += COST_SMOOTHING * (compute_s - self._call_s)
            self._call_units += COST_SMOOTHING * (units - self._call_units)
        if self.observer is not None:
            self.observer.batch_ran(self.name, units, waits_s, compute_s)

    async def _collect(self) -> list[_Pending[In, Out]]:
        """The next batch: at least one request, at most `max_size` units (a single
        request larger than that goes alone)."""
        first = self._carry if self._carry is not None else await self._queue.get()
        self._carry = None
        batch, units = [first], first.units
        deadline = time.perf_counter() + self.max_delay_s
        while units < self.max_size:
            try:
                pending = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    pending = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if units + pending.units > self.max_size:
                self._carry = pending
                break
            batch.append(pending)
            units += pending.units
        return batch
