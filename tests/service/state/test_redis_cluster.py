"""The scoring service on a real 3-master Redis Cluster of local redis-server processes.

`queryrec state load` writes the tiny dataset's users into the cluster (the real loader,
through redis-py's cluster client), a real gRPC server (the harness) serves Score and
RecordQuery from it. Then:
- one master is SIGKILLed: Score degrades (`redis_unavailable`, scored without the query
  representation) for exactly that master's users and answers the others exactly as
  before; RecordQuery answers UNAVAILABLE with the fixed sentence for the dead master's
  users and succeeds for the others;
- a slot holding a user's keys migrates to another master (IMPORTING / MIGRATING,
  MIGRATE, SETSLOT NODE) while Score and RecordQuery traffic runs: ASK and MOVED are
  followed (the source's INFO errorstats count them), no call fails or degrades, and the
  data is where it belongs afterwards.
Every cluster and server is stopped by fixture finalizers, also when a test fails.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import redis

from queryrec.features.dataset import PreparedDataset
from service.api import scorer_pb2 as pb
from service.state import keys
from service.state.embedded_cluster import EmbeddedCluster
from service.state.load import load_state
from service.state.store import UNAVAILABLE
from tests.service.harness import ServerThread

T = 1_700_000_000_000  # request time of every Score (after every loaded and recorded event)
HOUR_MS = 3_600_000
WAIT_S = 60.0
"""Overall limit of a wait for a condition (generous: the machine is shared)."""


@pytest.fixture
def cluster(tiny_data: Path) -> Iterator[EmbeddedCluster]:
    """A private 3-master cluster with the tiny dataset's state loaded (`state load`)."""
    with EmbeddedCluster(masters=3, node_timeout_ms=500) as started:
        report = load_state(PreparedDataset(tiny_data), started.url, progress=False)
        assert report.users > 0 and report.queries > 0
        yield started


@pytest.fixture
def served(bundle: Path, cluster: EmbeddedCluster) -> Iterator[ServerThread]:
    with ServerThread(
        bundle,
        cluster.url,
        budget_ms=5000,  # generous: a degraded answer must mean Redis, not a busy CPU
        write_budget_ms=5000,
        admin_port=0,
        redis_reconnect_max_s=0.2,
        shutdown_grace_s=0.5,
    ) as harness:
        yield harness


def score(harness: ServerThread, user: int, items: list[int]) -> pb.ScoreResponse:
    return harness.score(user, items, request_time_ms=T, timeout=60)


def record_query(harness: ServerThread, user: int, tokens: list[int], at: int) -> int:
    reply = harness.stub.RecordQuery(
        pb.RecordQueryRequest(user_id=user, token_ids=tokens, timestamp_ms=at), timeout=60
    )
    return int(reply.history_length)


def owner_of(cluster: EmbeddedCluster, user: int) -> int:
    return cluster.slot_owner(cluster.keyslot(keys.query_key(user)))


def admin_get(harness: ServerThread, path: str) -> httpx.Response:
    assert harness.server is not None and harness.server.admin is not None
    return httpx.get(f"http://127.0.0.1:{harness.server.admin.port}{path}", timeout=60)


