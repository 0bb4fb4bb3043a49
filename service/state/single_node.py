"""The state store on one Redis server (`redis://`, `rediss://` (TLS), `unix://`).

`RedisState` is the `StateStore` (service.state.store: the writes, the read's commands, the
client-facing sentences) over one redis-py client. Reads are one pipelined round trip for
a whole batch of users. The client uses the hiredis parser when the `hiredis` package is
installed (redis-py picks it by default; without it, parsing list replies costs about
4x, MEASURED.md). A password in the URL or, winning over it, the `password` argument.

Faults, without a connection storm (the outage itself: `service.state.outage`):
- Connections come from a `BlockingConnectionPool`: more concurrent calls than
  connections wait for one (the caller bounds the wait with its own deadline)
  instead of failing.
- A connection error (refused, reset, AUTH refused) marks Redis down: `available` turns
  False, `RedisEvents.redis_lost` is reported once, and ONE background task
  ("redis-reconnect") pings with jittered exponential backoff, capped at
  `reconnect_max_s`, on its own connection. Meanwhile reads and appends raise
  `StateUnavailable` at once, and cache writes are skipped. When the ping answers:
  available again, `redis_regained(seconds down)`.
- A late read is not cancelled by the caller (`cancel_late_reads` False: a cancelled
  command costs its connection); a late write is (`finish_by`): redis-py closes a
  connection whose command was cancelled half-way, so no later command reads another
  one's reply.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from service.errors import StateUnavailable
from service.state.outage import Outage, RedisEvents, Reporter
from service.state.store import (
    LATE,
    WRITE_SCRIPTS,
    HistoryCaps,
    StateStore,
    UserState,
    user_state_of,
)
from service.state.urls import parse_single_url, redacted_url


class RedisState(StateStore):
    """The state store on one Redis server (asyncio). See the module docstring."""

    cancel_late_reads = False

    def __init__(
        self,
        url: str,
        caps: HistoryCaps,
        *,
        password: str | None = None,
        timeout_s: float = 2.0,
        pool_size: int = 64,
        reconnect_max_s: float = 2.0,
        events: RedisEvents | None = None,
    ) -> None:
        """Configure the client; connects lazily (call `ping` to check at start).

        password: AUTH password; wins over one in the URL (an empty string counts as not
            given). Passed to redis-py as an argument, never put into a URL.
        timeout_s: socket connect and read timeout of each command (a backstop: callers
            bound their calls with their own, shorter deadline).
        pool_size: connections at most; more concurrent calls wait for a free one.
        reconnect_max_s: the longest pause between reconnect pings while Redis is down.
        events: where failures, losses and recoveries are reported; None: nowhere.
        SettingsError (password redacted) when redis-py refuses the URL.
        """
        password = password or None
        from_url = parse_single_url(url, redacted_url(url))
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            **from_url,
        }
        if password is not None:
            options["password"] = password
        # Masked in every detail text (exception texts are not trusted to omit them).
        super().__init__(url, caps, Reporter(events, [password, from_url.get("password")]))
        self._options = options
        self._reconnect_max_s = reconnect_max_s
        self._outage: Outage | None = None
        self._closed = False
        # One immediate retry on a connection error: a pooled connection the server closed
        # (idle timeout, restart) is replaced without declaring Redis down. Every command
        # is idempotent (reads, SET, the append script), so a retry never duplicates.
        once = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        pool = BlockingConnectionPool(
            max_connections=pool_size, timeout=None, retry=once, **options
        )
        self._client = aioredis.Redis.from_pool(pool)
        self._scripts = {source: self._client.register_script(source) for source in WRITE_SCRIPTS}

    @property
    def client(self) -> aioredis.Redis:
        """The redis-py client (its pool: `pool_size` connections)."""
        return self._client

    @property
    def available(self) -> bool:
        """False while Redis is known down and the background reconnect runs."""
        return self._outage is None

    async def ping(self) -> None:
        """StateUnavailable (naming the redacted URL: for operators) if Redis does not
        answer; at once while it is known down."""
        if not self.available:
            self.reporter.error("ping")
            raise StateUnavailable(f"Redis at {redacted_url(self.url)} is down (reconnecting)")
        try:
            await self._client.ping()
        except (RedisError, OSError) as error:
            self._failed("ping", error, LATE)
            raise StateUnavailable(
                f"Redis at {redacted_url(self.url)} does not answer ({type(error).__name__})"
            ) from None

    async def close(self) -> None:
        """Stop the reconnect task and close every connection."""
        self._closed = True
        outage, self._outage = self._outage, None
        if outage is not None:
            await outage.cancel()
        await self._client.aclose()

    async def read(self, user_ids: list[int], cache_version: str | None) -> list[UserState]:
        """Everything the model needs for each user, in one pipelined round trip.

        `cache_version` None: do not read a cached query vector. Fails as a whole:
        StateUnavailable (at once while Redis is down).
        """
        self._refuse_while_down("read")
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for user in user_ids:
                    for command in self._read_commands(user, cache_version):
                        pipe.execute_command(*command)
                replies = await pipe.execute()
        except (RedisError, OSError) as error:
            raise self._failed("read", error, LATE) from None
        per_user = 4 if cache_version is not None else 3
        return [
            user_state_of(replies[i * per_user : (i + 1) * per_user]) for i in range(len(user_ids))
        ]

    async def cache_query_reprs(
        self, cache_version: str, entries: list[tuple[int, bytes, np.ndarray]]
    ) -> None:
        """Store (user, history version, vector) triples under `cache_version` (the
        encoder's version); best effort (a cache), skipped while Redis is down."""
        if not entries or not self.available:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for user, version, vector in entries:
                    pipe.execute_command(*self._cache_command(user, cache_version, version, vector))
                await pipe.execute()
        except (RedisError, OSError) as error:
            self._failed("cache", error, LATE)  # a lost entry costs one encoder call later

    def _script(self, source: str, key: str, args: list[int | bytes]) -> Awaitable[Any]:
        """EVALSHA of the registered script (EVAL when the server does not know it yet:
        redis-py's `Script` loads it)."""
        return self._scripts[source](keys=[key], args=args)

    def _connection_failed(self, error: BaseException) -> None:
        """The first connection failure of an outage begins it (reported, one reconnect
        task); later failures of the same outage change nothing."""
        if self._outage is not None or self._closed:
            return
        self._outage = Outage(
            "redis-reconnect",
            f"Redis at {redacted_url(self.url)} is down: {type(error).__name__}: {error}",
            probe_options=self._options,
            reconnect_max_s=self._reconnect_max_s,
            reporter=self.reporter,
            drop_idle=lambda: self._client.connection_pool.disconnect(inuse_connections=False),
            ended=self._ended,
        )

    def _ended(self, down_s: float) -> None:
        """Redis answers again: available, `redis_regained`."""
        self._outage = None
        self.reporter.regained(down_s)
