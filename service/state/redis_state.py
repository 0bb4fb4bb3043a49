"""User state in Redis behind one small interface: append histories, read a batch of users.

Writes are one `EVALSHA` per call of a script of `service/state/keys.py`: appends run
`APPEND_SCRIPT` (atomic in Redis, capped (`LTRIM`), refreshing the TTL, and idempotent, so
that a write retried after a timeout is not stored twice), search clicks run
`SEARCH_CLICKS_SCRIPT` (the clicked results of one stored search, written into its query
entry; idempotent too). Nothing is acknowledged that was not stored. Reads are one
pipelined round trip for a whole batch of users (`LRANGE` x 2, `HGETALL`, and the cached
query vector's `GET`). The client uses the hiredis parser when the `hiredis` package is
installed (redis-py picks it by default; without it, parsing list replies costs about
4x, MEASURED.md). URLs: `redis://`, `rediss://` (TLS), `unix://`; a password in the URL
or, winning over it, the `password` argument.

Faults, without a connection storm:
- Connections come from a `BlockingConnectionPool`: more concurrent calls than
  connections wait for one (the caller bounds the wait with its own deadline)
  instead of failing.
- A connection error (refused, reset, AUTH refused) marks Redis down: `available` turns
  False, `RedisEvents.redis_lost` is reported once, and ONE background task pings with
  jittered exponential backoff (redis-py's `Retry`, capped at `reconnect_max_s`) on its
  own connection. Meanwhile reads and appends raise `StateUnavailable` at once, without
  touching the network, and cache writes are skipped. When the ping answers: available
  again, `redis_regained(seconds down)`.
- A timeout is not a fault of that kind: a slow or paused Redis is the caller's budget to
  handle. Callers bound a command with `service.deadline.finish_by` (the caller is woken
  at its deadline whatever the command does; the late command is cancelled and ends in
  the background), not with `asyncio.timeout` alone, whose cancellation was measured to
  be lost under a paused Redis. redis-py closes a connection whose command was
  cancelled half-way, so no later command reads another one's reply.
- `StateUnavailable` messages reach gRPC clients: they are fixed sentences with no host,
  port, password or exception text. Details (URL redacted) go to `redis_lost` and to the
  message of `ping`, which only operators see.

Redis Cluster (`redis+cluster://host:port[,host:port...]`, TLS: `rediss+cluster://`):
the same interface over redis-py's cluster client, routed by `service.state.cluster`. A
read of many users is one pipelined round trip per node (the nodes concurrently), and
the fault model above holds per master: a dead master fails its own users at once
(`UserState.unavailable`, or `StateUnavailable` when every user of the call is on failed
nodes) while the other masters' users are read and written normally; `available` turns
False only when every master is down. Writes run the same scripts by EVALSHA, routed by
their one key (EVAL on that node when it does not have the script yet, which also loads
it there). MOVED and ASK during a slot migration are followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.deadline import finish_by
from service.errors import SearchNotFound, StateUnavailable
from service.state import keys
from service.state.cluster import (
    ClusterEvents,
    ClusterRouter,
    Failure,
    Outcome,
    Unit,
    is_cluster_url,
    parse_single_url,
)

log = logging.getLogger(__name__)

UNAVAILABLE = "Redis is unavailable"
"""The client-facing message while Redis is down or refused a connection."""
LATE = "Redis did not answer in time"
WRITE_LATE = "Redis write did not finish in time"
REFUSED = "Redis refused the command"

RECONNECT_BASE_S = 0.05
"""First reconnect pause (before jitter); it doubles per failed ping up to reconnect_max_s."""
_PINGS_PER_ROUND = 30
"""Failed pings per `Retry` round; the round then starts over from the base pause (which
keeps `2 ** failures` in the backoff formula finite during a long outage)."""

_SCRIPTS = (keys.APPEND_SCRIPT, keys.SEARCH_CLICKS_SCRIPT)
"""The write scripts (`RedisState._run_script`), registered once per client."""


class RedisEvents(Protocol):
    """What `RedisState` reports (the server passes its metrics + log adapter).

    Called on the event loop; they must return quickly and not raise (an exception is
    logged and otherwise ignored).
    """

    def redis_error(self, operation: str) -> None:
        """One operation failed: "read", "write", "cache" or "ping". Counts calls that
        Redis did not answer, answered too late or refused, and reads and writes refused
        at once while Redis is known down (each is one `StateUnavailable`); also each
        failed reconnect ping."""

    def redis_lost(self, detail: str) -> None:
        """Redis was found down (once per outage); `detail` is for the log (URL redacted)."""

    def redis_regained(self, down_s: float) -> None:
        """Redis answers again after `down_s` seconds down (once per outage)."""


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


def _is_connection_failure(error: BaseException) -> bool:
    """A refused / reset / closed connection (Redis down), as opposed to a timeout or a
    command error. Builtin TimeoutError is an OSError: it is a timeout here."""
    if isinstance(error, (TimeoutError, RedisTimeoutError)):
        return False
    return isinstance(error, (RedisConnectionError, OSError))


class RedisState:
    """The service's view of Redis (asyncio). See the module docstring for faults."""

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
        """
        self.caps = caps
        self.url = url
        self._password = password or None
        self._events = events
        self._reconnect_max_s = reconnect_max_s
        self._down_since: float | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        self.cluster: ClusterRouter | None = None
        if is_cluster_url(url):
            self.cluster = ClusterRouter(
                url,
                shown_url=redacted_url(url),
                password=self._password,
                timeout_s=timeout_s,
                pool_size=pool_size,
                reconnect_max_s=reconnect_max_s,
                events=ClusterEvents(
                    ping_failed=lambda: self._report_error("ping"),
                    lost=lambda detail: self._report(lambda events: events.redis_lost(detail)),
                    regained=lambda down_s: self._report(
                        lambda events: events.redis_regained(down_s)
                    ),
                ),
                scrub=self._scrubbed,
            )
            self._secrets = [self._password] if self._password else []
            self._secrets += [p for p in (urlsplit(url).password,) if p]
            self._shas = {source: hashlib.sha1(source.encode()).hexdigest() for source in _SCRIPTS}
            return
        from_url = parse_single_url(url, redacted_url(url))
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            **from_url,
        }
        if self._password is not None:
            options["password"] = self._password
        # Masked in every detail text (exception texts are not trusted to omit them).
        self._secrets = [p for p in (self._password, from_url.get("password")) if p]
        # One immediate retry on a connection error: a pooled connection the server closed
        # (idle timeout, restart) is replaced without declaring Redis down. Every command
        # is idempotent (reads, SET, the append script), so a retry never duplicates.
        once = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        pool = BlockingConnectionPool(
            max_connections=pool_size, timeout=None, retry=once, **options
        )
        self.client = aioredis.Redis.from_pool(pool)
        # The reconnect task's own single connection, no retries of its own: its backoff
        # decides when the next attempt is made.
        probe_pool = ConnectionPool(max_connections=1, retry=Retry(NoBackoff(), 0), **options)
        self._probe = aioredis.Redis.from_pool(probe_pool)
        self._scripts = {source: self.client.register_script(source) for source in _SCRIPTS}

    # -- state ---------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while Redis is known down and the background reconnect runs (cluster:
        while every master is)."""
        if self.cluster is not None:
            return self.cluster.available
        return self._down_since is None

    async def ping(self) -> None:
        """StateUnavailable (naming the redacted URL: for operators) if Redis does not
        answer; at once while it is known down. Cluster: discovers the cluster and pings
        every master; fails only when none answers (a down master is reconnected in the
        background and its users degrade meanwhile)."""
        if self.cluster is not None:
            await self.cluster.ping()
            return
        if not self.available:
            self._report_error("ping")
            raise StateUnavailable(f"Redis at {redacted_url(self.url)} is down (reconnecting)")
        try:
            await self.client.ping()
        except (RedisError, OSError) as error:
            self._failed("ping", error, LATE)
            raise StateUnavailable(
                f"Redis at {redacted_url(self.url)} does not answer ({type(error).__name__})"
            ) from None

    def report_to(self, events: RedisEvents | None) -> None:
        """Report failures, losses and recoveries to `events` from now on (the server
        attaches its metrics after the start-up PING, so that a Redis missing at start
        is one error line, not also a "lost" event)."""
        self._events = events

    async def close(self) -> None:
        """Stop the reconnect task and close every connection."""
        self._closed = True
        if self.cluster is not None:
            await self.cluster.close()
            return
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.aclose()
        await self._probe.aclose()

    # -- writes --------------------------------------------------------------------------

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
        """One write: the script `source` (one of `_SCRIPTS`) on `key` with `args`; -> its
        integer reply. StateUnavailable (at once while Redis is down) when it was not run
        or its reply did not arrive within `timeout_s`; redis_error("write") reported."""
        self._refuse_while_down("write")
        if self.cluster is not None:
            write = self._cluster_script(source, key, args)
        else:
            write = self._scripts[source](keys=[key], args=args)
        try:
            if timeout_s is None:
                reply = await write
            else:  # not asyncio.timeout: a lost cancellation must not hold the call
                reply = await finish_by(write, asyncio.get_running_loop().time() + timeout_s)
        except TimeoutError:  # our timeout; the caller's own shows as a cancel, passed on
            self._report_error("write")
            raise StateUnavailable(WRITE_LATE) from None
        except (RedisError, OSError) as error:
            raise self._failed("write", error, WRITE_LATE) from None
        return int(reply)

    async def _cluster_script(self, source: str, key: str, args: list[int | bytes]) -> int:
        """The script on the key's node: EVALSHA, or EVAL (which loads it there) when that
        node does not know the script yet. StateUnavailable when the node is down, late
        or refuses; redis_error("write") reported once."""
        assert self.cluster is not None
        (outcome,) = await self.cluster.run(
            [Unit(key, [("EVALSHA", self._shas[source], 1, key, *args)])]
        )
        if not isinstance(outcome, Failure) and isinstance(outcome[0], NoScriptError):
            (outcome,) = await self.cluster.run([Unit(key, [("EVAL", source, 1, key, *args)])])
        message = _cluster_failure(outcome, WRITE_LATE)
        if message is not None:
            self._report_error("write")
            raise StateUnavailable(message)
        assert not isinstance(outcome, Failure)
        return int(outcome[0])

    # -- reads ---------------------------------------------------------------------------

    async def read(self, user_ids: list[int], cache_version: str | None) -> list[UserState]:
        """Everything the model needs for each user, in one pipelined round trip (cluster:
        one per node, the nodes concurrently).

        `cache_version` None: do not read a cached query vector. Cluster: a user whose
        master is down or failing comes back with `unavailable` set while the others are
        read; StateUnavailable only when no user of the call could be read.
        """
        self._refuse_while_down("read")
        if self.cluster is not None:
            return await self._cluster_read(user_ids, cache_version)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for user in user_ids:
                    pipe.lrange(keys.query_key(user), 0, self.caps.queries - 1)
                    pipe.lrange(keys.click_key(user), 0, self.caps.clicks - 1)
                    pipe.hgetall(keys.profile_key(user))
                    if cache_version is not None:
                        pipe.get(keys.query_repr_key(user, cache_version))
                replies = await pipe.execute()
        except (RedisError, OSError) as error:
            raise self._failed("read", error, LATE) from None
        per_user = 4 if cache_version is not None else 3
        return [
            _user_state(replies[i * per_user : (i + 1) * per_user]) for i in range(len(user_ids))
        ]

    async def _cluster_read(
        self, user_ids: list[int], cache_version: str | None
    ) -> list[UserState]:
        """`read` on a cluster: one unit of commands per user (one slot: hash tag)."""
        assert self.cluster is not None
        units = []
        for user in user_ids:
            commands: list[tuple[Any, ...]] = [
                ("LRANGE", keys.query_key(user), 0, self.caps.queries - 1),
                ("LRANGE", keys.click_key(user), 0, self.caps.clicks - 1),
                ("HGETALL", keys.profile_key(user)),
            ]
            if cache_version is not None:
                commands.append(("GET", keys.query_repr_key(user, cache_version)))
            units.append(Unit(keys.query_key(user), commands))
        states = []
        failures = []
        for outcome in await self.cluster.run(units):
            message = _cluster_failure(outcome, LATE)
            if message is None:
                assert not isinstance(outcome, Failure)
                states.append(_user_state(outcome))
            else:
                failures.append(message)
                states.append(UserState(unavailable=message))
        if failures:
            self._report_error("read")
            if len(failures) == len(user_ids):
                raise StateUnavailable(failures[0])
        return states

    async def cache_query_reprs(
        self, cache_version: str, entries: list[tuple[int, bytes, np.ndarray]]
    ) -> None:
        """Store (user, history version, vector) triples under `cache_version` (the
        encoder's version); best effort (a cache), skipped while Redis is down."""
        if not entries or not self.available:
            return
        if self.cluster is not None:  # users on a down master are skipped (no network)
            units = [
                Unit(
                    keys.query_repr_key(user, cache_version),
                    [
                        (
                            "SET",
                            keys.query_repr_key(user, cache_version),
                            keys.pack_query_repr(version, vector),
                            "EX",
                            self.caps.ttl_s,
                        )
                    ],
                )
                for user, version, vector in entries
            ]
            outcomes = await self.cluster.run(units)
            if any(_cluster_failure(outcome, LATE) is not None for outcome in outcomes):
                self._report_error("cache")  # a lost entry costs one encoder call later
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for user, version, vector in entries:
                    pipe.set(
                        keys.query_repr_key(user, cache_version),
                        keys.pack_query_repr(version, vector),
                        ex=self.caps.ttl_s,
                    )
                await pipe.execute()
        except (RedisError, OSError) as error:
            self._failed("cache", error, LATE)  # a lost entry costs one encoder call later

    # -- faults --------------------------------------------------------------------------

    def _refuse_while_down(self, operation: str) -> None:
        """StateUnavailable at once, without a network attempt, while Redis is down."""
        if not self.available:
            self._report_error(operation)
            raise StateUnavailable(UNAVAILABLE)

    def _failed(self, operation: str, error: BaseException, late: str) -> StateUnavailable:
        """Report a failed command; mark Redis down on a connection failure; -> the
        client-facing error (a fixed sentence: no host, port or exception text)."""
        self._report_error(operation)
        if _is_connection_failure(error):
            self._mark_down(error)
            return StateUnavailable(UNAVAILABLE)
        if isinstance(error, (TimeoutError, RedisTimeoutError)):
            return StateUnavailable(late)
        return StateUnavailable(REFUSED)

    def _mark_down(self, error: BaseException) -> None:
        """The first connection failure of an outage: report it, start the one reconnect
        task. Later failures of the same outage change nothing."""
        if self._down_since is not None or self._closed:
            return
        self._down_since = time.monotonic()
        detail = self._scrubbed(
            f"Redis at {redacted_url(self.url)} is down: {type(error).__name__}: {error}"
        )
        self._report(lambda events: events.redis_lost(detail))
        self._reconnect_task = asyncio.get_running_loop().create_task(
            self._reconnect(), name="redis-reconnect"
        )

    async def _reconnect(self) -> None:
        """Ping with jittered exponential backoff until Redis answers, then mark it up."""
        # Idle pooled connections point at the lost server: drop them (reconnect lazily).
        with contextlib.suppress(RedisError, OSError):
            await self.client.connection_pool.disconnect(inuse_connections=False)
        backoff = ExponentialWithJitterBackoff(
            cap=self._reconnect_max_s, base=min(RECONNECT_BASE_S, self._reconnect_max_s)
        )
        retry = Retry(
            backoff, _PINGS_PER_ROUND, supported_errors=(RedisConnectionError, RedisTimeoutError)
        )
        while True:
            try:
                await retry.call_with_retry(self._probe.ping, self._ping_failed)
                break
            except Exception:  # a round ran out (or something unexpected): pause, go on
                await asyncio.sleep(self._reconnect_max_s)
        with contextlib.suppress(RedisError, OSError):  # no idle probe connection kept
            await self._probe.connection_pool.disconnect()
        assert self._down_since is not None
        down_s = time.monotonic() - self._down_since
        self._down_since = None
        self._reconnect_task = None
        self._report(lambda events: events.redis_regained(down_s))

    async def _ping_failed(self, error: Exception) -> None:
        """`Retry`'s failure callback (the probe client has closed its connection)."""
        self._report_error("ping")

    def _report_error(self, operation: str) -> None:
        self._report(lambda events: events.redis_error(operation))

    def _report(self, call: Callable[[RedisEvents], None]) -> None:
        """Run `call(events)`; a failing observer is logged, never breaks a command."""
        if self._events is None:
            return
        try:
            call(self._events)
        except Exception:
            log.exception("a RedisEvents observer failed")

    def _scrubbed(self, text: str) -> str:
        """`text` without any password this client knows (argument or URL)."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _user_state(replies: list[Any]) -> UserState:
    """One user's replies (LRANGE queries, LRANGE clicks, HGETALL profile[, GET cached
    vector]) -> their state."""
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


def _cluster_failure(outcome: Outcome, late: str) -> str | None:
    """The client-facing sentence for a unit that failed (None: it was answered): its
    node down -> UNAVAILABLE, late -> `late`, a command error (any reply an error) or
    too many redirections -> REFUSED."""
    if outcome is Failure.DOWN:
        return UNAVAILABLE
    if outcome is Failure.LATE:
        return late
    if outcome is Failure.REFUSED or any(isinstance(reply, Exception) for reply in outcome):
        return REFUSED
    return None


_SECRET_PARAMETERS = ("pass", "secret", "token", "auth")
"""Query parameters whose values are hidden (substrings of the lower-cased name)."""


def redacted_url(url: str) -> str:
    """The URL without its password in any form, for messages and logs.

    Read the way redis-py reads it (`urllib.parse.urlsplit`): the user info is everything
    before the LAST "@" of the network location (a password may hold "@"); `user:pw@`
    becomes `user:***@`, `:pw@` and `pw@` become `***@`; query parameters such as
    `?password=` are masked; the fragment is dropped. Last, every occurrence of a password
    found in the URL (raw or percent-encoded) is masked in the result, whatever the URL's
    shape. An unparseable URL shows its scheme only.
    """
    scheme, separator, _ = url.partition("://")
    if not separator:  # not a URL redis-py accepts; show it only when nothing can hide in it
        return "***" if "@" in url or "pass" in url.lower() else url
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return f"{scheme}://***"
    secrets: list[str] = []
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, password = userinfo.partition(":")
        secrets.append(unquote(password if has_password else user))
        netloc = f"{user}:***@{hostport}" if has_password and user else f"***@{hostport}"
    masked = []
    for name, value in query:
        if any(word in name.lower() for word in _SECRET_PARAMETERS):
            secrets.append(value)
            value = "***"
        masked.append((name, value))
    text = f"{parts.scheme}://{netloc}{parts.path}"
    if masked:
        text += "?" + urlencode(masked, safe="*")
    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe=""), quote(secret)}:
                text = text.replace(form, "***")
    return text
