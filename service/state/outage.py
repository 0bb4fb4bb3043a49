"""Redis faults, written once for both stores: what a failure is, where it is reported,
and how one server's outage is ridden out without a connection storm.

The single-node store (`service.state.single_node`) has one server; the cluster store
(`service.state.cluster`, through `service.state.cluster_router`) has one per master.
Each server that fails with a connection error gets one `Outage`: `redis_lost` reported
once, ONE background task pinging it on its own connection with jittered exponential
backoff until it answers, then `ended(seconds down)`. Meanwhile the store refuses that
server's work at once, without touching the network. A timeout is not a fault of that
kind (a slow or paused Redis is the caller's budget to handle) and neither is a command
error: `failure_of` tells the three apart.

Reports go through a `Reporter`: the store's `RedisEvents` (replaceable at run time, the
server attaches its metrics after the start-up PING), called so that a failing observer
never breaks a command, and every operator-facing detail with the passwords the store
knows masked (exception texts are not trusted to omit them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from enum import StrEnum
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

RECONNECT_BASE_S = 0.05
"""First reconnect pause (before jitter); it doubles per failed ping up to reconnect_max_s."""
PINGS_PER_ROUND = 30
"""Failed pings per backoff round; after a round, one pause of `reconnect_max_s`, and the
next round starts over from the base pause (which keeps `2 ** failures` in the backoff
formula finite during a long outage). The schedule of redis-py's `Retry` with 30 retries,
which the single-node store used before this module."""


class RedisEvents(Protocol):
    """What a state store reports (the server passes its metrics + log adapter).

    Called on the event loop; they must return quickly and not raise (an exception is
    logged and otherwise ignored).
    """

    def redis_error(self, operation: str) -> None:
        """One operation failed: "read", "write", "cache" or "ping". Counts calls that
        Redis did not answer, answered too late or refused, and reads and writes refused
        at once while Redis is known down (each is one `StateUnavailable`); also each
        failed reconnect ping."""

    def redis_lost(self, detail: str) -> None:
        """Redis was found down (once per outage; cluster: once per master's outage);
        `detail` is for the log (URL redacted)."""

    def redis_regained(self, down_s: float) -> None:
        """Redis answers again after `down_s` seconds down (once per outage; cluster: when
        the last down master answers, seconds since the first went down)."""


class Reporter:
    """A store's `RedisEvents` (None: nowhere) and the secrets it masks in details.

    One per store, shared with the cluster router and every `Outage`, so that
    `StateStore.report_to` redirects all of them at once.
    """

    def __init__(self, events: RedisEvents | None, secrets: Iterable[str | None]) -> None:
        """secrets: passwords this store knows (argument, URL); None and "" are skipped."""
        self.events = events
        self._secrets = [secret for secret in secrets if secret]

    def error(self, operation: str) -> None:
        """`redis_error(operation)`."""
        self._report(lambda events: events.redis_error(operation))

    def lost(self, detail: str) -> None:
        """`redis_lost(detail)`, its secrets masked."""
        shown = self.scrubbed(detail)
        self._report(lambda events: events.redis_lost(shown))

    def regained(self, down_s: float) -> None:
        """`redis_regained(down_s)`."""
        self._report(lambda events: events.redis_regained(down_s))

    def scrubbed(self, text: str) -> str:
        """`text` without any password this store knows (argument or URL)."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _report(self, call: Callable[[RedisEvents], None]) -> None:
        """Run `call(events)`; a failing observer is logged, never breaks a command."""
        if self.events is None:
            return
        try:
            call(self.events)
        except Exception:
            log.exception("a RedisEvents observer failed")


class Failure(StrEnum):
    """Why a command got no reply (the store turns it into a client-facing sentence)."""

    DOWN = "down"  # its server is known down, refused the connection, or its slot is uncovered
    LATE = "late"  # its server did not answer within the socket timeout
    REFUSED = "refused"  # a command error (or too many cluster redirections)


def is_connection_failure(error: BaseException) -> bool:
    """A refused / reset / closed connection (the server is down), not a timeout, a
    command error, or a client's own connection cap (MaxConnectionsError is a
    ConnectionError in redis-py; only the cluster client raises it). Builtin TimeoutError
    is an OSError: it is a timeout here."""
    if isinstance(error, (TimeoutError, RedisTimeoutError, MaxConnectionsError)):
        return False
    return isinstance(error, (RedisConnectionError, OSError))


def failure_of(error: BaseException) -> Failure:
    """The kind of failure a redis-py exception is (a cluster client that cannot reach or
    discover the cluster raises `RedisClusterException`: down)."""
    if is_connection_failure(error) or isinstance(error, RedisClusterException):
        return Failure.DOWN
    if isinstance(error, (TimeoutError, RedisTimeoutError)):
        return Failure.LATE
    return Failure.REFUSED


class Outage:
    """One server's outage: from its first connection failure until a ping answers.

    Created by the store at that first failure (later failures of the same outage change
    nothing: the store keeps the one `Outage` until `ended` is called). Creating it reports
    `redis_lost` and starts the one reconnect task; the task drops the store's idle
    connections to the lost server, pings on its own single connection (no retries of its
    own: the backoff decides when the next attempt is made), each failed ping reported as
    `redis_error("ping")`, and calls `ended(seconds down)` when the server answers (or,
    with `moved_away`, when it no longer matters: a cluster master whose slots moved).
    """

    def __init__(
        self,
        task_name: str,
        detail: str,
        *,
        probe_options: dict[str, Any],
        reconnect_max_s: float,
        reporter: Reporter,
        drop_idle: Callable[[], Awaitable[None]],
        ended: Callable[[float], None],
        moved_away: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """Begin the outage now (call on the event loop).

        task_name: the reconnect task's name (tests and operators look for it).
        detail: for `redis_lost` (secrets are masked by the reporter).
        probe_options: redis-py connection options of the server (host/port or URL
            options, timeouts, password, connection class).
        reconnect_max_s: the longest pause between reconnect pings.
        drop_idle: closes the store's idle connections to the server.
        ended: called once with the seconds since the outage began, when it is over.
        moved_away: asked every `reconnect_max_s` while the server does not answer; True
            ends the outage without an answer.
        """
        self.since = time.monotonic()
        self._probe_options = probe_options
        self._reconnect_max_s = reconnect_max_s
        self._reporter = reporter
        self._drop_idle = drop_idle
        self._ended = ended
        self._moved_away = moved_away
        reporter.lost(detail)
        self._task = asyncio.get_running_loop().create_task(self._reconnect(), name=task_name)

    async def cancel(self) -> None:
        """Stop the reconnect task (the store is closing); `ended` is not called."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _reconnect(self) -> None:
        """Ping with jittered exponential backoff until the server answers (or moved
        away), then end the outage."""
        # Idle pooled connections point at the lost server: drop them (reconnect lazily).
        with contextlib.suppress(RedisError, OSError):
            await self._drop_idle()
        probe = aioredis.Redis.from_pool(
            aioredis.ConnectionPool(
                max_connections=1, retry=Retry(NoBackoff(), 0), **self._probe_options
            )
        )
        backoff = ExponentialWithJitterBackoff(
            cap=self._reconnect_max_s, base=min(RECONNECT_BASE_S, self._reconnect_max_s)
        )
        failures = 0
        asked = time.monotonic()
        try:
            while True:
                try:
                    await probe.ping()
                    break
                except Exception:  # no answer, whatever the cause: try again later
                    self._reporter.error("ping")
                if self._moved_away is not None and (
                    time.monotonic() - asked >= self._reconnect_max_s
                ):
                    asked = time.monotonic()
                    if await self._moved_away():
                        break
                failures += 1
                if failures > PINGS_PER_ROUND:  # the round ran out: pause, start over
                    failures = 0
                    await asyncio.sleep(self._reconnect_max_s)
                else:
                    await asyncio.sleep(backoff.compute(failures))
        finally:
            with contextlib.suppress(RedisError, OSError):  # no idle probe connection kept
                await probe.aclose()
        self._ended(time.monotonic() - self.since)
