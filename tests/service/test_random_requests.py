"""Random Score / RecordQuery / RecordClicks / RecordSearchClicks requests (extreme ids,
times, sizes) against a real server: every answer is OK and well formed, or
INVALID_ARGUMENT (or NOT_FOUND for search clicks of a search never recorded); it keeps
serving."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api import scorer_pb2 as pb
from service.transport.calls import TIME_FLOOR_MS
from tests.service.harness import ServerThread

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
DAY_MS = 24 * 3600 * 1000
NOW_MS = int(time.time() * 1000)
IDS = st.one_of(
    INT64, st.integers(min_value=0, max_value=2_000), st.sampled_from([0, 1, 2**63 - 1])
)
TIMES = st.one_of(
    st.just(0),
    INT64,
    st.integers(min_value=TIME_FLOOR_MS - 5, max_value=NOW_MS + DAY_MS + 5_000),
)
MAX_ITEMS = 40


def id_lists(most: int) -> st.SearchStrategy[list[int]]:
    return st.lists(IDS, max_size=most + 3)


REQUESTS = st.one_of(
    st.builds(
        lambda u, i, t: ("Score", pb.ScoreRequest(user_id=u, item_ids=i, request_time_ms=t)),
        IDS,
        id_lists(MAX_ITEMS),
        TIMES,
    ),
    st.builds(
        lambda u, w, t: (
            "RecordQuery",
            pb.RecordQueryRequest(user_id=u, token_ids=w, timestamp_ms=t),
        ),
        IDS,
        id_lists(16),
        TIMES,
    ),
    st.builds(
        lambda u, i, t: (
            "RecordClicks",
            pb.RecordClicksRequest(user_id=u, item_ids=i, timestamp_ms=t),
        ),
        IDS,
        id_lists(16),
        TIMES,
    ),
    st.builds(
        lambda u, i, t: (
            "RecordSearchClicks",
            pb.RecordSearchClicksRequest(user_id=u, item_ids=i, search_timestamp_ms=t),
        ),
        IDS,
        id_lists(16),
        TIMES,
    ),
)


@pytest.fixture(scope="module")
def served(bundle: Path, redis_url: str) -> Iterator[ServerThread]:
    with ServerThread(
        bundle,
        redis_url,
        budget_ms=30_000,
        max_candidates=MAX_ITEMS,
        max_query_tokens=16,
        max_clicks_per_call=16,
        max_search_clicks=16,
    ) as harness:
        yield harness


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(call=REQUESTS)
def test_every_answer_is_ok_or_invalid_argument(
    served: ServerThread, call: tuple[str, Message]
) -> None:
    method, request = call
    try:
        answer = getattr(served.stub, method)(request, timeout=60)
    except grpc.RpcError as error:
        allowed = {grpc.StatusCode.INVALID_ARGUMENT}
        if method == "RecordSearchClicks":
            allowed.add(grpc.StatusCode.NOT_FOUND)
        assert error.code() in allowed, (error.code(), error.details())
        assert error.details()
        return
    if method == "Score":
        assert isinstance(request, pb.ScoreRequest)
        assert len(answer.scores) == len(request.item_ids)
        assert all(math.isfinite(s) and 0.0 <= s <= 1.0 for s in answer.scores)
        assert answer.model_version
    elif method == "RecordSearchClicks":
        assert answer.clicks_in_search >= 1
    else:
        assert answer.history_length >= 1


def test_the_server_still_serves_afterwards(served: ServerThread) -> None:
    answer = served.stub.Score(pb.ScoreRequest(user_id=1, item_ids=[1, 2, 3]), timeout=60)
    assert len(answer.scores) == 3
