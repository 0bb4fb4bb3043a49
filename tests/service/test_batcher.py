"""MicroBatcher: batches form under load, results keep request order, limits hold."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.batcher import MicroBatcher
from service.errors import Overloaded


def test_concurrent_requests_share_calls_and_get_their_own_results() -> None:
    calls: list[list[int]] = []
    release = threading.Event()

    def run(items: list[int]) -> list[int]:
        calls.append(items)
        release.wait(5)  # the first call blocks so that the rest queue up behind it
        return [i * 10 for i in items]

    async def go() -> list[int]:
        batcher = MicroBatcher("t", run, max_size=4, max_delay_s=0.0, max_queue=100)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(first, *rest)
        await batcher.stop()
        return results

    assert asyncio.run(go()) == [0, 10, 20, 30, 40, 50, 60]
    assert calls[0] == [0]  # an idle worker dispatches at once
    assert calls[1:] == [[1, 2, 3, 4], [5, 6]]  # then batches of at most max_size


def test_units_bound_a_batch_and_an_oversize_request_goes_alone() -> None:
    calls: list[list[str]] = []
    release = threading.Event()

    def run(items: list[str]) -> list[str]:
        calls.append(items)
        release.wait(5)
        return items

    async def go() -> None:
        batcher = MicroBatcher("t", run, max_size=10, max_delay_s=0.0, max_queue=100)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit("x", 1))
        await asyncio.sleep(0.05)
        sizes = {"a": 6, "b": 3, "c": 4, "big": 25}
        futures = [asyncio.ensure_future(batcher.submit(k, n)) for k, n in sizes.items()]
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(blocker, *futures)
        await batcher.stop()

    asyncio.run(go())
    assert calls == [["x"], ["a", "b"], ["c"], ["big"]]


def test_full_queue_is_overloaded_and_failures_reach_every_request() -> None:
    release = threading.Event()

    def run(items: list[int]) -> list[int]:
        release.wait(5)
        if 99 in items:
            raise RuntimeError("model failed")
        return items

    async def go() -> None:
        batcher = MicroBatcher("t", run, max_size=8, max_delay_s=0.0, max_queue=2)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher.submit(99)) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.submit(3)
        release.set()
        assert await blocker == 1
        for future in queued:
            with pytest.raises(RuntimeError, match="model failed"):
                await future
        await batcher.stop()

    asyncio.run(go())


def test_max_delay_gathers_requests_arriving_soon_after() -> None:
    calls: list[list[int]] = []

    def run(items: list[int]) -> list[int]:
        calls.append(items)
        return items

    async def go() -> None:
        batcher = MicroBatcher("t", run, max_size=8, max_delay_s=0.2, max_queue=100)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(batcher.submit(2))
        await asyncio.gather(first, second)
        await batcher.stop()

    asyncio.run(go())
    assert calls == [[1, 2]]
