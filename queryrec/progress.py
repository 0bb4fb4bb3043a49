"""Progress for long offline jobs: timed steps on stderr, so stdout stays for results."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

LOG_INTERVAL_S = 30.0
"""Least seconds between two progress updates written to a log (not a terminal)."""


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


def bar(
    iterable: Iterable[T] | None = None,
    *,
    enabled: bool = True,
    file: IO[str] | None = None,
    **options: Any,
) -> tqdm[T]:
    """A tqdm progress bar on stderr (or `file`): redrawn in place in a terminal; in a log
    (not a terminal) one update at most every `LOG_INTERVAL_S`, so that a job's log holds
    a few progress lines, not one per update. `enabled` False: no output at all."""
    stream = sys.stderr if file is None else file
    interactive = stream.isatty()
    options.setdefault("mininterval", 0.1 if interactive else LOG_INTERVAL_S)
    if not interactive:
        options.setdefault("maxinterval", LOG_INTERVAL_S)
        options.setdefault("ascii", True)
    return tqdm(iterable, file=stream, disable=not enabled, **options)
