"""ClusterState on a real local Redis Cluster (service/state/embedded_cluster.py): URLs, one
pipelined round trip per node, routing of writes by key, faults per master, MOVED / ASK.

The gRPC server against a cluster (state load, Score, RecordQuery, a killed master, a
slot migration under traffic) is tests/service/state/test_redis_cluster.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from redis.asyncio.cluster import ClusterNode

from service.errors import SearchNotFound, SettingsError, StateUnavailable
from service.state import keys
from service.state.cluster import ClusterState
from service.state.embedded_cluster import SLOTS, EmbeddedCluster, slot_ranges
from service.state.store import LATE, REFUSED, UNAVAILABLE, HistoryCaps
from service.state.urls import is_cluster_url, parse_cluster_url
from tests.service.redis_observers import Recorder, wait_for

CAPS = HistoryCaps(queries=3, clicks=4, ttl_s=100)
USERS = list(range(1, 65))
SECRET = "pa@ss:w0rd"


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[EmbeddedCluster]:
    """One 3-master cluster for the tests that do not break it (each uses its own users)."""
    with EmbeddedCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def cluster() -> Iterator[EmbeddedCluster]:
    """A private cluster: the test kills a master."""
    with EmbeddedCluster(masters=3) as started:
        yield started


def owner_of(cluster: EmbeddedCluster, user: int) -> int:
    return cluster.slot_owner(cluster.keyslot(keys.query_key(user)))


# -- URLs ----------------------------------------------------------------------------------


def test_cluster_urls_name_the_startup_nodes_and_redis_py_options() -> None:
    assert is_cluster_url("redis+cluster://a:1") and is_cluster_url("REDISS+CLUSTER://a:1")
    assert not is_cluster_url("redis://a:1/0") and not is_cluster_url("unix:///tmp/r.sock")
    nodes, options = parse_cluster_url(
        "redis+cluster://user:pw@a:7000, b:7001,[::1]:7002/0?socket_timeout=0.5", "shown"
    )
    assert nodes == [("a", 7000), ("b", 7001), ("::1", 7002)]
    assert options["username"] == "user" and options["password"] == "pw"
    assert options["socket_timeout"] == 0.5 and "ssl" not in options
    _, tls = parse_cluster_url("rediss+cluster://a:7000", "shown")
    assert tls["ssl"] is True


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (f"redis+cluster://:{SECRET}@a", "host:port"),
        (f"redis+cluster://:{SECRET}@a:1,b", "host:port"),
        (f"redis+cluster://:{SECRET}@a:1,:2", "host:port"),
        (f"redis+cluster://:{SECRET}@a:99999", "host:port"),
        (f"redis+cluster://:{SECRET}@a:1/3", "only database 0"),
    ],
)
def test_a_bad_cluster_url_is_a_settings_error_without_the_password(url: str, why: str) -> None:
    with pytest.raises(SettingsError, match=why) as info:
        ClusterState(url, CAPS)
    assert "w0rd" not in str(info.value) and "***" in str(info.value)


def test_a_cluster_state_connects_lazily_and_a_missing_cluster_is_unavailable() -> None:
    async def go() -> None:
        state = ClusterState("redis+cluster://127.0.0.1:1,127.0.0.1:2", CAPS, timeout_s=0.5)
        try:
            assert state.available  # nothing known yet
            with pytest.raises(StateUnavailable, match="cannot be discovered"):
                await state.ping()
            with pytest.raises(StateUnavailable) as info:
                await state.read([1], None)
            assert str(info.value) == UNAVAILABLE  # the fixed sentence, no host or port
            with pytest.raises(StateUnavailable) as info:
                await state.append_query(1, 1, [1])
            assert str(info.value) == UNAVAILABLE
        finally:
            await state.close()

    asyncio.run(go())


# -- the embedded cluster ---------------------------------------------------------------------


def test_slot_ranges_cover_every_slot_once() -> None:
    for masters in (1, 2, 3, 5):
        ranges = slot_ranges(masters)
        covered = [slot for first, last in ranges for slot in range(first, last + 1)]
        assert covered == list(range(SLOTS))


def test_the_embedded_cluster_forms_and_leaves_nothing_behind() -> None:
    cluster = EmbeddedCluster(masters=3).start()
    directories = [node.directory for node in cluster.nodes]
    pids = [node.pid for node in cluster.nodes]
    try:
        assert cluster.url == "redis+cluster://" + ",".join(
            f"127.0.0.1:{port}" for port in cluster.ports
        )
        for index in range(3):
            info = cluster.info(index)
            assert info["cluster_state"] == "ok" and info["cluster_known_nodes"] == "3"
        assert [cluster.slot_owner(first) for first, _ in slot_ranges(3)] == [0, 1, 2]
    finally:
        cluster.stop()
        cluster.stop()  # idempotent
    assert all(d is not None and not d.exists() for d in directories)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            import os

            os.kill(pid, 0)


# -- reads and writes ---------------------------------------------------------------------------


def test_a_batch_read_is_one_pipeline_per_node_and_the_nodes_run_concurrently(
    shared_cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 users over 3 masters: each master gets exactly one `execute_pipeline` (one
    round trip: all its commands packed in one write) and no other command; all three
    are in flight at once. Server side (INFO commandstats): each master received exactly
    the commands of its own users."""
    users = [u + 1000 for u in USERS]
    owners = {user: owner_of(shared_cluster, user) for user in users}
    expected = Counter(owners.values())
    assert sorted(expected) == [0, 1, 2]
    calls: list[str] = []
    in_flight = [0, 0]  # now, most
    real: Any = ClusterNode.execute_pipeline

    async def logged(self: ClusterNode, commands: list[Any]) -> bool:
        calls.append(self.name)
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        try:
            return bool(await real(self, commands))
        finally:
            in_flight[0] -= 1

    def single_commands(self: ClusterNode, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a command outside the pipelines: {args[:1]}")

    async def go() -> list[Any]:
        state = ClusterState(shared_cluster.url, CAPS)
        try:
            for user in users:
                await state.append_clicks(user, 10, [user])
            for index in range(3):
                shared_cluster.command(index, "CONFIG RESETSTAT")
            with monkeypatch.context() as patch:
                patch.setattr(ClusterNode, "execute_pipeline", logged)
                patch.setattr(ClusterNode, "execute_command", single_commands)
                return await state.read(users, "enc")
        finally:
            await state.close()

    states = asyncio.run(go())
    assert [s.click_items.tolist() for s in states] == [[u] for u in users]
    assert all(s.unavailable is None for s in states)
    names = {f"127.0.0.1:{port}": i for i, port in enumerate(shared_cluster.ports)}
    assert Counter(names[name] for name in calls) == Counter({0: 1, 1: 1, 2: 1})
    assert in_flight[1] == 3
    for index in range(3):
        stats = shared_cluster.client(index).info("commandstats")
        got = {
            c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("lrange", "hgetall", "get")
        }
        n = expected[index]
        assert got == {"lrange": 2 * n, "hgetall": n, "get": n}


def test_appends_and_cached_vectors_land_on_the_node_of_their_slot(
    shared_cluster: EmbeddedCluster,
) -> None:
    users = [u + 2000 for u in USERS[:12]]

    async def go() -> list[Any]:
        state = ClusterState(shared_cluster.url, CAPS)
        try:
            for user in users:
                for i in range(5):
                    assert await state.append_query(user, 100 + i, [user, i]) == min(i + 1, 3)
                assert await state.append_clicks(user, 200, [1, 2]) == 2
                assert await state.append_clicks(user, 200, [1, 2]) == 2  # a retry: once
            await state.cache_query_reprs(
                "enc", [(user, b"v" * 16, np.full(2, user, np.float32)) for user in users]
            )
            return await state.read(users, "enc")
        finally:
            await state.close()

    states = asyncio.run(go())
    for user, state in zip(users, states, strict=True):
        assert state.query_ts.tolist() == [104, 103, 102]
        assert state.click_items.tolist() == [2, 1]
        assert state.cached_query_repr is not None
        assert keys.unpack_query_repr(state.cached_query_repr)[1].tolist() == [user, user]
        owner = owner_of(shared_cluster, user)
        user_keys = (keys.query_key(user), keys.click_key(user), keys.query_repr_key(user, "enc"))
        assert shared_cluster.client(owner).exists(*user_keys) == 3
        slot = shared_cluster.keyslot(keys.query_key(user))
        for index in set(range(3)) - {owner}:  # (asked for the keys, a node answers MOVED)
            assert shared_cluster.command(index, "CLUSTER COUNTKEYSINSLOT", slot) == 0


def test_search_clicks_land_in_the_entry_on_the_node_of_their_slot(
    shared_cluster: EmbeddedCluster,
) -> None:
    """RecordSearchClicks routed by its key like an append: on nodes that do not know the
    script yet, EVALSHA is answered NOSCRIPT and EVAL runs (and loads) it there."""
    users = [u + 5000 for u in USERS[:12]]
    assert {owner_of(shared_cluster, user) for user in users} == {0, 1, 2}
    for index in range(3):
        shared_cluster.command(index, "SCRIPT FLUSH")
    sha = hashlib.sha1(keys.SEARCH_CLICKS_SCRIPT.encode()).hexdigest()

    async def go() -> list[Any]:
        state = ClusterState(shared_cluster.url, CAPS)
        try:
            for user in users:
                await state.append_query(user, 100, [user])
                await state.append_query(user, 101, [user + 1])
                assert await state.record_search_clicks(user, 100, [user, 7]) == 2
                assert await state.record_search_clicks(user, 100, [7, 8]) == 3  # a union
                with pytest.raises(SearchNotFound, match=f"user {user} has no search"):
                    await state.record_search_clicks(user, 99, [1])
            return await state.read(users, None)
        finally:
            await state.close()

    states = asyncio.run(go())
    for user, state in zip(users, states, strict=True):
        assert state.query_ts.tolist() == [101, 100]
        assert state.query_words.tolist() == [user + 1, user]
        assert state.query_click_sizes.tolist() == [0, 3]
        assert state.query_click_items.tolist() == [user, 7, 8]
    for index in range(3):
        assert shared_cluster.command(index, "SCRIPT EXISTS", sha) == [True]


def test_ask_and_moved_during_a_slot_migration_are_followed(
    shared_cluster: EmbeddedCluster,
) -> None:
    """The user's keys move to another master while the state has several idle pooled
    connections per node (where redis-py 8.1's own ASK handling sends ASKING on another
    connection than the command): reads and appends during IMPORTING / MIGRATING follow
    ASK, afterwards MOVED; the source counts both (INFO errorstats)."""
    user = 3001
    slot = shared_cluster.keyslot(keys.query_key(user))
    source = shared_cluster.slot_owner(slot)
    target = (source + 1) % 3
    stats_before = shared_cluster.client(source).info("errorstats")

    def redirections(kind: str) -> int:
        now = shared_cluster.client(source).info("errorstats").get(f"errorstat_{kind}", {})
        return int(now.get("count", 0)) - int(
            stats_before.get(f"errorstat_{kind}", {}).get("count", 0)
        )

    async def go() -> None:
        state = ClusterState(shared_cluster.url, CAPS)
        try:
            await state.append_query(user, 1, [1])
            await state.append_clicks(user, 1, [10])
            # several idle connections on every node
            await asyncio.gather(*(state.read([u + 3100], None) for u in USERS))
            shared_cluster.begin_migration(slot, target)
            assert shared_cluster.migrate_keys(slot, target, [keys.click_key(user)]) == 1
            (during,) = await state.read([user], None)  # clicks: ASK; queries: source
            assert during.click_items.tolist() == [10] and during.query_ts.tolist() == [1]
            assert await state.append_clicks(user, 2, [11]) == 2  # ASK (+ EVAL there)
            assert await state.append_query(user, 2, [2]) == 2  # still on the source
            assert redirections("ASK") >= 2
            shared_cluster.finish_migration(slot, target)
            (after,) = await state.read([user], None)
            assert after.click_items.tolist() == [11, 10] and after.query_ts.tolist() == [2, 1]
            assert await state.append_query(user, 3, [3]) == 3
            assert redirections("MOVED") >= 1
            (last,) = await state.read([user], None)  # the slot cache is patched: no MOVED
            assert last.query_ts.tolist() == [3, 2, 1]
        finally:
            await state.close()

    asyncio.run(go())
    assert shared_cluster.client(target).exists(keys.query_key(user), keys.click_key(user)) == 2
    assert shared_cluster.command(source, "CLUSTER COUNTKEYSINSLOT", slot) == 0


# -- faults ----------------------------------------------------------------------------------------


def test_a_dead_master_fails_only_its_users_and_a_takeover_ends_the_outage(
    cluster: EmbeddedCluster,
) -> None:
    """Kill master `dead`: a batch read returns `unavailable` for exactly its users and
    the others' state; its users' writes answer UNAVAILABLE at once (no network attempt
    after the first), the others' succeed; one `lost` event, no `regained`. Then another
    master takes the dead one's slots over (CLUSTER FORGET + ADDSLOTS, what a failover
    does without a replica's data): the reconnect task's topology refresh ends the outage
    and those users are served again (empty: their data died with the master)."""
    events = Recorder()
    owners = {user: owner_of(cluster, user) for user in USERS}
    dead = owners[USERS[0]]
    on_dead = [u for u in USERS if owners[u] == dead]
    others = [u for u in USERS if owners[u] != dead]
    heir = next(i for i in range(3) if i != dead)

    async def go() -> None:
        state = ClusterState(cluster.url, CAPS, reconnect_max_s=0.2, events=events)
        try:
            await state.ping()
            for user in USERS:
                await state.append_clicks(user, 10, [user])
            cluster.kill(dead)
            cluster.wait_failed(dead)
            states = await state.read(USERS, None)
            failed = [u for u, s in zip(USERS, states, strict=True) if s.unavailable]
            assert failed == on_dead
            assert {s.unavailable for s in states if s.unavailable} == {UNAVAILABLE}
            served = [s for s in states if s.unavailable is None]
            assert [s.click_items.tolist() for s in served] == [[u] for u in others]
            assert state.available and len(events.lost) == 1
            assert f":{cluster.ports[dead]}" in events.lost[0]
            for user in on_dead[:5]:
                with pytest.raises(StateUnavailable) as info:
                    await state.append_query(user, 20, [1])
                assert str(info.value) == UNAVAILABLE
            for user in others[:5]:
                assert await state.append_query(user, 20, [1]) == 1
            with pytest.raises(StateUnavailable) as info:
                await state.read(on_dead, None)  # every user of the call failed: raised
            assert str(info.value) == UNAVAILABLE
            await state.cache_query_reprs("enc", [(u, b"v" * 16, np.ones(2)) for u in USERS])
            assert events.regained == []
            router = state.cluster
            assert router is not None and len(router.down_nodes) == 1
            # The heir takes the dead master's slots over.
            first, last = slot_ranges(3)[dead]
            for index in range(3):
                if index != dead:
                    cluster.command(index, "CLUSTER FORGET", cluster.node_ids[dead])
            cluster.command(heir, "CLUSTER ADDSLOTS", *range(first, last + 1))
            await wait_for(lambda: not router.down_nodes, "the outage to end")
            assert len(events.regained) == 1 and events.regained[0] > 0
            states = await state.read(on_dead, None)
            assert all(s.unavailable is None and len(s.click_items) == 0 for s in states)
            assert await state.append_query(on_dead[0], 30, [1]) == 1
        finally:
            await state.close()
        assert events.errors.count("read") == 2  # the batch with failures, the all-failed one
        assert events.errors.count("write") == 5

    asyncio.run(go())


def test_failure_sentences_are_the_single_node_ones() -> None:
    """Cluster failures reach clients as the same fixed sentences as single-node ones."""
    assert UNAVAILABLE == "Redis is unavailable"
    assert LATE == "Redis did not answer in time" and REFUSED == "Redis refused the command"
