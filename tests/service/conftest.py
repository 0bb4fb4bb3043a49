"""Fixtures of the service tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """`queryrec serve` defaults to one worker per core; tests that run it in-process
    (the CLI's `main`) get one process on every machine unless they ask for more."""
    monkeypatch.setenv("QUERYREC_WORKERS", "1")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """`queryrec serve` run in-process (tests call the CLI's `main`) configures the root
    logger for the process; put it back so later tests see only their own output."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def raw(bundle: Path) -> dict[str, list[int]]:
    """Some raw ids the tiny bundle knows: the first 50 users, items and words."""
    import polars as pl

    return {
        name: pl.read_parquet(bundle / f"maps/{name}.parquet")["raw_id"].to_list()[:50]
        for name in ("users", "items", "words")
    }
