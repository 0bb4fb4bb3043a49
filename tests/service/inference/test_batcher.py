"""MicroBatcher: batches form under load, results keep request order, limits hold.

Deterministic, without sleeps: in the thread mode the model function blocks on a
`threading.Event` (it runs in the batcher's worker thread), so requests submitted while
a call is in flight queue up behind it, and the test releases the call only once they
are queued. In the loop mode the call runs in a loop callback, so requests submitted in
one task step (`gather`) are queued together before it runs.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, TypeVar

import pytest

from service.errors import Overloaded
from service.inference.batcher import MicroBatcher

T = TypeVar("T")
WAIT_S = 30  # a bound on waiting for an event that must come: a hang fails, nothing slower


async def queued(batcher: MicroBatcher[Any, T], item: Any, units: int = 1) -> asyncio.Task[T]:
    """Submit `item`; return once the request is in the batcher's queue.

    `entered` is set in the same task step as `submit` puts the request on the queue (it
    runs synchronously up to awaiting its future), so when the wait returns it is queued.
    """
    entered = asyncio.Event()

    async def submit() -> T:
        entered.set()
        return await batcher.submit(item, units)

    task = asyncio.ensure_future(submit())
    await asyncio.wait_for(entered.wait(), WAIT_S)
    return task


async def in_thread(event: threading.Event) -> None:
    """Wait, off the loop, for an event set in the batcher's worker thread."""
    assert await asyncio.to_thread(event.wait, WAIT_S)


async def until(condition: Any) -> None:
    """Yield to the loop until `condition()` holds (bounded: a hang fails)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def recording_model() -> tuple[list[list[int]], Any]:
    """A model that returns its inputs and records every batch it was called with."""
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(items)
        return items

    return calls, run


class BlockingModel:
    """A batch function that records its calls and blocks each one until released."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.started = threading.Event()  # the first call is in flight
        self.release = threading.Event()

    def __call__(self, items: list[Any]) -> list[Any]:
        self.calls.append(items)
        self.started.set()
        assert self.release.wait(WAIT_S)
        return [i * 10 if isinstance(i, int) else i for i in items]


def test_concurrent_requests_share_calls_and_get_their_own_results() -> None:
    model = BlockingModel()

    async def go() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            "t", model, max_size=4, max_delay_s=0.0, max_queue=100
        )
        batcher.start()
        first = await queued(batcher, 0)
        await in_thread(model.started)  # the first call is in flight with [0] alone
        rest = [await queued(batcher, i) for i in range(1, 7)]  # these queue behind it
        model.release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    assert asyncio.run(go()) == [0, 10, 20, 30, 40, 50, 60]
    assert model.calls[0] == [0]  # an idle worker dispatches at once
    assert model.calls[1:] == [[1, 2, 3, 4], [5, 6]]  # then batches of at most max_size


def test_units_bound_a_batch_and_an_oversize_request_goes_alone() -> None:
    model = BlockingModel()

    async def go() -> None:
        batcher: MicroBatcher[str, str] = MicroBatcher(
            "t", model, max_size=10, max_delay_s=0.0, max_queue=100
        )
        batcher.start()
        blocker = await queued(batcher, "x", 1)
        await in_thread(model.started)
        sizes = {"a": 6, "b": 3, "c": 4, "big": 25}
        futures = [await queued(batcher, k, n) for k, n in sizes.items()]
        model.release.set()
        await asyncio.gather(blocker, *futures)
        await batcher.stop()

    asyncio.run(go())
    assert model.calls == [["x"], ["a", "b"], ["c"], ["big"]]


def test_full_queue_is_overloaded_and_failures_reach_every_request() -> None:
    started, release = threading.Event(), threading.Event()

    def run(items: list[int]) -> list[int]:
        started.set()
        assert release.wait(WAIT_S)
        if 99 in items:
            raise RuntimeError("model failed")
        return items

    async def go() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            "t", run, max_size=8, max_delay_s=0.0, max_queue=2
        )
        batcher.start()
        blocker = await queued(batcher, 1)
        await in_thread(started)  # taken off the queue: it is empty again
        queued_ = [await queued(batcher, 99) for _ in range(2)]  # the queue is now full
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.submit(3)
        release.set()
        assert await blocker == 1
        for future in queued_:
            with pytest.raises(RuntimeError, match="model failed"):
                await future
        await batcher.stop()

    asyncio.run(go())


