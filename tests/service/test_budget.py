"""The whole-call budget: a deliberately slow graph, real gRPC, real Redis.

The graphs are made slow in the test by wrapping the bundle's ONNX Runtime sessions
(`SlowSession`): the batchers, the budget and the admission rule are the real ones.
Answers are counted, not timed against tight thresholds: the margin below only
separates "answered at the budget" from "waited for the slow graph". A CTR stage that
cannot finish in time answers with the items' priors and a reason code, never late.

Most tests run the graphs in the worker threads (`inference_on="thread"`, the GPU
default), where the loop stays free during a slow call and can answer at the budget.
On the loop (the CPU default) a running call blocks the loop; what the budget still
guarantees there is tested last: work queued behind a slow call is dropped, not run.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from service.api import scorer_pb2 as pb
from tests.service.harness import ServerThread

T = 1_700_000_000_000
SLOW_S = 4.0  # a slow graph call: far beyond every budget below
MARGIN_S = 1.5  # generous: a loaded 2-core machine; still far below SLOW_S


class SlowSession:
    """An ONNX Runtime session whose `run` first sleeps (in the batcher's thread)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.calls = 0
        self.finished = threading.Event()  # set after each call
        self.started = [threading.Event() for _ in range(64)]  # [k]: call k + 1 began

    def run(self, outputs: Any, feed: dict[str, Any]) -> Any:
        self.calls += 1
        self.started[min(self.calls, 64) - 1].set()
        time.sleep(self.delay_s)
        try:
            return self.inner.run(outputs, feed)
        finally:
            self.finished.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def started(bundle: Path, redis_client_url: str) -> Iterator[ServerThread]:
    with ServerThread(
        bundle, redis_client_url, budget_ms=400, shutdown_grace_s=0.5, inference_on="thread"
    ) as harness:
        yield harness


def slow_down(harness: ServerThread, graph: str, delay_s: float = SLOW_S) -> SlowSession:
    """Make one graph slow: "encoder", or "ctr" (the graph the CTR stage runs per request:
    ctr_pair with the split CTR graph)."""
    assert harness.server is not None
    bundle = harness.server.scorer.bundle
    graph = ctr_graph(harness) if graph == "ctr" else graph
    slow = SlowSession(getattr(bundle, graph), delay_s)
    setattr(bundle, graph, slow)
    return slow


def ctr_graph(harness: ServerThread) -> str:
    """The Bundle attribute of the graph the CTR stage runs per request."""
    assert harness.server is not None
    return "ctr_pair" if harness.server.scorer.split else "ctr"


def timed_score(harness: ServerThread, request: pb.ScoreRequest) -> tuple[str, float]:
    """(the status code, or OK and the degraded reasons joined by '+'; seconds)."""
    began = time.perf_counter()
    try:
        answer = harness.stub.Score(request, timeout=60)
        code = "+".join(["OK", *answer.degraded_reasons])
    except grpc.RpcError as error:
        code = error.code().name
    return code, time.perf_counter() - began


def priors_of(harness: ServerThread, items: list[int]) -> list[float]:
    """The items' priors the server answers with when the CTR stage cannot finish."""
    assert harness.server is not None
    scorer = harness.server.scorer
    return [float(p) for p in scorer.item_priors[scorer.bundle.items(items)]]


def concurrent_scores(
    harness: ServerThread, request: pb.ScoreRequest, calls: int
) -> list[tuple[str, float]]:
    """`calls` Score calls at once, each from its own thread; -> (code, seconds) each."""
    answers: list[tuple[str, float]] = []
    threads = [
        threading.Thread(target=lambda: answers.append(timed_score(harness, request)))
        for _ in range(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def test_a_slow_ctr_graph_cannot_stretch_the_call(
    started: ServerThread, raw: dict[str, list[int]]
) -> None:
    slow = slow_down(started, "ctr")
    request = pb.ScoreRequest(user_id=raw["users"][0], item_ids=raw["items"][:5])
    answers = concurrent_scores(started, request, 12)
    codes = Counter(code for code, _ in answers)
    assert len(answers) == 12
    assert set(codes) <= {"OK+ctr_timeout", "OK+ctr_overloaded"}, codes
    late = [seconds for _, seconds in answers if seconds > 0.4 + MARGIN_S]
    assert late == []  # nobody waited for the slow graph
    slow.finished.wait(30)
    # Work whose caller had gone was dropped, not computed: one slow call ran.
    assert slow.calls == 1


def test_a_late_ctr_stage_answers_with_the_items_priors(
    started: ServerThread, raw: dict[str, list[int]]
) -> None:
    items = [*raw["items"][:4], 987_654_321]  # and an item the model does not know
    slow_down(started, "ctr")
    answer = started.stub.Score(
        pb.ScoreRequest(user_id=raw["users"][0], item_ids=items), timeout=60
    )
    assert answer.degraded and list(answer.degraded_reasons) == ["ctr_timeout"]
    assert list(answer.scores) == pytest.approx(priors_of(started, items))
    assert all(0.0 <= score <= 1.0 for score in answer.scores)


def test_the_grpc_deadline_wins_when_shorter(
    started: ServerThread, raw: dict[str, list[int]]
) -> None:
    assert started.server is not None
    started.server.calls.settings = started.server.settings.model_copy(
        update={"budget_ms": 60_000.0}
    )
    slow_down(started, "ctr")
    request = pb.ScoreRequest(user_id=raw["users"][0], item_ids=raw["items"][:5])
    began = time.perf_counter()
    try:
        answer = started.stub.Score(request, timeout=0.3)
        assert list(answer.degraded_reasons) == ["ctr_timeout"]  # answered at the deadline
    except grpc.RpcError as error:  # ... or just after it, on a loaded box
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - began < 0.3 + MARGIN_S


def test_a_busy_ctr_queue_answers_at_once_with_the_priors(
    started: ServerThread, raw: dict[str, list[int]]
) -> None:
    slow = slow_down(started, "ctr", delay_s=1.0)
    request = pb.ScoreRequest(user_id=raw["users"][0], item_ids=raw["items"][:5])
    first, _ = timed_score(started, request)
    assert first == "OK+ctr_timeout"
    assert slow.finished.wait(30)  # the call ran and its cost was measured
    # An idle batcher admits (the estimate is refreshed by the next call) ...
    second = started.stub.Score.future(request, timeout=60)
    assert slow.started[1].wait(30)
    # ... a busy one does not queue what cannot finish in time behind the running call.
    third, _ = timed_score(started, request)
    assert third == "OK+ctr_overloaded"
    assert list(second.result().degraded_reasons) == ["ctr_timeout"]
    assert slow.calls == 2  # the request answered with priors never reached the graph


def test_a_stale_slow_estimate_does_not_refuse_forever(
    started: ServerThread, raw: dict[str, list[int]]
) -> None:
    """One slow call measured, then the graph is fast again: answers recover by
    themselves (the idle batcher admits, and the next call refreshes the estimate)."""
    assert started.server is not None
    bundle = started.server.scorer.bundle
    fast = getattr(bundle, ctr_graph(started))
    slow = slow_down(started, "ctr", delay_s=1.0)
    request = pb.ScoreRequest(user_id=raw["users"][0], item_ids=raw["items"][:5])
    assert timed_score(started, request)[0] == "OK+ctr_timeout"
    assert slow.finished.wait(30)
    setattr(bundle, ctr_graph(started), fast)
    codes = [timed_score(started, request)[0] for _ in range(5)]
    assert codes == ["OK"] * 5


def test_a_slow_encoder_degrades_the_answer(
    started: ServerThread, raw: dict[str, list[int]]
) -> None:
    user = 660_000_001
    started.stub.RecordQuery(
        pb.RecordQueryRequest(user_id=user, token_ids=raw["words"][:2], timestamp_ms=T - 1000)
    )
    slow = slow_down(started, "encoder", delay_s=1.0)
    request = pb.ScoreRequest(user_id=user, item_ids=raw["items"][:3], request_time_ms=T)
    answer = started.stub.Score(request, timeout=60)
    assert answer.degraded and list(answer.degraded_reasons) == ["encoder_timeout"]
    assert len(answer.scores) == 3
    assert slow.finished.wait(30)  # measured: a slow encoder
    # While a second slow call runs, the next request does not even queue for it.
    second = started.stub.Score.future(request, timeout=60)
    assert slow.started[1].wait(30)
    again = started.stub.Score(request, timeout=60)
    assert list(again.degraded_reasons) == ["encoder_overloaded"]
    assert list(second.result().degraded_reasons) == ["encoder_timeout"]
    assert slow.calls == 2


def test_on_the_loop_work_queued_behind_a_slow_call_is_dropped_not_run(
    bundle: Path, redis_client_url: str, raw: dict[str, list[int]]
) -> None:
    with ServerThread(
        bundle, redis_client_url, budget_ms=400, shutdown_grace_s=0.5, inference_on="loop"
    ) as harness:
        slow = slow_down(harness, "ctr", delay_s=2.0)
        request = pb.ScoreRequest(user_id=raw["users"][0], item_ids=raw["items"][:5])
        answers = concurrent_scores(harness, request, 6)
        assert slow.started[0].wait(30)
        assert len(answers) == 6
        # The calls already waiting when the slow one ended were past their budget:
        # answered with the priors, their model work dropped unrun. (A request that
        # reached the server only after the loop was free again starts its budget then,
        # and is computed.)
        # (A call whose Redis read was held up by the blocked loop also says so.)
        codes = Counter(code for code, _ in answers)
        assert all(code.startswith("OK") for code in codes), codes
        assert any("ctr_timeout" in code for code in codes), codes
        assert slow.calls < 6


def test_a_full_ctr_queue_is_overload_not_lateness(
    started: ServerThread, raw: dict[str, list[int]]
) -> None:
    """A queue holding `max_queue` requests refuses with RESOURCE_EXHAUSTED (callers back
    off), unlike a queue that is merely too slow for one request's budget."""
    assert started.server is not None
    started.server.scorer.ctr.max_queue = 0  # every request finds the queue full
    request = pb.ScoreRequest(user_id=raw["users"][0], item_ids=raw["items"][:5])
    assert timed_score(started, request)[0] == "RESOURCE_EXHAUSTED"
