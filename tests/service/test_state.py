"""Redis keys and state against a real Redis: exact key bytes, caps, TTL, URLs, bulk load."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis.asyncio.connection import AbstractConnection as AsyncConnection
from redis.asyncio.connection import SSLConnection

from queryrec.features.dataset import PreparedDataset
from service import redis_keys as keys
from service.embedded_redis import EmbeddedRedis
from service.errors import StateUnavailable
from service.state import HistoryCaps, RedisState
from service.state_load import load_state, parse_time

CAPS = HistoryCaps(queries=3, clicks=4, ttl_s=100)
COMMANDS = ("lrange", "hgetall", "get", "lpush", "multi")


def test_keys_are_hash_tagged_per_user() -> None:
    assert keys.query_key(42) == "qr:{42}:q"
    assert keys.click_key(42) == "qr:{42}:c"
    assert keys.profile_key(42) == "qr:{42}:p"
    assert keys.query_repr_key(42, "m-1") == "qr:{42}:e:m-1"


def test_entries_pack_to_fixed_little_endian_bytes() -> None:
    assert keys.pack_query(1, [2, 3]) == (1).to_bytes(8, "little") + (2).to_bytes(8, "little") + (
        3
    ).to_bytes(8, "little")
    ts, tokens = keys.unpack_query(keys.pack_query(1_700_000_000_000, [7, 1 << 40]))
    assert ts == 1_700_000_000_000 and tokens.tolist() == [7, 1 << 40]
    entries = keys.pack_clicks(5, [8, 9])
    assert entries[0] == (5).to_bytes(8, "little") + (8).to_bytes(8, "little")
    stamps, items = keys.unpack_clicks(entries)
    assert stamps.tolist() == [5, 5] and items.tolist() == [8, 9]
    version, vector = keys.unpack_query_repr(keys.pack_query_repr(b"v" * 16, np.ones(3)))
    assert version == b"v" * 16 and vector.dtype == np.float32 and vector.tolist() == [1, 1, 1]


def test_appends_are_capped_newest_first_and_expire(redis_client_url: str) -> None:
    async def go() -> None:
        state = RedisState(redis_client_url, CAPS)
        for i in range(5):
            kept = await state.append_query(7, 1000 + i, [i + 1])
        assert kept == 3
        assert await state.append_clicks(7, 2000, [11, 12]) == 2
        assert await state.append_clicks(7, 2001, [13, 14, 15]) == 4
        (user,) = await state.read([7], None)
        assert user.query_ts.tolist() == [1004, 1003, 1002]
        assert user.click_items.tolist() == [15, 14, 13, 12]
        assert 0 < await state.client.ttl(keys.query_key(7)) <= 100
        assert 0 < await state.client.ttl(keys.click_key(7)) <= 100
        await state.close()

    asyncio.run(go())


def test_read_of_many_users_is_one_round_trip_in_user_order(
    redis_client_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One round trip: the client writes to the socket once (one `send_packed_command`,
    all commands packed together) and then only reads replies, one per command, with no
    write in between. The real connection methods run; a wrapper only logs the calls.
    The server side, from INFO commandstats: exactly the expected commands arrived
    (LRANGE x 2, HGETALL and GET per user). Counting commands alone would not prove one
    round trip, nor would the write count alone prove what was sent.
    """
    wire: list[str] = []
    send, read = AsyncConnection.send_packed_command, AsyncConnection.read_response

    async def logged_send(self: AsyncConnection, *args: Any, **kwargs: Any) -> None:
        wire.append("send")
        await send(self, *args, **kwargs)

    async def logged_read(self: AsyncConnection, *args: Any, **kwargs: Any) -> Any:
        wire.append("read")
        return await read(self, *args, **kwargs)

    admin = redis.Redis.from_url(redis_client_url)

    async def go() -> None:
        state = RedisState(redis_client_url, CAPS)
        try:
            await state.append_clicks(1, 10, [100])  # also opens the pooled connection
            await state.append_clicks(3, 10, [300])
            admin.config_resetstat()
            with monkeypatch.context() as patch:
                patch.setattr(AsyncConnection, "send_packed_command", logged_send)
                patch.setattr(AsyncConnection, "read_response", logged_read)
                users = await state.read([3, 2, 1], "m")
        finally:
            await state.close()
        assert [u.click_items.tolist() for u in users] == [[300], [], [100]]
        assert all(u.cached_query_repr is None for u in users)

    asyncio.run(go())
    assert wire == ["send"] + ["read"] * 12  # 3 users x 4 commands, one write
    stats = admin.info("commandstats")
    calls = {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in COMMANDS}
    assert calls == {"lrange": 6, "hgetall": 3, "get": 3, "lpush": 0, "multi": 0}
    admin.close()


@pytest.mark.slow
def test_password_url_works_and_a_wrong_one_is_a_clear_error() -> None:
    with EmbeddedRedis() as server:
        redis.Redis.from_url(server.url).config_set("requirepass", "s3cret")
        url = f"redis://:s3cret@127.0.0.1:{server.port}/0"

        async def go(target: str) -> None:
            state = RedisState(target, CAPS)
            try:
                await state.ping()
                await state.append_query(1, 1, [1])
            finally:
                await state.close()

        asyncio.run(go(url))
        with pytest.raises(StateUnavailable, match=r"\*\*\*@127\.0\.0\.1"):  # password hidden
            asyncio.run(go(f"redis://:wrong@127.0.0.1:{server.port}/0"))


def test_rediss_url_uses_tls() -> None:
    state = RedisState("rediss://:pw@cache.example:6380/0", CAPS)
    assert state.client.connection_pool.connection_class is SSLConnection
    asyncio.run(state.close())


def test_state_load_writes_histories_as_of_a_time(tiny_data: Path, redis_client_url: str) -> None:
    dataset = PreparedDataset(tiny_data)
    as_of = int(dataset.schema["split"]["test_start_ms"])
    report = load_state(dataset, redis_client_url, query_cap=3, click_cap=4, progress=False)
    assert report.users > 0 and report.clicks > 0 and report.queries > 0
    client = redis.Redis.from_url(redis_client_url)
    user_keys = client.keys("qr:{*}:c")
    assert user_keys
    for key in user_keys[:20]:
        entries = client.lrange(key, 0, -1)
        assert 1 <= len(entries) <= 4
        stamps, _ = keys.unpack_clicks(entries)
        assert (stamps < as_of).all() and (np.diff(stamps) <= 0).all()  # newest first
    assert client.keys("qr:{*}:p")


def test_as_of_accepts_epoch_ms_and_iso_times() -> None:
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000
    with pytest.raises(ValueError, match="--as-of"):
        parse_time("yesterday")


def test_the_client_parses_with_hiredis() -> None:
    """Without hiredis, list replies cost about 4x more to parse (MEASURED.md)."""
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE
