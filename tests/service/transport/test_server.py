"""The scoring service end to end: real gRPC server, real Redis, the tiny bundle."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.api import scorer_pb2 as pb
from service.inference.scoring import now_ms
from tests.service.harness import ServerThread

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
T = 1_700_000_000_000  # a fixed request time


@pytest.fixture(scope="module")
def served(bundle: Path, redis_url: str) -> Iterator[ServerThread]:
    with ServerThread(bundle, redis_url, budget_ms=5000, max_candidates=50) as harness:
        yield harness


async def drain_background_writes(harness: ServerThread) -> None:
    """Wait, in the server's loop, for the scorer's fire-and-forget tasks (the query-vector
    cache writes)."""
    assert harness.server is not None
    await asyncio.gather(*harness.server.scorer._background)


def score(server: ServerThread, user: int, items: list[int], at: int = T) -> pb.ScoreResponse:
    response: pb.ScoreResponse = server.stub.Score(
        pb.ScoreRequest(user_id=user, item_ids=items, request_time_ms=at), timeout=10
    )
    return response


def test_score_round_trip_keeps_request_order(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    items = raw["items"][:7]
    forward = score(served, raw["users"][0], items)
    backward = score(served, raw["users"][0], items[::-1])
    assert len(forward.scores) == 7
    assert all(0.0 <= s <= 1.0 for s in forward.scores)
    assert len(set(forward.scores)) > 1  # different items, different scores
    np.testing.assert_allclose(forward.scores, backward.scores[::-1], rtol=1e-6)
    assert served.server is not None
    assert forward.model_version == served.server.scorer.model_version
    assert not forward.degraded


def test_cold_start_user_and_unknown_items_are_scored(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    response = score(served, 987_654_321_987, [10**15, raw["items"][0], 0])
    assert len(response.scores) == 3
    assert all(0.0 <= s <= 1.0 for s in response.scores)
    assert not response.degraded


def test_record_query_changes_that_users_next_score_only(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    me, other = 880_000_001, 880_000_002
    items = raw["items"][:5]
    mine, theirs = score(served, me, items), score(served, other, items)
    reply = served.stub.RecordQuery(
        pb.RecordQueryRequest(user_id=me, token_ids=raw["words"][:3], timestamp_ms=T - HOUR_MS)
    )
    assert reply.history_length == 1
    assert score(served, me, items).scores != mine.scores
    assert score(served, other, items).scores == theirs.scores


def test_query_after_the_request_time_is_not_used(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    """Features count only events strictly before the request, as in training."""
    user, items = 880_000_003, raw["items"][:4]
    before = score(served, user, items)
    served.stub.RecordQuery(
        pb.RecordQueryRequest(user_id=user, token_ids=raw["words"][:2], timestamp_ms=T)
    )
    assert score(served, user, items).scores == before.scores
    assert score(served, user, items, at=T + 1).scores != before.scores


def test_embedding_cache_hit_when_unchanged_and_missed_after_append(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    assert served.server is not None
    times = served.server.scorer.counts
    user, items = 880_000_004, raw["items"][:3]
    served.stub.RecordQuery(
        pb.RecordQueryRequest(user_id=user, token_ids=raw["words"][:2], timestamp_ms=T - 60_000)
    )
    encoded, hits = times.encoded, times.cache_hits
    first = score(served, user, items)
    assert (times.encoded, times.cache_hits) == (encoded + 1, hits)
    # The cache write is fire-and-forget: wait for it to finish.
    served.run(drain_background_writes(served))
    second = score(served, user, items)
    assert (times.encoded, times.cache_hits) == (encoded + 1, hits + 1)
    assert second.scores == first.scores
    served.stub.RecordQuery(
        pb.RecordQueryRequest(user_id=user, token_ids=raw["words"][2:4], timestamp_ms=T - 30_000)
    )
    score(served, user, items)
    assert (times.encoded, times.cache_hits) == (encoded + 2, hits + 1)


BAD_REQUESTS = {
    "no items": ("Score", pb.ScoreRequest(user_id=5, item_ids=[])),
    "too many items": ("Score", pb.ScoreRequest(user_id=5, item_ids=list(range(51)))),
    "negative item": ("Score", pb.ScoreRequest(user_id=5, item_ids=[3, -4])),
    "user 0": ("Score", pb.ScoreRequest(user_id=0, item_ids=[3])),
    "negative user": ("Score", pb.ScoreRequest(user_id=-7, item_ids=[3])),
    "oversize tokens": ("RecordQuery", pb.RecordQueryRequest(user_id=5, token_ids=[1] * 65)),
    "negative token": ("RecordQuery", pb.RecordQueryRequest(user_id=5, token_ids=[1, -1])),
    "negative timestamp": (
        "RecordQuery",
        pb.RecordQueryRequest(user_id=5, token_ids=[1], timestamp_ms=-1),
    ),
    "timestamp before 2000": (
        "RecordQuery",
        pb.RecordQueryRequest(user_id=5, token_ids=[1], timestamp_ms=946_684_799_999),
    ),
    "timestamp two days ahead": (
        "RecordClicks",
        pb.RecordClicksRequest(user_id=5, item_ids=[1], timestamp_ms=now_ms() + 2 * DAY_MS),
    ),
    "request time far ahead": (
        "Score",
        pb.ScoreRequest(user_id=5, item_ids=[1], request_time_ms=2**62),
    ),
    "no clicks": ("RecordClicks", pb.RecordClicksRequest(user_id=5, item_ids=[])),
    "negative click": ("RecordClicks", pb.RecordClicksRequest(user_id=5, item_ids=[-2])),
    "no search clicks": (
        "RecordSearchClicks",
        pb.RecordSearchClicksRequest(user_id=5, search_timestamp_ms=T, item_ids=[]),
    ),
    "negative search click": (
        "RecordSearchClicks",
        pb.RecordSearchClicksRequest(user_id=5, search_timestamp_ms=T, item_ids=[3, -1]),
    ),
    "too many search clicks": (
        "RecordSearchClicks",
        pb.RecordSearchClicksRequest(user_id=5, search_timestamp_ms=T, item_ids=list(range(17))),
    ),
    "search clicks of user 0": (
        "RecordSearchClicks",
        pb.RecordSearchClicksRequest(user_id=0, search_timestamp_ms=T, item_ids=[3]),
    ),
    "search clicks without the search's time": (
        "RecordSearchClicks",
        pb.RecordSearchClicksRequest(user_id=5, item_ids=[3]),
    ),
    "search time before 2000": (
        "RecordSearchClicks",
        pb.RecordSearchClicksRequest(user_id=5, search_timestamp_ms=-5, item_ids=[3]),
    ),
    "search time two days ahead": (
        "RecordSearchClicks",
        pb.RecordSearchClicksRequest(
            user_id=5, search_timestamp_ms=now_ms() + 2 * DAY_MS, item_ids=[3]
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(
    served: ServerThread, raw: dict[str, list[int]], case: str
) -> None:
    method, request = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as caught:
        getattr(served.stub, method)(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details()  # a message says what was wrong
    assert len(score(served, raw["users"][0], raw["items"][:2]).scores) == 2


def test_search_clicks_are_stored_with_their_search(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    """RecordSearchClicks names the search by the timestamp RecordQuery stored; a retry
    answers the same and stores nothing twice; a later call adds only new items."""
    assert served.server is not None
    user, at = 880_000_020, T - HOUR_MS
    items = raw["items"][:4]
    served.stub.RecordQuery(
        pb.RecordQueryRequest(user_id=user, token_ids=raw["words"][:2], timestamp_ms=at)
    )
    served.stub.RecordQuery(
        pb.RecordQueryRequest(user_id=user, token_ids=raw["words"][2:3], timestamp_ms=at + 1)
    )
    request = pb.RecordSearchClicksRequest(user_id=user, search_timestamp_ms=at, item_ids=items[:2])
    assert served.stub.RecordSearchClicks(request, timeout=10).clicks_in_search == 2
    assert served.stub.RecordSearchClicks(request, timeout=10).clicks_in_search == 2  # retry
    more = pb.RecordSearchClicksRequest(
        user_id=user, search_timestamp_ms=at, item_ids=[items[1], items[2]]
    )
    assert served.stub.RecordSearchClicks(more, timeout=10).clicks_in_search == 3
    (state,) = served.run(served.server.state.read([user], None))
    assert state.query_ts.tolist() == [at + 1, at]
    assert state.query_click_sizes.tolist() == [0, 3]
    assert state.query_click_items.tolist() == items[:3]
    assert state.query_words.tolist() == [*raw["words"][2:3], *raw["words"][:2]]
    assert len(score(served, user, items).scores) == 4


def test_search_clicks_for_a_search_the_state_does_not_hold_are_not_found(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    assert served.server is not None
    user, at = 880_000_021, T - HOUR_MS
    served.stub.RecordQuery(
        pb.RecordQueryRequest(user_id=user, token_ids=raw["words"][:2], timestamp_ms=at)
    )
    (before,) = served.run(served.server.state.read([user], None))
    for missing_user, missing_at in ((user, at - 1), (880_000_022, at)):
        with pytest.raises(grpc.RpcError) as caught:
            served.stub.RecordSearchClicks(
                pb.RecordSearchClicksRequest(
                    user_id=missing_user, search_timestamp_ms=missing_at, item_ids=[1]
                ),
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        details = caught.value.details()
        assert f"user {missing_user} has no search at search_timestamp_ms {missing_at}" in details
        assert "127.0.0.1" not in details
    (after,) = served.run(served.server.state.read([user], None))
    assert after.query_click_sizes.tolist() == before.query_click_sizes.tolist() == [0]
    assert len(score(served, raw["users"][0], raw["items"][:2]).scores) == 2  # still serving


def test_duplicate_items_get_equal_scores(served: ServerThread, raw: dict[str, list[int]]) -> None:
    a, b = raw["items"][:2]
    response = score(served, raw["users"][1], [a, b, a, a])
    assert response.scores[0] == response.scores[2] == response.scores[3]


def test_health_is_serving_only_after_warm_up(bundle: Path, redis_url: str) -> None:
    harness = ServerThread(bundle, redis_url)
    try:
        server = harness.create()
        harness.run(server.listen())
        assert harness.channel is not None
        health = health_pb2_grpc.HealthStub(harness.channel)
        check = health_pb2.HealthCheckRequest(service="queryrec.v1.Scorer")
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
        harness.run(server.warm_up_and_serve())
        assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        harness.close()


def test_without_redis_scores_are_degraded_and_writes_unavailable(
    bundle: Path, raw: dict[str, list[int]]
) -> None:
    from service.state.embedded_redis import EmbeddedRedis

    redis_server = EmbeddedRedis().start()
    harness = ServerThread(bundle, redis_server.url, budget_ms=2000)
    try:
        harness.create()
        harness.start()
        redis_server.stop()  # Redis goes away under a running server
        response = score(harness, raw["users"][0], raw["items"][:3])
        assert response.degraded and response.degraded_reasons == ["redis_unavailable"]
        assert len(response.scores) == 3 and all(0 <= s <= 1 for s in response.scores)
        with pytest.raises(grpc.RpcError) as caught:
            harness.stub.RecordQuery(pb.RecordQueryRequest(user_id=5, token_ids=[1]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as caught:
            harness.stub.RecordSearchClicks(
                pb.RecordSearchClicksRequest(user_id=5, search_timestamp_ms=T, item_ids=[1]),
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(score(harness, raw["users"][0], raw["items"][:1]).scores) == 1  # still serving
    finally:
        harness.close()
        redis_server.stop()


def test_a_slow_redis_degrades_instead_of_failing(bundle: Path, raw: dict[str, list[int]]) -> None:
    """Redis answering later than its share of the budget: scored without the query vector.

    Redis is frozen with SIGSTOP (its sockets stay open, it just does not answer) and only
    resumed, with SIGCONT, after the response has arrived: so the answer came while Redis
    was still not answering, however long that took on a loaded machine. (CLIENT PAUSE
    cannot do this: on Redis 6.2 it also holds CLIENT UNPAUSE, so a pause can only be
    lifted by waiting it out.)
    """
    from service.state.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as redis_server:
        harness = ServerThread(bundle, redis_server.url, budget_ms=100)
        try:
            harness.create()
            harness.start()
            os.kill(redis_server.pid, signal.SIGSTOP)
            try:
                response = score(harness, raw["users"][0], raw["items"][:3])
            finally:
                os.kill(redis_server.pid, signal.SIGCONT)
            assert response.degraded
            assert response.degraded_reasons == ["redis_timeout"]
            assert len(response.scores) == 3
        finally:
            harness.close()


def test_reflection_lists_the_services(served: ServerThread) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    assert served.channel is not None
    names = set(ProtoReflectionDescriptorDatabase(served.channel).get_services())
    assert {"queryrec.v1.Scorer", "grpc.health.v1.Health"} <= names


def test_without_a_redis_url_the_server_runs_its_own(
    bundle: Path, raw: dict[str, list[int]]
) -> None:
    harness = ServerThread(bundle, None)
    try:
        server = harness.create()
        assert server.embedded_redis is not None and server.embedded_redis.running
        harness.start()
        reply = harness.stub.RecordClicks(
            pb.RecordClicksRequest(user_id=3, item_ids=raw["items"][:2], timestamp_ms=T - 1)
        )
        assert reply.history_length == 2
        assert len(score(harness, 3, raw["items"][:2]).scores) == 2
    finally:
        harness.close()
    assert not server.embedded_redis.running  # stopped with the server


def test_reflection_can_be_switched_off(bundle: Path, redis_url: str) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    harness = ServerThread(bundle, redis_url, reflection=False)
    try:
        harness.create()
        harness.start()
        assert harness.channel is not None
        with pytest.raises(grpc.RpcError) as caught:
            ProtoReflectionDescriptorDatabase(harness.channel).get_services()
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        harness.close()
