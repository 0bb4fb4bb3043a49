"""Wait for work until a deadline without relying on the work to honour a cancellation.

`asyncio.timeout` bounds an await only if the cancellation it throws travels back up:
when it is lost on the way (measured: a Score's Redis read inside a gRPC handler task,
Redis paused by SIGSTOP, kept reading past its timeout until Redis answered or redis-py's
2 s socket timeout fired, although the timeout had expired and `Task.cancelling()` was 1),
the call is held for as long as the work takes. `finish_by` turns the bound around: the
caller waits on its own timer (`asyncio.wait`), and is woken at the deadline whatever the
work does; late work is cancelled and left to end by itself, referenced until it does,
its outcome retrieved so that nothing is logged as "never retrieved".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

_abandoned: set[asyncio.Future[Any]] = set()
"""Late work still running after its caller moved on (kept alive until it ends)."""


def abandoned_count() -> int:
    """How much late work is still ending in the background (tests and metrics read it)."""
    return len(_abandoned)


async def finish_by(work: Awaitable[T], until: float, *, cancel_late: bool = True) -> T:
    """`work`'s result when it ends by `until` (loop time); TimeoutError at `until` when not.

    A coroutine runs as its own task (one task per call); a future is waited on as it is.
    A late one is abandoned: cancelled (`cancel_late`; the caller does not wait for the
    cancellation to take effect) or left to finish (its outcome retrieved when it does).
    If the caller itself is cancelled meanwhile, the work is cancelled too.
    """
    future: asyncio.Future[T] = asyncio.ensure_future(work)
    if not future.done():
        timeout = until - asyncio.get_running_loop().time()
        try:
            await asyncio.wait((future,), timeout=max(timeout, 0.0))
        except BaseException:
            _abandon(future)
            raise
    if not future.done():
        _abandon(future, cancel=cancel_late)
        raise TimeoutError
    return future.result()


def _abandon(future: asyncio.Future[Any], cancel: bool = True) -> None:
    if cancel:
        future.cancel()
    if future.done():
        return
    _abandoned.add(future)
    future.add_done_callback(_forget)


def _forget(future: asyncio.Future[Any]) -> None:
    _abandoned.discard(future)
    if not future.cancelled():
        future.exception()  # retrieved: a late failure is expected, not an unhandled error
