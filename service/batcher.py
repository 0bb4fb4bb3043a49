"""An asyncio micro-batcher: many concurrent requests, one model call per batch, off the loop.

Requests queue up; one dispatcher task takes what is queued (up to `max_size` units, for
example users for the encoder or candidate pairs for the CTR graph), waits at most
`max_delay_s` for more while the batch is not full, runs the batch function in a
dedicated worker thread (ONNX Runtime releases the GIL, so the event loop keeps serving
gRPC and Redis meanwhile), and resolves each request's future with its own result. While
one batch runs, the next one fills: under load the batch grows by itself; at low load a
request waits at most `max_delay_s` (MEASURED.md: a fixed delay hurts at low load, so keep
it small). Cancelled requests (deadline passed) are dropped before the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.errors import Overloaded

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    units: int
    future: asyncio.Future[Out]


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
    ):
        self.name = name
        self.run_batch = run_batch
        self.max_size, self.max_delay_s, self.max_queue = max_size, max_delay_s, max_queue
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue()
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

    async def submit(self, item: In, units: int = 1) -> Out:
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self.name} queue is full ({self.max_queue} waiting)")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, units, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.done()]  # drop cancelled requests
            if not live:
                continue
            try:
                results = await loop.run_in_executor(
                    self._executor, self.run_batch, [p.item for p in live]
                )
            except Exception as error:  # the batch failed: every request in it fails
                for pending in live:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, result in zip(live, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)

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
