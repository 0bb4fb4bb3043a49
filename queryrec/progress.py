"""Progress for long offline jobs: timed steps on stderr, so stdout stays for results."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


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


class _LogLine(tqdm):  # type: ignore[misc]  # tqdm ships no type information
    """A bar for a log (not a terminal): silent while it runs, then one line with the
    final count, rate and postfix (an epoch's loss) when it closes."""

    _closing = False

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self._closing:
            self.fp.write(self.__str__() if msg is None else msg)
        return True

    def close(self) -> None:
        self._closing = True
        super().close()


def bar(
    iterable: Iterable[T] | None = None,
    *,
    enabled: bool = True,
    file: IO[str] | None = None,
    **options: Any,
) -> tqdm[T]:
    """A tqdm progress bar on stderr (or `file`): redrawn in place in a terminal; in a log
    (not a terminal) one line when it ends (an epoch, a stage), none while it runs, so
    that a job's log holds results, not redraws. `enabled` False: no output at all."""
    stream = sys.stderr if file is None else file
    if stream.isatty():
        return tqdm(iterable, file=stream, disable=not enabled, **options)
    options.setdefault("ascii", True)
    return _LogLine(iterable, file=stream, disable=not enabled, **options)
