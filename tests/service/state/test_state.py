"""Redis keys and state against a real Redis: exact key bytes, caps, TTL, idempotent
appends, URLs and their redaction, bulk load. (Faults: test_redis_faults.py.)"""

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
from service.errors import SearchNotFound, StateUnavailable
from service.state import keys
from service.state.embedded_redis import EmbeddedRedis
from service.state.load import default_redis_password, load_state, parse_time
from service.state.single_node import RedisState
from service.state.store import HistoryCaps
from service.state.urls import redacted_url

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
    ts, tokens, clicked = keys.unpack_query(keys.pack_query(1_700_000_000_000, [7, 1 << 40]))
    assert ts == 1_700_000_000_000 and tokens.tolist() == [7, 1 << 40] and not len(clicked)
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
    with EmbeddedRedis(password="s3cret") as server:
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
    report = load_state(
        dataset, redis_client_url, query_cap=3, click_cap=4, max_search_clicks=2, progress=False
    )
    assert report.users > 0 and report.clicks > 0 and report.queries > 0
    assert report.search_clicks > 0
    client = redis.Redis.from_url(redis_client_url)
    user_keys = client.keys("qr:{*}:c")
    assert user_keys
    for key in user_keys[:20]:
        entries = client.lrange(key, 0, -1)
        assert 1 <= len(entries) <= 4
        stamps, _ = keys.unpack_clicks(entries)
        assert (stamps < as_of).all() and (np.diff(stamps) <= 0).all()  # newest first
    assert client.keys("qr:{*}:p")
    # Each query entry carries its search's clicked results: raw ids, display order,
    # distinct, at most max_search_clicks; built here independently from the timeline.
    user_raw, item_raw, word_raw = (dataset.raw_ids(n) for n in ("users", "items", "words"))
    expected: dict[bytes, list[bytes]] = {}
    for row in np.flatnonzero(dataset.search_ts < as_of):  # per user, in time order
        a, b = dataset.query_offsets[row], dataset.query_offsets[row + 1]
        c, d = dataset.clicked_offsets[row], dataset.clicked_offsets[row + 1]
        clicked: list[int] = []
        for item in item_raw[dataset.clicked_items[c:d]].tolist():
            if item not in clicked and len(clicked) < 2:
                clicked.append(item)
        entry = keys.pack_query(
            int(dataset.search_ts[row]), word_raw[dataset.query_words[a:b]], clicked
        )
        key = keys.query_key(int(user_raw[dataset.search_user[row]])).encode()
        expected[key] = [entry, *expected.get(key, [])][:3]
    stored = {key: client.lrange(key, 0, -1) for key in client.keys("qr:{*}:q")}
    assert stored == expected
    click_counts = [keys.unpack_queries(entries)[3] for entries in stored.values()]
    assert sum(int(counts.sum()) for counts in click_counts) == report.search_clicks
    assert max(int(counts.max()) for counts in click_counts) == 2  # the cap applied
    assert sum(int((counts > 0).sum()) for counts in click_counts) < report.queries
    client.close()


def test_as_of_accepts_epoch_ms_and_iso_times() -> None:
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000
    with pytest.raises(ValueError, match="--as-of"):
        parse_time("yesterday")


def test_the_client_parses_with_hiredis() -> None:
    """Without hiredis, list replies cost about 4x more to parse (MEASURED.md)."""
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE


def _stored(url: str, key: str) -> list[bytes]:
    with redis.Redis.from_url(url) as client:
        return list(client.lrange(key, 0, -1))


def test_a_repeated_write_is_stored_once_and_refreshes_the_ttl(redis_client_url: str) -> None:
    admin = redis.Redis.from_url(redis_client_url)

    async def go() -> None:
        state = RedisState(redis_client_url, CAPS)
        try:
            assert await state.append_query(7, 1000, [1, 2]) == 1
            assert await state.append_clicks(7, 2000, [11, 12]) == 2
            admin.expire(keys.query_key(7), 5)
            admin.expire(keys.click_key(7), 5)
            assert await state.append_query(7, 1000, [1, 2]) == 1  # the retry: same answer
            assert await state.append_clicks(7, 2000, [11, 12]) == 2
            assert admin.ttl(keys.query_key(7)) > 5 and admin.ttl(keys.click_key(7)) > 5
            assert await state.append_query(7, 1000, [1, 3]) == 2  # other words: a new entry
            assert await state.append_query(7, 1001, [1, 2]) == 3  # another time: new entry
            (user,) = await state.read([7], None)
        finally:
            await state.close()
        assert user.query_ts.tolist() == [1001, 1000, 1000]
        assert user.click_items.tolist() == [12, 11]

    asyncio.run(go())
    admin.close()


