"""The user state store: the one interface the service uses, and what both stores share.

Callers (`service.inference.scoring`, `service.transport.calls`, `service.transport.server`)
see a `StateStore`: append histories, read a batch of users, cache query vectors, ping,
close. Two implementations, picked by the URL (`service.state.by_url.open_state`):
`service.state.single_node.RedisState` (one Redis server) and
`service.state.cluster.ClusterState` (Redis Cluster, routed per master). Their fault
logic (outages, reconnects, reports) is written once in `service.state.outage`.

What is the same for both lives here rather than twice: the write path (each write is one
script of `service/state/keys.py` by EVALSHA: appends run `APPEND_SCRIPT`, atomic in
Redis, capped (`LTRIM`), refreshing the TTL, and idempotent, so that a write retried after
a timeout is not stored twice; search clicks run `SEARCH_CLICKS_SCRIPT`, idempotent too;
nothing is acknowledged that was not stored), the commands of a read (`LRANGE` x 2,
`HGETALL`, and the cached query vector's `GET` per user) and their decoding, and the
client-facing sentences.

Faults as callers see them:
- While the store is known down (`available` False), reads and writes raise
  `StateUnavailable` at once, without touching the network, and cache writes are skipped.
- A timeout is the caller's budget: callers bound a command with
  `service.deadline.finish_by` (the caller is woken at its deadline whatever the command
  does), not with `asyncio.timeout` alone, whose cancellation was measured to be lost
  under a paused Redis. Writes take `timeout_s` and do it themselves. A late read is
  cancelled or left to finish as `cancel_late_reads` says.
- `StateUnavailable` messages reach gRPC clients: they are the fixed sentences below, with
  no host, port, password or exception text. Details (URL redacted) go to `redis_lost`
  and to the message of `ping`, which only operators see.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from service.deadline import finish_by
from service.errors import SearchNotFound, StateUnavailable
from service.state import keys
from service.state.outage import Failure, RedisEvents, Reporter, failure_of

UNAVAILABLE = "Redis is unavailable"
"""The client-facing message while Redis is down or refused a connection."""
LATE = "Redis did not answer in time"
WRITE_LATE = "Redis write did not finish in time"
REFUSED = "Redis refused the command"

WRITE_SCRIPTS = (keys.APPEND_SCRIPT, keys.SEARCH_CLICKS_SCRIPT)
"""The write scripts (`StateStore._run_script`), registered once per store."""


@dataclass(frozen=True)
class HistoryCaps:
    """How much history is kept per user, and for how long."""

    queries: int  # L: query entries kept
    clicks: int  # H: click entries kept
    ttl_s: int  # expiry of a user's keys after the last write
    search_clicks: int = 16  # clicked results kept per search (max_search_clicks)


def _no_events() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass
class UserState:
    """What Redis holds for one user, as read (raw ids, newest first)."""

    query_ts: np.ndarray = field(default_factory=_no_events)  # (m,) Unix ms
    query_sizes: np.ndarray = field(default_factory=_no_events)  # (m,) words per query
    query_words: np.ndarray = field(default_factory=_no_events)  # (sum of sizes,) raw ids
    # The results clicked after each search, in the order of query_ts: clicks per search
    # (m,), then every search's clicked raw item ids one after the other (sum of
    # counts,), each search's in the order they were recorded.
    query_click_sizes: np.ndarray = field(default_factory=_no_events)
    query_click_items: np.ndarray = field(default_factory=_no_events)
    click_ts: np.ndarray = field(default_factory=_no_events)  # (n,) Unix ms
    click_items: np.ndarray = field(default_factory=_no_events)  # (n,) raw item ids
    profile: dict[str, int] = field(default_factory=dict)
    cached_query_repr: bytes | None = None
    # Cluster mode: why this user's state could not be read (the client-facing sentence,
    # e.g. UNAVAILABLE while the user's master is down); None: read. Single-node reads
    # fail as a whole (StateUnavailable) and never set it.
    unavailable: str | None = None


def user_state_of(replies: list[Any]) -> UserState:
    """One user's replies to `StateStore._read_commands` (LRANGE queries, LRANGE clicks,
    HGETALL profile[, GET cached vector]) -> their state."""
    queries, clicks, profile = replies[:3]
    click_ts, click_items = keys.unpack_clicks(clicks)
    query_ts, query_sizes, query_words, click_sizes, clicked = keys.unpack_queries(queries)
    return UserState(
        query_ts=query_ts,
        query_sizes=query_sizes,
        query_words=query_words,
        query_click_sizes=click_sizes,
        query_click_items=clicked,
        click_ts=click_ts,
        click_items=click_items,
        profile={k.decode(): int(v) for k, v in profile.items()},
        cached_query_repr=replies[3] if len(replies) == 4 else None,
    )


def sentence(failure: Failure, late: str) -> str:
    """The client-facing sentence of a failure: down -> UNAVAILABLE, late -> `late` (LATE
    or WRITE_LATE), refused -> REFUSED."""
    if failure is Failure.DOWN:
        return UNAVAILABLE
    if failure is Failure.LATE:
        return late
    return REFUSED


class StateStore(ABC):
    """User state in Redis behind one small interface (asyncio); see the module docstring.

    An abstract class rather than a Protocol because the two stores share more than a
    shape: the writes (`append_query`, `append_clicks`, `record_search_clicks`), the
    commands of a read and the fault reports are implemented here once; a store supplies
    how a script and a batch of commands reach its server(s).
    """

    cancel_late_reads: ClassVar[bool]
    """Whether a caller whose deadline passes cancels the read (cluster) or leaves it to
    finish and meanwhile skips Redis (single node: a cancelled command costs its
    connection, and reconnecting to a stopped Redis costs every call a connect)."""

    def __init__(self, url: str, caps: HistoryCaps, reporter: Reporter) -> None:
        """url: as configured (messages show `redacted_url(url)` only). reporter: where
        failures, losses and recoveries go, with the store's secrets to mask."""
        self.url = url
        self.caps = caps
        self.reporter = reporter

    # -- what each store implements ----------------------------------------------------

    @property
    @abstractmethod
    def available(self) -> bool:
        """False while Redis is known down and reconnects run in the background."""

    @property
    @abstractmethod
    def client(self) -> aioredis.Redis | RedisCluster:
        """The redis-py client underneath, for tools that write raw keys (benchmarks,
        tests); the service itself goes through the methods of this class."""

    @abstractmethod
    async def ping(self) -> None:
        """StateUnavailable (naming the redacted URL: for operators) if Redis does not
        answer; at once while it is known down."""

    @abstractmethod
    async def close(self) -> None:
        """Stop the reconnect tasks and close every connection."""

    @abstractmethod
    async def read(self, user_ids: list[int], cache_version: str | None) -> list[UserState]:
        """Everything the model needs for each user, in one pipelined round trip per
        server. `cache_version` None: do not read a cached query vector."""

    @abstractmethod
    async def cache_query_reprs(
        self, cache_version: str, entries: list[tuple[int, bytes, np.ndarray]]
    ) -> None:
        """Store (user, history version, vector) triples under `cache_version` (the
        encoder's version); best effort (a cache), skipped while Redis is down."""

    @abstractmethod
    def _script(self, source: str, key: str, args: list[int | bytes]) -> Awaitable[Any]:
        """The script `source` (one of WRITE_SCRIPTS) run on `key` with `args`: its integer
        reply; raises StateUnavailable (already reported) or a redis-py error."""

    @abstractmethod
    def _connection_failed(self, error: BaseException) -> None:
        """A command of this store failed with a connection error (`_failed`)."""

    # -- shared ----------------------------------------------------------------------------

    def report_to(self, events: RedisEvents | None) -> None:
        """Report failures, losses and recoveries to `events` from now on (the server
        attaches its metrics after the start-up PING, so that a Redis missing at start
        is one error line, not also a "lost" event)."""
        self.reporter.events = events

    async def append_query(
        self,
        user_id: int,
        timestamp_ms: int,
        token_ids: list[int],
        *,
        timeout_s: float | None = None,
    ) -> int:
        """Store one query (once, however often it is retried); -> queries kept.

        timeout_s bounds the whole write (None: only the socket timeouts).
        """
        return await self._append(
            keys.query_key(user_id),
            [keys.pack_query(timestamp_ms, token_ids)],
            self.caps.queries,
            timeout_s,
        )

    async def append_clicks(
        self,
        user_id: int,
        timestamp_ms: int,
        item_ids: list[int],
        *,
        timeout_s: float | None = None,
    ) -> int:
        """Store clicks in click order (the last one becomes the newest), once however
        often the call is retried; -> clicks kept. timeout_s: as `append_query`."""
        return await self._append(
            keys.click_key(user_id),
            keys.pack_clicks(timestamp_ms, item_ids),
            self.caps.clicks,
            timeout_s,
        )

    async def record_search_clicks(
        self,
        user_id: int,
        search_timestamp_ms: int,
        item_ids: list[int],
        *,
        timeout_s: float | None = None,
    ) -> int:
        """Store the results clicked after the user's search at `search_timestamp_ms` in
        that search's query entry (the newest with that timestamp), each item once however
        often it is sent, at most `caps.search_clicks` per search; -> the clicks the
        search holds now. SearchNotFound (nothing stored) when the user's query history
        holds no search with that timestamp. timeout_s: as `append_query`."""
        count = await self._run_script(
            keys.SEARCH_CLICKS_SCRIPT,
            keys.query_key(user_id),
            keys.search_clicks_args(
                search_timestamp_ms, item_ids, self.caps.search_clicks, self.caps.ttl_s
            ),
            timeout_s,
        )
        if count < 0:
            raise SearchNotFound(
                f"user {user_id} has no search at search_timestamp_ms {search_timestamp_ms} "
                "in the serving state (never recorded, expired, or no longer among the "
                f"newest {self.caps.queries} searches)"
            )
        return count

    async def _append(
        self, key: str, entries: list[bytes], cap: int, timeout_s: float | None
    ) -> int:
        args = keys.append_args(entries, cap, self.caps.ttl_s)
        return min(await self._run_script(keys.APPEND_SCRIPT, key, args, timeout_s), cap)

    async def _run_script(
        self, source: str, key: str, args: list[int | bytes], timeout_s: float | None
    ) -> int:
        """One write: `_script(source, key, args)`; -> its integer reply. StateUnavailable
        (at once while Redis is down) when it was not run or its reply did not arrive
        within `timeout_s`; redis_error("write") reported."""
        self._refuse_while_down("write")
        write = self._script(source, key, args)
        try:
            if timeout_s is None:
                reply = await write
            else:  # not asyncio.timeout: a lost cancellation must not hold the call
                reply = await finish_by(write, asyncio.get_running_loop().time() + timeout_s)
        except TimeoutError:  # our timeout; the caller's own shows as a cancel, passed on
            self.reporter.error("write")
            raise StateUnavailable(WRITE_LATE) from None
        except (RedisError, OSError) as error:
            raise self._failed("write", error, WRITE_LATE) from None
        return int(reply)

    def _read_commands(self, user: int, cache_version: str | None) -> list[tuple[Any, ...]]:
        """The commands of one user's read, in the order `user_state_of` decodes (all
        keys in the user's slot: `service.state.keys` hash-tags them)."""
        commands: list[tuple[Any, ...]] = [
            ("LRANGE", keys.query_key(user), 0, self.caps.queries - 1),
            ("LRANGE", keys.click_key(user), 0, self.caps.clicks - 1),
            ("HGETALL", keys.profile_key(user)),
        ]
        if cache_version is not None:
            commands.append(("GET", keys.query_repr_key(user, cache_version)))
        return commands

    def _cache_command(
        self, user: int, cache_version: str, version: bytes, vector: np.ndarray
    ) -> tuple[Any, ...]:
        """The SET of one cached query vector (expiring with the user's other keys)."""
        return (
            "SET",
            keys.query_repr_key(user, cache_version),
            keys.pack_query_repr(version, vector),
            "EX",
            self.caps.ttl_s,
        )

    def _refuse_while_down(self, operation: str) -> None:
        """StateUnavailable at once, without a network attempt, while Redis is down."""
        if not self.available:
            self.reporter.error(operation)
            raise StateUnavailable(UNAVAILABLE)

    def _failed(self, operation: str, error: BaseException, late: str) -> StateUnavailable:
        """Report a failed command; pass a connection failure to `_connection_failed`;
        -> the client-facing error (a fixed sentence: no host, port or exception text)."""
        self.reporter.error(operation)
        failure = failure_of(error)
        if failure is Failure.DOWN:
            self._connection_failed(error)
        return StateUnavailable(sentence(failure, late))
