"""RedisState under faults, against a real redis-server that the tests pause, kill and
restart (service/state/embedded_redis.py): timeouts, outages without a connection storm,
idempotent retried writes, a pool smaller than the load, AUTH without leaking it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import numpy as np
import pytest
import redis
from redis.asyncio.connection import Connection

from service.errors import StateUnavailable
from service.state import keys
from service.state.embedded_redis import EmbeddedRedis
from service.state.single_node import RedisState
from service.state.store import UNAVAILABLE, WRITE_LATE, HistoryCaps
from tests.service.redis_observers import Recorder, wait_for

CAPS = HistoryCaps(queries=5, clicks=10, ttl_s=100)
PASSWORD = "s3cr@t:pw"


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    """A private server per test: the tests break it."""
    with EmbeddedRedis() as started:
        yield started


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts TCP connection attempts of redis-py's asyncio client (the real method runs)."""
    attempts: list[int] = []
    real: Callable[[Connection], Awaitable[None]] = Connection._connect

    async def counted(self: Connection) -> None:
        attempts.append(1)
        await real(self)

    monkeypatch.setattr(Connection, "_connect", counted)
    return attempts


def test_a_paused_redis_times_out_and_then_answers_correctly(server: EmbeddedRedis) -> None:
    """The caller's timeout cancels a read half-way; the one pooled connection must not
    hand that read's late reply to the next command."""
    events = Recorder()

    async def go() -> None:
        state = RedisState(server.url, CAPS, pool_size=1, events=events)
        try:
            await state.append_clicks(1, 10, [111])
            await state.append_clicks(2, 10, [222])
            server.pause()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await state.read([1], None)
            assert state.available  # a timeout is not an outage
            server.resume()
            (second,) = await state.read([2], None)
            (first,) = await state.read([1], None)
        finally:
            server.resume()
            await state.close()
        assert second.click_items.tolist() == [222]
        assert first.click_items.tolist() == [111]
        assert events.lost == [] and events.regained == []

    asyncio.run(go())


def test_a_killed_redis_is_one_outage_without_a_connection_storm(
    server: EmbeddedRedis, connects: list[int]
) -> None:
    events = Recorder()

    async def go() -> None:
        state = RedisState(server.url, CAPS, pool_size=4, reconnect_max_s=0.2, events=events)
        try:
            await state.append_query(1, 10, [1])
            server.kill()
            with pytest.raises(StateUnavailable) as info:
                await state.read([1], None)
            assert str(info.value) == UNAVAILABLE
            assert not state.available
            reconnecting = [t for t in asyncio.all_tasks() if t.get_name() == "redis-reconnect"]
            assert len(reconnecting) == 1
            before = len(connects)
            for _ in range(50):  # while down: refused at once, no network attempt
                with pytest.raises(StateUnavailable, match=UNAVAILABLE):
                    await state.read([1], None)
                with pytest.raises(StateUnavailable, match=UNAVAILABLE):
                    await state.append_clicks(1, 10, [5])
                await state.cache_query_reprs("enc", [(1, b"v" * 16, np.ones(2))])
            with pytest.raises(StateUnavailable):
                await state.ping()
            assert len(connects) == before
            assert len(events.lost) == 1
            assert events.errors.count("read") == 51 and events.errors.count("write") == 50
            assert "cache" not in events.errors  # skipped, not attempted
            server.restart()  # same port: the background task finds it by itself
            await wait_for(lambda: state.available, "Redis to be available again")
            assert len(events.regained) == 1 and events.regained[0] > 0
            assert await state.append_query(1, 20, [2]) == 1  # a new, empty server
            (user,) = await state.read([1], None)
            assert user.query_ts.tolist() == [20]
        finally:
            await state.close()
        assert len(events.lost) == 1 and len(events.regained) == 1
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "redis-reconnect"]

    asyncio.run(go())


def test_a_write_retried_after_a_timeout_is_stored_once(server: EmbeddedRedis) -> None:
    """The write reaches a paused Redis, the caller gives up (UNAVAILABLE), Redis resumes
    and stores it; the caller's retry must then store nothing and answer the same."""
    admin = redis.Redis.from_url(server.url)

    async def timed_out_then_retried(write: Callable[[float], Awaitable[int]], key: str) -> int:
        server.pause()  # the pooled connection is open: the command reaches the socket
        try:
            with pytest.raises(StateUnavailable) as info:
                await write(0.2)
            assert str(info.value) == WRITE_LATE
        finally:
            server.resume()
        await wait_for(lambda: admin.exists(key) == 1, "the timed-out write to be stored")
        return await write(5.0)  # the retry (on a new connection)

    async def go() -> None:
        state = RedisState(server.url, CAPS, pool_size=1)
        try:
            await state.append_query(9, 1, [1])  # warm: connection open, script loaded
            kept = await timed_out_then_retried(
                lambda limit: state.append_query(7, 1000, [4, 5], timeout_s=limit),
                keys.query_key(7),
            )
            assert kept == 1
            kept = await timed_out_then_retried(
                lambda limit: state.append_clicks(7, 1000, [8, 9, 8], timeout_s=limit),
                keys.click_key(7),
            )
            assert kept == 3
            (user,) = await state.read([7], None)
        finally:
            server.resume()
            await state.close()
        assert user.query_ts.tolist() == [1000]
        assert user.query_words.tolist() == [4, 5]
        assert user.click_items.tolist() == [8, 9, 8]

    asyncio.run(go())
    admin.close()