def test_a_retry_is_recognised_behind_up_to_the_window_of_newer_entries(
    redis_client_url: str,
) -> None:
    caps = HistoryCaps(queries=50, clicks=50, ttl_s=100)

    async def go() -> None:
        state = RedisState(redis_client_url, caps)
        try:
            await state.append_clicks(1, 10, [5, 6, 7])
            for i in range(keys.DEDUP_WINDOW):  # other calls between the try and its retry
                await state.append_clicks(1, 20 + i, [100 + i])
            length = 3 + keys.DEDUP_WINDOW
            assert await state.append_clicks(1, 10, [5, 6, 7]) == length  # recognised
            await state.append_query(2, 10, [1])
            for i in range(keys.DEDUP_WINDOW + 1):
                await state.append_query(2, 20 + i, [2])
            # Beyond the window the same entry counts as a new event.
            assert await state.append_query(2, 10, [1]) == keys.DEDUP_WINDOW + 3
        finally:
            await state.close()

    asyncio.run(go())
    _, items = keys.unpack_clicks(_stored(redis_client_url, keys.click_key(1)))
    assert items.tolist() == [107 - i for i in range(8)] + [7, 6, 5]


def test_only_a_whole_contiguous_run_is_a_retry(redis_client_url: str) -> None:
    async def go() -> None:
        state = RedisState(redis_client_url, HistoryCaps(queries=3, clicks=10, ttl_s=100))
        try:
            assert await state.append_clicks(1, 10, [9, 9]) == 2  # within one call: as given
            assert await state.append_clicks(1, 10, [9, 9]) == 2  # two identical calls: one
            assert await state.append_clicks(1, 10, [9]) == 2  # a run inside the last call
            assert await state.append_clicks(2, 10, [1, 2]) == 2
            assert await state.append_clicks(2, 10, [2, 3]) == 4  # overlaps, is not a run
            assert await state.append_clicks(2, 10, [1, 3]) == 6  # not contiguous: new
        finally:
            await state.close()

    asyncio.run(go())
    _, items = keys.unpack_clicks(_stored(redis_client_url, keys.click_key(2)))
    assert items.tolist() == [3, 1, 3, 2, 2, 1]


def test_a_call_longer_than_the_cap_is_recognised_by_what_was_kept(
    redis_client_url: str,
) -> None:
    async def go() -> None:
        state = RedisState(redis_client_url, CAPS)  # clicks capped at 4
        try:
            assert await state.append_clicks(3, 10, [1, 2, 3, 4, 5, 6]) == 4
            assert await state.append_clicks(3, 10, [1, 2, 3, 4, 5, 6]) == 4
        finally:
            await state.close()

    asyncio.run(go())
    _, items = keys.unpack_clicks(_stored(redis_client_url, keys.click_key(3)))
    assert items.tolist() == [6, 5, 4, 3]


SECRET = "pa@ss:w0rd"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@cache.example:6380/0", "redis://***@cache.example:6380/0"),
        ("redis://alice:hunter2@cache.example/1", "redis://alice:***@cache.example/1"),
        ("redis://:p@ss@cache.example:1", "redis://***@cache.example:1"),  # the LAST @
        ("redis://cache.example:1/0?password=hunter2", "redis://cache.example:1/0?password=***"),
        ("rediss://u:hunter2@tls.example:6380/0", "rediss://u:***@tls.example:6380/0"),
        ("unix:///tmp/r.sock?password=hunter2&db=2", "unix:///tmp/r.sock?password=***&db=2"),
        ("unix://:hunter2@/tmp/r.sock", "unix://***@/tmp/r.sock"),
        ("redis://cache.example:6379/0", "redis://cache.example:6379/0"),
        ("hunter2@cache.example", "***"),  # no scheme
    ],
)
def test_redacted_url_shows_no_password_in_any_form(url: str, shown: str) -> None:
    assert redacted_url(url) == shown
    for secret in ("hunter2", "p@ss"):
        assert secret not in redacted_url(url)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@h:1/0",
        "redis://:pa%40ss%3Aw0rd@h:1/0",  # percent-encoded
        "redis://h:1/0?password=pa%40ss%3Aw0rd",
        f"redis://h:1/0?password={SECRET}",
        f"redis://:{SECRET}@h:1/0#frag",
        f"redis://:{SECRET}@[::1/0",  # unparseable
    ],
)
def test_redacted_url_hides_a_password_with_reserved_characters(url: str) -> None:
    shown = redacted_url(url)
    assert SECRET not in shown and "pa%40ss" not in shown and "w0rd" not in shown


