"""The state store on a Redis Cluster (`redis+cluster://host:port[,host:port...]`, TLS:
`rediss+cluster://`).

`ClusterState` is the `StateStore` (service.state.store: the writes, the read's commands,
the client-facing sentences) over `service.state.cluster_router.ClusterRouter`, which
groups commands per node and keeps the fault model per master. A read of many users is
one pipelined round trip per node (the nodes concurrently). A dead master fails its own
users at once (`UserState.unavailable`, or `StateUnavailable` when every user of the call
is on failed nodes) while the other masters' users are read and written normally;
`available` turns False only when every master is down. Writes run the same scripts by
EVALSHA, routed by their one key (EVAL on that node when it does not have the script yet,
which also loads it there). MOVED and ASK during a slot migration are followed.

A late read is cancelled by the caller (`cancel_late_reads`): each node's round trip has
its own socket timeout, and a node's failure stays that node's.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

import numpy as np
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from service.errors import StateUnavailable
from service.state import keys
from service.state.cluster_router import ClusterRouter, Outcome, Unit
from service.state.outage import Failure, RedisEvents, Reporter
from service.state.store import (
    LATE,
    REFUSED,
    WRITE_LATE,
    WRITE_SCRIPTS,
    HistoryCaps,
    StateStore,
    UserState,
    sentence,
    user_state_of,
)
from service.state.urls import redacted_url


class ClusterState(StateStore):
    """The state store on a Redis Cluster (asyncio). See the module docstring."""

    cancel_late_reads = True

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
        """Configure the cluster client; connects lazily (`ping` discovers the cluster).

        The arguments are the single-node store's (`RedisState`), per node: password wins
        over one in the URL; timeout_s is each node's socket timeout; pool_size the
        concurrent round trips per node; reconnect_max_s the longest pause between
        reconnect pings of a down master. SettingsError (password redacted) on a
        malformed cluster URL.
        """
        password = password or None
        # Masked in every detail text (exception texts are not trusted to omit them).
        super().__init__(url, caps, Reporter(events, [password, urlsplit(url).password]))
        self.cluster = ClusterRouter(
            url,
            shown_url=redacted_url(url),
            password=password,
            timeout_s=timeout_s,
            pool_size=pool_size,
            reconnect_max_s=reconnect_max_s,
            reporter=self.reporter,
        )
        """The router (per-node pipelines and outages; tests read its `down_nodes`)."""
        self._shas = {source: hashlib.sha1(source.encode()).hexdigest() for source in WRITE_SCRIPTS}

    @property
    def client(self) -> RedisCluster:
        """redis-py's cluster client under the router."""
        return self.cluster.client

    @property
    def available(self) -> bool:
        """False only while every master is known down."""
        return self.cluster.available

    async def ping(self) -> None:
        """Discover the cluster and ping every master; StateUnavailable only when none
        answers (a down master is reconnected in the background and its users degrade
        meanwhile)."""
        await self.cluster.ping()

    async def close(self) -> None:
        """Stop the reconnect tasks and close every connection."""
        await self.cluster.close()

    async def read(self, user_ids: list[int], cache_version: str | None) -> list[UserState]:
        """Everything the model needs for each user: one unit of commands per user (one
        slot: hash tag), one pipelined round trip per node, the nodes concurrently.

        `cache_version` None: do not read a cached query vector. A user whose master is
        down or failing comes back with `unavailable` set while the others are read;
        StateUnavailable only when no user of the call could be read.
        """
        self._refuse_while_down("read")
        units = [
            Unit(keys.query_key(user), self._read_commands(user, cache_version))
            for user in user_ids
        ]
        states = []
        failures = []
        for outcome in await self.cluster.run(units):
            message = _failure_sentence(outcome, LATE)
            if message is None:
                assert not isinstance(outcome, Failure)
                states.append(user_state_of(outcome))
            else:
                failures.append(message)
                states.append(UserState(unavailable=message))
        if failures:
            self.reporter.error("read")
            if len(failures) == len(user_ids):
                raise StateUnavailable(failures[0])
        return states

    async def cache_query_reprs(
        self, cache_version: str, entries: list[tuple[int, bytes, np.ndarray]]
    ) -> None:
        """Store (user, history version, vector) triples under `cache_version`; best
        effort, skipped while every master is down; users on a down master are skipped
        without a network attempt."""
        if not entries or not self.available:
            return
        units = [
            Unit(
                keys.query_repr_key(user, cache_version),
                [self._cache_command(user, cache_version, version, vector)],
            )
            for user, version, vector in entries
        ]
        outcomes = await self.cluster.run(units)
        if any(_failure_sentence(outcome, LATE) is not None for outcome in outcomes):
            self.reporter.error("cache")  # a lost entry costs one encoder call later

    async def _script(self, source: str, key: str, args: list[int | bytes]) -> int:
        """The script on the key's node: EVALSHA, or EVAL (which loads it there) when that
        node does not know the script yet. StateUnavailable when the node is down, late
        or refuses; redis_error("write") reported once."""
        (outcome,) = await self.cluster.run(
            [Unit(key, [("EVALSHA", self._shas[source], 1, key, *args)])]
        )
        if not isinstance(outcome, Failure) and isinstance(outcome[0], NoScriptError):
            (outcome,) = await self.cluster.run([Unit(key, [("EVAL", source, 1, key, *args)])])
        message = _failure_sentence(outcome, WRITE_LATE)
        if message is not None:
            self.reporter.error("write")
            raise StateUnavailable(message)
        assert not isinstance(outcome, Failure)
        return int(outcome[0])

    def _connection_failed(self, error: BaseException) -> None:
        """Nothing to do: the router marks its nodes down itself (no redis-py error of a
        node reaches this store: `ClusterRouter.run` turns them into `Failure`s)."""


def _failure_sentence(outcome: Outcome, late: str) -> str | None:
    """The client-facing sentence for a unit that failed (None: it was answered): its
    node down -> UNAVAILABLE, late -> `late`, a command error (any reply an error) or
    too many redirections -> REFUSED."""
    if isinstance(outcome, Failure):
        return sentence(outcome, late)
    if any(isinstance(reply, Exception) for reply in outcome):
        return REFUSED
    return None
