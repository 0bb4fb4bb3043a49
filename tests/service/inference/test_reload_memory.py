"""Reloads do not grow memory (real gRPC server, real Redis, the tiny bundle).

Each reload builds a new Scorer (two ONNX Runtime sessions whose arenas the warm-up
grows) beside the old one; the old one must be freed once retired, by reference counting
alone: a reference cycle would leave it, sessions and all, to Python's cyclic collector,
which runs at times of its own choosing, so memory would climb with every reload and
fall only in irregular drops. The tests run with the cyclic collector off so that a
collection cannot hide such a cycle.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import onnxruntime as ort
import pytest

from service.api import scorer_pb2 as pb
from service.inference.model_holder import release_freed_memory
from tests.service.harness import ServerThread

T = 1_700_000_000_000
RELOADS = 20  # the RSS test's reloads (about 0.3 s each on a 2-core machine)
RSS_BOUND = 1.2  # RSS after the last reload / after the first (docs/serving.md, reload)


@pytest.fixture(params=["loop"])
def served(
    bundle: Path, redis_client_url: str, request: pytest.FixtureRequest
) -> Iterator[ServerThread]:
    """A served bundle; model calls on the event loop unless a test asks for `thread`
    (indirect parametrization: the GPU path, one worker thread per batcher)."""
    with ServerThread(
        bundle, redis_client_url, budget_ms=10_000, inference_on=request.param
    ) as harness:
        yield harness


@pytest.fixture
def no_cyclic_collector() -> Iterator[None]:
    """The cyclic garbage collector off (reference counting still frees)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def light_load(harness: ServerThread, raw: dict[str, list[int]], round_: int) -> None:
    """A few calls through both graphs: a new search for a user (the encoder runs and
    the query vector is cached in the background), then Score calls for a few users."""
    user = raw["users"][round_ % 10]
    harness.stub.RecordQuery(
        pb.RecordQueryRequest(
            user_id=user, token_ids=raw["words"][round_ % 7 : round_ % 7 + 3], timestamp_ms=T - 1
        )
    )
    for n in range(3):
        answer = harness.score(raw["users"][(round_ + n) % 10], raw["items"][n : n + 10], T)
        assert len(answer.scores) == 10


def reload_and_settle(harness: ServerThread) -> None:
    """One reload of the bundle's folder, then wait until the old scorer is retired."""
    assert harness.server is not None
    server = harness.server

    async def reload() -> None:
        result = await server.reload()
        assert result.ok, result.error
        await server.holder.retired()

    harness.run(reload())


def live_sessions() -> int:
    """ONNX Runtime sessions alive in this process."""
    return sum(type(o) is ort.InferenceSession for o in gc.get_objects())


def metric_samples(harness: ServerThread) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """Every sample (name, labels) the server's registry exports now."""
    assert harness.server is not None
    return [
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in harness.server.metrics.registry.collect()
        for sample in family.samples
    ]


def rss_mb() -> float:
    """This process's resident memory (VmRSS), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize("served", ["loop", "thread"], indirect=True)
def test_a_retired_scorer_and_its_sessions_are_freed_without_a_collection(
    served: ServerThread, raw: dict[str, list[int]], no_cyclic_collector: None
) -> None:
    assert served.server is not None
    holder = served.server.holder
    light_load(served, raw, 0)
    reload_and_settle(served)
    sessions, samples, threads = live_sessions(), metric_samples(served), threading.active_count()
    for round_ in range(1, 5):
        old = holder.current
        gone = [weakref.ref(o) for o in (old, old.bundle, old.bundle.ctr, old.bundle.encoder)]
        del old
        light_load(served, raw, round_)
        reload_and_settle(served)
        assert [ref() for ref in gone] == [None] * len(gone), f"reload {round_ + 1}"
        assert live_sessions() == sessions
        assert threading.active_count() == threads  # the batchers' worker threads end
        assert metric_samples(served) == samples  # no child per model version


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS read from /proc")
def test_memory_after_many_reloads_stays_near_the_first(
    served: ServerThread, raw: dict[str, list[int]], no_cyclic_collector: None
) -> None:
    if not release_freed_memory():
        pytest.skip("no glibc malloc_trim: freed heap pages are not handed back here")
    light_load(served, raw, 0)
    reload_and_settle(served)
    first = rss_mb()
    series = [first]
    for round_ in range(1, RELOADS):
        light_load(served, raw, round_)
        reload_and_settle(served)
        series.append(rss_mb())
    assert series[-1] <= RSS_BOUND * first, [round(value) for value in series]