def test_password_argument_wins_over_the_url(redis_client_url: str) -> None:
    state = RedisState("redis://:from-url@h:1/0", CAPS, password="from-argument")
    assert state.client.connection_pool.connection_kwargs["password"] == "from-argument"
    asyncio.run(state.close())
    state = RedisState("redis://:from-url@h:1/0", CAPS)
    assert state.client.connection_pool.connection_kwargs["password"] == "from-url"
    asyncio.run(state.close())


def test_state_load_takes_the_password_and_never_shows_it(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dataset = PreparedDataset(tiny_data)
    with EmbeddedRedis(password=SECRET) as server:
        wrong = f"redis://:{SECRET}x@127.0.0.1:{server.port}/0"
        report = load_state(dataset, wrong, password=SECRET, progress=False)  # it wins
        assert report.users > 0
        with pytest.raises(StateUnavailable) as info:
            load_state(dataset, wrong, progress=False)
        assert SECRET not in str(info.value) and "127.0.0.1" in str(info.value)
        with pytest.raises(StateUnavailable) as info:
            load_state(dataset, server.url, password=SECRET + "x", progress=False)
        assert SECRET not in str(info.value)
    monkeypatch.delenv("QUERYREC_REDIS_PASSWORD", raising=False)
    monkeypatch.delenv("QUERYREC_REDIS_PASSWORD_FILE", raising=False)
    assert default_redis_password() is None
    (tmp_path / "pw").write_text(SECRET + "\n")
    monkeypatch.setenv("QUERYREC_REDIS_PASSWORD_FILE", str(tmp_path / "pw"))
    assert default_redis_password() == SECRET
    monkeypatch.setenv("QUERYREC_REDIS_PASSWORD", "from-env")
    assert default_redis_password() == "from-env"


# -- search clicks ---------------------------------------------------------------------------

SEARCH_CAPS = HistoryCaps(queries=5, clicks=4, ttl_s=100, search_clicks=3)


def le(*values: int) -> bytes:
    """Little-endian int64 bytes of `values`, one after the other."""
    return b"".join(value.to_bytes(8, "little", signed=True) for value in values)


def test_search_clicks_are_stored_in_their_search_and_read_back(redis_client_url: str) -> None:
    admin = redis.Redis.from_url(redis_client_url)
    key = keys.query_key(7)

    async def go() -> None:
        state = RedisState(redis_client_url, SEARCH_CAPS)
        try:
            await state.append_query(7, 1000, [1, 2])
            await state.append_query(7, 2000, [3])
            await state.append_query(7, 3000, [])
            assert await state.record_search_clicks(7, 2000, [50, 51]) == 2
            assert _stored(redis_client_url, key) == [
                le(3000),
                le(2000, 3, -1, 50, 51),
                le(1000, 1, 2),
            ]
            (user,) = await state.read([7], None)
            assert user.query_ts.tolist() == [3000, 2000, 1000]
            assert user.query_sizes.tolist() == [0, 1, 2]
            assert user.query_words.tolist() == [3, 1, 2]
            assert user.query_click_sizes.tolist() == [0, 2, 0]
            assert user.query_click_items.tolist() == [50, 51]
            assert user.query_click_sizes.dtype == user.query_click_items.dtype == np.int64

            # A retry stores nothing twice and answers the same; it refreshes the TTL.
            before = _stored(redis_client_url, key)
            admin.expire(key, 5)
            assert await state.record_search_clicks(7, 2000, [50, 51]) == 2
            assert _stored(redis_client_url, key) == before
            assert admin.ttl(key) > 5
            # A later call adds only its new items, after the stored ones.
            assert await state.record_search_clicks(7, 2000, [51, 52, 50]) == 3
            # The cap (3 per search): further items are dropped, the first ones stay.
            assert await state.record_search_clicks(7, 2000, [53, 54]) == 3
            # Repeated items inside one call are stored once.
            assert await state.record_search_clicks(7, 1000, [9, 9, 8]) == 2
            (user,) = await state.read([7], None)
            assert user.query_click_sizes.tolist() == [0, 3, 2]
            assert user.query_click_items.tolist() == [50, 51, 52, 9, 8]
            assert user.query_words.tolist() == [3, 1, 2]  # the words are untouched
            assert await state.client.llen(key) == 3  # clicks add no entries
        finally:
            await state.close()

    asyncio.run(go())
    assert _stored(redis_client_url, key) == [
        le(3000),
        le(2000, 3, -1, 50, 51, 52),
        le(1000, 1, 2, -1, 9, 8),
    ]
    admin.close()


def test_clicks_for_an_unknown_search_are_search_not_found_and_change_nothing(
    redis_client_url: str,
) -> None:
    admin = redis.Redis.from_url(redis_client_url)
    key = keys.query_key(7)

    async def go() -> None:
        state = RedisState(redis_client_url, SEARCH_CAPS)
        try:
            await state.append_query(7, 1000, [1, 2])
            await state.record_search_clicks(7, 1000, [5])
            before = _stored(redis_client_url, key)
            ttl = admin.ttl(key)
            admin.persist(key)  # a refreshed EXPIRE would show as a TTL again
            with pytest.raises(SearchNotFound) as info:
                await state.record_search_clicks(7, 1001, [6])
            assert str(info.value) == (
                "user 7 has no search at search_timestamp_ms 1001 in the serving state "
                "(never recorded, expired, or no longer among the newest 5 searches)"
            )
            assert _stored(redis_client_url, key) == before  # byte for byte
            assert admin.ttl(key) == -1 and ttl > 0
            with pytest.raises(SearchNotFound):  # a user without any history
                await state.record_search_clicks(8, 1000, [6])
            assert admin.exists(keys.query_key(8)) == 0  # nothing created
            # A search pushed out of the newest L is gone too.
            for i in range(5):
                await state.append_query(7, 2000 + i, [i])
            with pytest.raises(SearchNotFound):
                await state.record_search_clicks(7, 1000, [6])
        finally:
            await state.close()

    asyncio.run(go())
    admin.close()


def test_clicks_for_searches_in_one_millisecond_go_to_the_newest(redis_client_url: str) -> None:
    async def go() -> None:
        state = RedisState(redis_client_url, SEARCH_CAPS)
        try:
            await state.append_query(7, 1000, [1])
            await state.append_query(7, 1000, [2])  # other words: a second search
            assert await state.record_search_clicks(7, 1000, [77]) == 1
            (user,) = await state.read([7], None)
        finally:
            await state.close()
        assert user.query_words.tolist() == [2, 1]
        assert user.query_click_sizes.tolist() == [1, 0]
        assert user.query_click_items.tolist() == [77]

    asyncio.run(go())


def test_entries_of_the_old_layout_read_without_clicks_and_take_clicks(
    redis_client_url: str,
) -> None:
    """Entries written before search clicks existed ([ts, tokens...] only) stay readable."""
    admin = redis.Redis.from_url(redis_client_url)
    key = keys.query_key(9)
    admin.rpush(key, le(3000, 4, 5), le(2000), le(1000, 6))  # newest first, as stored

    async def go() -> None:
        state = RedisState(redis_client_url, SEARCH_CAPS)
        try:
            (user,) = await state.read([9], None)
            assert user.query_ts.tolist() == [3000, 2000, 1000]
            assert user.query_sizes.tolist() == [2, 0, 1]
            assert user.query_words.tolist() == [4, 5, 6]
            assert user.query_click_sizes.tolist() == [0, 0, 0]
            assert user.query_click_items.tolist() == []
            assert await state.record_search_clicks(9, 2000, [60]) == 1
            (user,) = await state.read([9], None)
            assert user.query_click_sizes.tolist() == [0, 1, 0]
            assert user.query_words.tolist() == [4, 5, 6]
        finally:
            await state.close()

    asyncio.run(go())
    assert _stored(redis_client_url, key) == [le(3000, 4, 5), le(2000, -1, 60), le(1000, 6)]
    admin.close()


def test_a_query_retried_after_its_clicks_were_recorded_is_stored_once(
    redis_client_url: str,
) -> None:
    async def go() -> None:
        state = RedisState(redis_client_url, SEARCH_CAPS)
        try:
            assert await state.append_query(7, 1000, [1, 2]) == 1
            assert await state.append_query(7, 1001, [3]) == 2
            assert await state.record_search_clicks(7, 1000, [50]) == 1
            assert await state.append_query(7, 1000, [1, 2]) == 2  # the retry: recognised
            assert await state.append_query(7, 1000, [1]) == 3  # a prefix of its words: new
            assert await state.append_query(7, 1000, [1, 2, 4]) == 4  # more words: new
        finally:
            await state.close()

    asyncio.run(go())
    assert _stored(redis_client_url, keys.query_key(7)) == [
        le(1000, 1, 2, 4),
        le(1000, 1),
        le(1001, 3),
        le(1000, 1, 2, -1, 50),
    ]
