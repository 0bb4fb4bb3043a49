"""Progress for long offline jobs: timed steps on stderr, so stdout stays for results."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def say(message: str) -> None:
    """One progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def step(prefix: str, what: str) -> Iterator[None]:
    """Print `[prefix] what ...` now and `done in N s` when the block ends."""
    started = time.perf_counter()
    print(f"[{prefix}] {what} ...", end="", file=sys.stderr, flush=True)
    try:
        yield
    except BaseException:
        print(" failed", file=sys.stderr, flush=True)
        raise
    print(f" done in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
