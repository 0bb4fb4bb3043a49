"""User state in Redis behind one small interface: append histories, read a batch of users.

Writes are one `MULTI` transaction per call (`LPUSH` + `LTRIM` + `EXPIRE`), so nothing is
acknowledged that was not stored and a list never exceeds its cap. Reads are one
pipelined round trip for a whole batch of users (`LRANGE` x 2, `HGETALL`, and the cached
query vector's `GET`). The client uses the hiredis parser when the `hiredis` package is
installed (redis-py picks it by default; without it, parsing list replies costs about 4x,
MEASURED.md). URLs: `redis://`, `rediss://` (TLS), `unix://`, passwords inside the URL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service import redis_keys as keys
from service.errors import StateUnavailable


@dataclass(frozen=True)
class HistoryCaps:
    """How much history is kept per user, and for how long."""

    queries: int  # L: query entries kept
    clicks: int  # H: click entries kept
    ttl_s: int  # expiry of a user's keys after the last write


def _no_events() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass
class UserState:
    """What Redis holds for one user, as read (raw ids, newest first)."""

    query_ts: np.ndarray = field(default_factory=_no_events)  # (m,) Unix ms
    query_sizes: np.ndarray = field(default_factory=_no_events)  # (m,) words per query
    query_words: np.ndarray = field(default_factory=_no_events)  # (sum of sizes,) raw ids
    click_ts: np.ndarray = field(default_factory=_no_events)  # (n,) Unix ms
    click_items: np.ndarray = field(default_factory=_no_events)  # (n,) raw item ids
    profile: dict[str, int] = field(default_factory=dict)
    cached_query_repr: bytes | None = None


class RedisState:
    """The service's view of Redis (asyncio)."""

    def __init__(self, url: str, caps: HistoryCaps, *, timeout_s: float = 2.0):
        self.caps = caps
        self.url = url
        self.client = aioredis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as error:
            raise StateUnavailable(
                f"Redis at {redacted_url(self.url)} does not answer: {error}"
            ) from None

    async def close(self) -> None:
        await self.client.aclose()

    async def append_query(self, user_id: int, timestamp_ms: int, token_ids: list[int]) -> int:
        """Store one query; -> queries kept for the user."""
        return await self._append(
            keys.query_key(user_id), [keys.pack_query(timestamp_ms, token_ids)], self.caps.queries
        )

    async def append_clicks(self, user_id: int, timestamp_ms: int, item_ids: list[int]) -> int:
        """Store clicks in click order (the last one becomes the newest); -> clicks kept."""
        return await self._append(
            keys.click_key(user_id), keys.pack_clicks(timestamp_ms, item_ids), self.caps.clicks
        )

    async def _append(self, key: str, entries: list[bytes], cap: int) -> int:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.lpush(key, *entries)
                pipe.ltrim(key, 0, cap - 1)
                pipe.expire(key, self.caps.ttl_s)
                length, _, _ = await pipe.execute()
        except (RedisError, OSError) as error:
            raise StateUnavailable(f"Redis write failed: {error}") from None
        return min(int(length), cap)

    async def read(self, user_ids: list[int], model_version: str | None) -> list[UserState]:
        """Everything the model needs for each user, in one pipelined round trip.

        `model_version` None: do not read a cached query vector.
        """
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for user in user_ids:
                    pipe.lrange(keys.query_key(user), 0, self.caps.queries - 1)
                    pipe.lrange(keys.click_key(user), 0, self.caps.clicks - 1)
                    pipe.hgetall(keys.profile_key(user))
                    if model_version is not None:
                        pipe.get(keys.query_repr_key(user, model_version))
                replies = await pipe.execute()
        except (RedisError, OSError) as error:
            raise StateUnavailable(f"Redis read failed: {error}") from None
        per_user = 4 if model_version is not None else 3
        states = []
        for i in range(len(user_ids)):
            queries, clicks, profile = replies[i * per_user : i * per_user + 3]
            click_ts, click_items = keys.unpack_clicks(clicks)
            query_ts, query_sizes, query_words = keys.unpack_queries(queries)
            states.append(
                UserState(
                    query_ts=query_ts,
                    query_sizes=query_sizes,
                    query_words=query_words,
                    click_ts=click_ts,
                    click_items=click_items,
                    profile={k.decode(): int(v) for k, v in profile.items()},
                    cached_query_repr=replies[i * per_user + 3] if per_user == 4 else None,
                )
            )
        return states

    async def cache_query_reprs(
        self, model_version: str, entries: list[tuple[int, bytes, np.ndarray]]
    ) -> None:
        """Store (user, history version, vector) triples; best effort (a cache)."""
        if not entries:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for user, version, vector in entries:
                    pipe.set(
                        keys.query_repr_key(user, model_version),
                        keys.pack_query_repr(version, vector),
                        ex=self.caps.ttl_s,
                    )
                await pipe.execute()
        except (RedisError, OSError):
            pass  # a lost cache entry costs one encoder call later, nothing more


def redacted_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