def test_more_concurrent_reads_than_connections_wait_and_all_succeed(
    server: EmbeddedRedis,
) -> None:
    admin = redis.Redis.from_url(server.url)

    async def go() -> None:
        state = RedisState(server.url, CAPS, pool_size=2)
        try:
            for user in range(1, 51):
                await state.append_clicks(user, 10, [user * 10])
            results = await asyncio.gather(*(state.read([u], None) for u in range(1, 51)))
            assert [r[0].click_items.tolist() for r in results] == [[u * 10] for u in range(1, 51)]
            connected = admin.info("clients")["connected_clients"]
            assert connected <= 3  # the pool's two and this admin connection
        finally:
            await state.close()

    asyncio.run(go())
    admin.close()


def test_auth_by_argument_or_url_and_the_password_never_shows() -> None:
    with EmbeddedRedis(password=PASSWORD) as server:
        in_url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
        wrong_in_url = f"redis://:{PASSWORD}x@127.0.0.1:{server.port}/0"

        async def works(url: str, password: str | None) -> None:
            state = RedisState(url, CAPS, password=password)
            try:
                await state.ping()
                assert await state.append_query(1, 10, [1]) == 1
                (user,) = await state.read([1], None)
                assert user.query_ts.tolist() == [10]
            finally:
                await state.close()

        asyncio.run(works(server.url, PASSWORD))
        asyncio.run(works(in_url, None))
        asyncio.run(works(wrong_in_url, PASSWORD))  # the argument wins over the URL

        async def refused(url: str, password: str | None) -> list[str]:
            events = Recorder()
            state = RedisState(url, CAPS, password=password, events=events)
            messages = []
            try:
                with pytest.raises(StateUnavailable) as info:
                    await state.ping()
                messages.append(str(info.value))
                with pytest.raises(StateUnavailable) as info:
                    await state.read([1], None)
                assert str(info.value) == UNAVAILABLE
                messages.append(str(info.value))
                with pytest.raises(StateUnavailable) as info:
                    await state.append_query(1, 10, [1])
                messages.append(str(info.value))
            finally:
                await state.close()
            assert len(events.lost) == 1
            return messages + events.lost

        shown = asyncio.run(refused(wrong_in_url, None))
        shown += asyncio.run(refused(server.url, PASSWORD + "x"))
        assert any("127.0.0.1" in text for text in shown)  # the ping names the server
        for text in shown:
            assert PASSWORD not in text and "s3cr" not in text


def test_search_clicks_under_faults_are_unavailable_and_a_retry_stores_them_once(
    server: EmbeddedRedis,
) -> None:
    """Recording search clicks has the fault model of the appends: a write that timed
    out may be stored, and its retry then stores nothing twice; Redis down: UNAVAILABLE
    at once, nothing stored."""
    admin = redis.Redis.from_url(server.url)
    key = keys.query_key(7)
    events = Recorder()

    def clicks_stored() -> bool:
        return keys.unpack_queries(admin.lrange(key, 0, -1))[4].tolist() == [30, 31]

    async def go() -> None:
        state = RedisState(server.url, CAPS, pool_size=1, reconnect_max_s=0.2, events=events)
        try:
            await state.append_query(7, 1000, [4, 5])
            await state.record_search_clicks(7, 1000, [30])  # warm: the script is loaded
            server.pause()  # the pooled connection is open: the command reaches the socket
            try:
                with pytest.raises(StateUnavailable) as info:
                    await state.record_search_clicks(7, 1000, [30, 31], timeout_s=0.2)
                assert str(info.value) == WRITE_LATE
            finally:
                server.resume()
            await wait_for(clicks_stored, "the timed-out search clicks to be stored")
            stored = admin.lrange(key, 0, -1)
            assert await state.record_search_clicks(7, 1000, [30, 31], timeout_s=5.0) == 2
            assert admin.lrange(key, 0, -1) == stored
            server.kill()
            with pytest.raises(StateUnavailable) as info:
                await state.record_search_clicks(7, 1000, [32])
            assert str(info.value) == UNAVAILABLE
            with pytest.raises(StateUnavailable, match=UNAVAILABLE):  # at once while down
                await state.record_search_clicks(7, 1000, [32])
        finally:
            server.resume()
            await state.close()
        assert events.errors.count("write") == 3

    asyncio.run(go())
    admin.close()