def test_a_dead_master_degrades_score_for_its_users_only(
    served: ServerThread, cluster: EmbeddedCluster, raw: dict[str, list[int]]
) -> None:
    users, items, words = raw["users"], raw["items"][:5], raw["words"][:3]
    owners = {user: owner_of(cluster, user) for user in users}
    assert sorted(set(owners.values())) == [0, 1, 2]  # every master holds some users
    for i, user in enumerate(users):
        assert record_query(served, user, words, T - HOUR_MS + i) >= 1
    before = {user: score(served, user, items) for user in users}
    assert not any(answer.degraded for answer in before.values())
    assert served.server is not None
    encoded = served.server.scorer.counts.encoded + served.server.scorer.counts.cache_hits
    assert encoded == len(users)  # every user was scored WITH its query representation

    dead = owners[users[0]]
    cluster.kill(dead)
    cluster.wait_failed(dead)  # the others flag it FAIL and keep serving their slots
    after = {user: score(served, user, items) for user in users}
    on_dead = [u for u in users if owners[u] == dead]
    degraded = [u for u in users if after[u].degraded]
    assert degraded == on_dead
    for user in users:
        answer = after[user]
        assert len(answer.scores) == len(items) and all(0 <= s <= 1 for s in answer.scores)
        if owners[user] == dead:
            assert list(answer.degraded_reasons) == ["redis_unavailable"]
        else:  # served normally: the same scores as before the kill
            np.testing.assert_allclose(answer.scores, before[user].scores, rtol=1e-6)

    for user in on_dead[:3]:
        with pytest.raises(grpc.RpcError) as caught:
            record_query(served, user, words, T - 1)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == UNAVAILABLE  # the fixed sentence: no host or port
    alive = [u for u in users if owners[u] != dead]
    for user in alive[:3]:
        assert record_query(served, user, words, T - 1) >= 2

    assert admin_get(served, "/readyz").status_code == 200  # serving; one master down
    metrics = admin_get(served, "/metrics").text
    assert "queryrec_redis_up 0.0" in metrics.splitlines()


def test_a_slot_migration_during_traffic_is_followed_without_failed_calls(
    served: ServerThread, cluster: EmbeddedCluster, raw: dict[str, list[int]]
) -> None:
    users, items, words = raw["users"][:12], raw["items"][:5], raw["words"][:3]
    moving = users[0]
    slot = cluster.keyslot(keys.query_key(moving))
    source = cluster.slot_owner(slot)
    target = (source + 1) % 3
    failures: list[str] = []
    calls = {"moving": 0, "all": 0}
    last_recorded: dict[int, tuple[int, int]] = {}  # user -> (timestamp, history length)
    progress = threading.Condition()
    stop = threading.Event()

    def traffic() -> None:
        """Score + RecordQuery over the users, round-robin, until told to stop."""
        i = 0
        while not stop.is_set():
            user = users[i % len(users)]
            at = T - HOUR_MS + i
            try:
                answer = score(served, user, items)
                if answer.degraded:
                    failures.append(f"Score {user} degraded: {list(answer.degraded_reasons)}")
                last_recorded[user] = (at, record_query(served, user, words, at))
            except grpc.RpcError as error:
                failures.append(f"user {user}: {error.code()} {error.details()}")
            with progress:
                calls["all"] += 1
                calls["moving"] += user == moving
                progress.notify_all()
            i += 1

    def traffic_passes(moving_calls: int) -> None:
        """Wait until `moving_calls` more rounds of the moving user are done."""
        with progress:
            goal = calls["moving"] + moving_calls
            assert progress.wait_for(lambda: calls["moving"] >= goal or stop.is_set(), WAIT_S)

    def errorstat(kind: str) -> int:
        stats = cluster.client(source).info("errorstats").get(f"errorstat_{kind}", {})
        return int(stats.get("count", 0))

    asks, moves = errorstat("ASK"), errorstat("MOVED")
    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        traffic_passes(2)
        cluster.begin_migration(slot, target)
        traffic_passes(2)  # MIGRATING, keys still on the source
        assert cluster.migrate_keys(slot, target) >= 2  # the moving user's keys
        traffic_passes(3)  # every command of the moving user: ASK, then ASKING on the target
        cluster.finish_migration(slot, target)
        traffic_passes(3)  # the source answers MOVED once; the client's slot cache follows
    finally:
        stop.set()
        worker.join(WAIT_S)
    assert not worker.is_alive()
    assert failures == []
    assert errorstat("ASK") > asks and errorstat("MOVED") > moves

    # The data is readable afterwards, on the new owner only.
    at, length = last_recorded[moving]
    with redis.Redis(host="127.0.0.1", port=cluster.ports[target]) as owner:
        entries = owner.lrange(keys.query_key(moving), 0, -1)
    assert len(entries) == length
    assert keys.unpack_query(entries[0])[0] == at  # the last recorded query is the newest
    assert cluster.command(source, "CLUSTER COUNTKEYSINSLOT", slot) == 0
    assert not score(served, moving, items).degraded
