"""An asyncio micro-batcher: many concurrent requests, one model call per batch.

Requests queue up; the dispatcher takes what is queued (up to `max_size` units, for
example users for the encoder or candidate pairs for the CTR graph), waits at most
`max_delay_s` for more while the batch is not full, runs the batch function and resolves
each request's future with its own result. Under load the batch grows by itself: what
queued during one call is the next batch; at low load a request waits at most
`max_delay_s` (MEASURED.md: a fixed delay hurts at low load, so keep it small).

Where the call runs (`on_loop`):
- **on the event loop** (the CPU default): the dispatch is a loop callback scheduled
  when a request is queued, so every request that became ready in the same loop turn
  joins one call, and no thread hand-off (two wake-ups and a GIL round trip per call)
  is paid. The loop is blocked while the call runs, which costs nothing on a CPU
  when each worker process has one core: there is no second core for a thread to use
  (docs/BENCHMARKS.md: against the worker thread, 0.87x server CPU per Score with two
  workers at the same rate, and fewer late calls);
- **in a dedicated worker thread** (the GPU default): ONNX Runtime releases the GIL, so
  the loop keeps serving gRPC and Redis while the device computes.

Time, not queue length, decides admission: each request says by when (loop time) it
must have its result; `submit` refuses it at once (`Overloaded`) when the batcher is busy
and the expected wait, from the measured seconds per unit and what is queued and
running, would end past that. An idle batcher always admits (its next call refreshes
the estimate; otherwise one slow measurement could refuse every later request).
Requests whose caller is gone (cancelled, deadline passed) are dropped before the call.
`max_queue` is only a hard memory cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from service.errors import Overloaded, QueueFull

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


def _stopped(items: list[Any]) -> Sequence[Any]:
    """The batch function of a stopped batcher (it let go of its own: `MicroBatcher.stop`)."""
    raise Overloaded("the batcher is stopped")


class MicroBatcher(Generic[In, Out]):
    """`await batcher.submit(item, units)` -> the item's result from one batched call.

    `run_batch(items) -> results`, results in item order, runs on the event loop
    (`on_loop`) or in the batcher's own thread.
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
        on_loop: bool = False,
    ):
        self.name = name
        self.run_batch = run_batch
        self.max_size, self.max_delay_s, self.max_queue = max_size, max_delay_s, max_queue
        self.observer = observer
        self.on_loop = on_loop
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue()
        self._queued_units = 0  # units waiting (queue + carry)
        self._running_since: float | None = None  # loop time the current call started
        # Cost model: running averages of a call's seconds and units (0: not measured yet).
        self._call_s = 0.0
        self._call_units = 0.0
        self._executor: ThreadPoolExecutor | None = None
        if not on_loop:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self._task: asyncio.Task[None] | None = None  # the thread mode's dispatcher
        self._dispatch: asyncio.Handle | None = None  # loop mode's
        self._started = False
        self._carry: _Pending[In, Out] | None = None  # did not fit the last batch

    def start(self) -> None:
        self._started = True
        loop = asyncio.get_running_loop()
        if self._executor is not None and self._task is None:
            self._task = loop.create_task(self._loop(), name=self.name)
        elif self.on_loop and not self._queue.empty():
            self._schedule(loop)

    async def stop(self) -> None:
        """Stop dispatching; requests still queued fail with `Overloaded` (callers
        normally are gone by now: a retiring scorer waits for its calls first).

        A stopped batcher lets go of its batch function and observer: the function is a
        bound method of the Scorer that owns the batcher, and keeping it would be a
        reference cycle (Scorer -> batcher -> method -> Scorer) that only Python's cyclic
        collector breaks, at a time of its choosing, so a reloaded-away Scorer and its
        ONNX Runtime sessions would outlive their retirement by many reloads."""
        self._started = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._dispatch is not None:
            self._dispatch.cancel()
            self._dispatch = None
        waiting = [self._carry] if self._carry is not None else []
        self._carry = None
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(Overloaded(f"{self.name} stopped"))
        self._queued_units = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.run_batch = _stopped
        self.observer = None

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
        return await self.enqueue(item, units, deadline)

    def enqueue(
        self, item: In, units: int = 1, deadline: float | None = None
    ) -> asyncio.Future[Out]:
        """`submit` without the wait: the future of the item's result (Overloaded raised at
        once). Cancelling the future drops the item if it has not run yet."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self.name} queue is full ({self.max_queue} waiting)")
        if deadline is not None and self._busy() and now + self.expected_wait(units) > deadline:
            if self.observer is not None:
                self.observer.refused(self.name)
            raise Overloaded(f"{self.name} is busy: the expected wait exceeds the time left")
        future: asyncio.Future[Out] = loop.create_future()
        pending = _Pending(item, units, future, float("inf") if deadline is None else deadline, now)
        self._queued_units += units
        self._queue.put_nowait(pending)
        if self.on_loop and self._started:
            self._schedule(loop)
        return future

    # ------------------------------------------------------------ on the event loop

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run a batch once the loop has run what is ready now (or after the delay)."""
        if self._dispatch is None:
            if self.max_delay_s > 0:
                self._dispatch = loop.call_later(self.max_delay_s, self._dispatch_on_loop)
            else:
                self._dispatch = loop.call_soon(self._dispatch_on_loop)

    def _dispatch_on_loop(self) -> None:
        self._dispatch = None
        loop = asyncio.get_running_loop()
        batch = self._take_queued()
        self._queued_units -= sum(p.units for p in batch)
        live = self._live(batch, loop.time())
        if live:
            started = loop.time()
            self._running_since = started
            try:
                results = self.run_batch([p.item for p in live])
            except Exception as error:  # the batch failed: every request in it fails
                self._fail(live, error)
            else:
                self._finish(live, results, started, loop.time())
            finally:
                self._running_since = None
        if self._carry is not None or not self._queue.empty():
            self._schedule(loop)

    def _take_queued(self) -> list[_Pending[In, Out]]:
        """What is queued now, up to `max_size` units (a single larger request alone)."""
        first = self._carry if self._carry is not None else self._queue.get_nowait()
        self._carry = None
        batch, units = [first], first.units
        while units < self.max_size and not self._queue.empty():
            joined = self._join(batch, units, self._queue.get_nowait())
            if joined is None:
                break
            units = joined
        return batch

    # ------------------------------------------------------------ in the worker thread

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._queued_units -= sum(p.units for p in batch)
            started = loop.time()
            live = self._live(batch, started)
            if not live:
                continue
            self._running_since = started
            try:
                results = await loop.run_in_executor(
                    self._executor, self.run_batch, [p.item for p in live]
                )
            except Exception as error:  # the batch failed: every request in it fails
                self._fail(live, error)
                continue
            finally:
                self._running_since = None
            self._finish(live, results, started, loop.time())

    # ------------------------------------------------------------ both modes

    def _live(self, batch: list[_Pending[In, Out]], now: float) -> list[_Pending[In, Out]]:
        """Drop requests whose caller is gone (cancelled) or whose deadline has passed."""
        live = [p for p in batch if not p.future.done() and p.deadline > now]
        for pending in batch:
            if not pending.future.done() and pending.deadline <= now:
                pending.future.set_exception(TimeoutError(f"{self.name}: deadline passed"))
        if len(live) < len(batch) and self.observer is not None:
            self.observer.dropped(self.name, len(batch) - len(live))
        return live

    def _fail(self, live: list[_Pending[In, Out]], error: Exception) -> None:
        for pending in live:
            if not pending.future.done():
                pending.future.set_exception(error)

    def _finish(
        self, live: list[_Pending[In, Out]], results: Sequence[Out], started: float, ended: float
    ) -> None:
        """Fold the call into the cost model and hand each request its result."""
        self._measured(
            sum(p.units for p in live), [started - p.queued_at for p in live], ended - started
        )
        for pending, result in zip(live, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    def _busy(self) -> bool:
        """A call runs or requests wait. Only then is a request refused: an idle batcher
        always admits, so a cost estimate measured at a bad moment is refreshed by the
        next call instead of refusing every request from then on."""
        return self._running_since is not None or self._queued_units > 0

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
            joined = self._join(batch, units, pending)
            if joined is None:
                break
            units = joined
        return batch

    def _join(
        self, batch: list[_Pending[In, Out]], units: int, pending: _Pending[In, Out]
    ) -> int | None:
        """Add `pending` to `batch` if it fits (-> the batch's units now); otherwise keep
        it for the next batch (None: this batch is closed)."""
        if units + pending.units > self.max_size:
            self._carry = pending
            return None
        batch.append(pending)
        return units + pending.units