@pytest.mark.parametrize(("max_delay_s", "expected"), [(60.0, [[1, 2]]), (0.0, [[1], [2]])])
def test_max_delay_gathers_requests_arriving_after_the_first(
    max_delay_s: float, expected: list[list[int]]
) -> None:
    """The second request arrives only after the dispatcher has taken the first: with a
    delay it joins the first's batch (which then is full and goes at once, so the long
    delay is never waited out); without one the first has already gone alone."""
    calls, run = recording_model()

    async def go() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            "t", run, max_size=2, max_delay_s=max_delay_s, max_queue=100
        )
        batcher.start()
        first = await queued(batcher, 1)
        await until(lambda: batcher._queue.qsize() == 0)  # the dispatcher has taken it
        second = await queued(batcher, 2)
        assert list(await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)) == [1, 2]
        await batcher.stop()

    asyncio.run(go())
    assert calls == expected


def test_a_batch_that_does_not_fill_goes_when_its_delay_is_over() -> None:
    calls, run = recording_model()

    async def go() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            "t", run, max_size=8, max_delay_s=0.01, max_queue=100
        )
        batcher.start()
        assert await asyncio.wait_for(batcher.submit(1), WAIT_S) == 1  # not held forever
        await batcher.stop()

    asyncio.run(go())
    assert calls == [[1]]


def test_on_the_loop_requests_ready_in_one_turn_share_one_call_on_the_loop_thread() -> None:
    """Loop mode: no worker thread; what is queued when the dispatch runs is one call
    (bounded by max_size), and each request gets its own result."""
    threads: list[str] = []
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        threads.append(threading.current_thread().name)
        calls.append(items)
        return [i * 2 for i in items]

    async def go() -> list[int]:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            "t", run, max_size=3, max_delay_s=0.0, max_queue=100, on_loop=True
        )
        batcher.start()
        try:
            return list(await asyncio.gather(*(batcher.submit(i) for i in range(5))))
        finally:
            await batcher.stop()

    assert asyncio.run(go()) == [0, 2, 4, 6, 8]
    assert calls == [[0, 1, 2], [3, 4]]
    assert set(threads) == {threading.main_thread().name}


def test_on_the_loop_a_failed_call_fails_its_requests_and_the_next_call_runs() -> None:
    def run(items: list[int]) -> list[int]:
        if 99 in items:
            raise RuntimeError("model failed")
        return items

    async def go() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            "t", run, max_size=1, max_delay_s=0.0, max_queue=100, on_loop=True
        )
        batcher.start()
        try:
            bad, good = await asyncio.gather(
                batcher.submit(99), batcher.submit(1), return_exceptions=True
            )
            assert isinstance(bad, RuntimeError) and good == 1
        finally:
            await batcher.stop()

    asyncio.run(go())


def test_on_the_loop_a_request_past_its_deadline_is_dropped_unrun() -> None:
    calls, run = recording_model()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        batcher: MicroBatcher[int, int] = MicroBatcher(
            "t", run, max_size=8, max_delay_s=0.0, max_queue=100, on_loop=True
        )
        batcher.start()
        try:
            late = batcher.submit(1, deadline=loop.time() - 1.0)  # idle: admitted, then dropped
            on_time = batcher.submit(2, deadline=loop.time() + WAIT_S)
            results = await asyncio.gather(late, on_time, return_exceptions=True)
            assert isinstance(results[0], TimeoutError) and results[1] == 2
        finally:
            await batcher.stop()

    asyncio.run(go())
    assert calls == [[2]]


def test_stopping_fails_what_is_still_queued() -> None:
    calls, run = recording_model()

    async def go() -> None:
        batcher: MicroBatcher[int, int] = MicroBatcher(
            "t", run, max_size=8, max_delay_s=60.0, max_queue=100, on_loop=True
        )
        batcher.start()
        waiting = await queued(batcher, 1)  # held by the long delay
        await batcher.stop()
        with pytest.raises(Overloaded, match="stopped"):
            await waiting

    asyncio.run(go())
    assert calls == []
