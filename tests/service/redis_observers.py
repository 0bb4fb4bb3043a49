"""What the Redis fault tests share: an observer that records the state's events, and a
poll that waits on a condition instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

WAIT_S = 60.0
"""Overall limit of a wait for a condition (generous: the machine is shared)."""


class Recorder:
    """A RedisEvents observer that keeps what it was told."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.lost: list[str] = []
        self.regained: list[float] = []

    def redis_error(self, operation: str) -> None:
        self.errors.append(operation)

    def redis_lost(self, detail: str) -> None:
        self.lost.append(detail)

    def redis_regained(self, down_s: float) -> None:
        self.regained.append(down_s)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds (fails after WAIT_S: a hang, not a slow machine)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)
