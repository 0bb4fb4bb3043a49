"""Redis Cluster routing under `RedisState`: one pipeline per node, faults per node.

`RedisState` keeps the key layout and the decoding; this module only decides where
commands go and what a failing node means. It uses redis-py's asyncio cluster client
(`redis.asyncio.cluster.RedisCluster`) for everything cluster-specific: discovery
(`CLUSTER SLOTS`), the slot of a key (`keyslot`, hash tags), the slot -> node cache
(`get_node_from_key`, patched by `NodesManager.move_slot` on MOVED) and each node's
connections and pipelined round trip (`ClusterNode.execute_pipeline`).

URLs: `redis+cluster://[user:password@]host:port[,host:port...][?option=value]` (TLS:
`rediss+cluster://`). The nodes are startup nodes: one answering node is enough to
discover the cluster. Options are redis-py's URL options, as for `redis://`.

A batch of users is grouped by the node that holds each user's slot (a user's keys share
one slot: `service.state.keys` hash-tags them) and each node gets ONE pipelined round
trip, the nodes concurrently. redis-py's `ClusterPipeline` does the same grouping, but a
node that cannot be reached fails its whole `execute()` (and its retry closes every
node's connections); here a node's failure stays that node's: its units come back as a
`Failure` and the other nodes' units are answered normally.

Faults per node (the single-node model of `service.state.redis_state`, one per master):
- A connection failure (refused, reset) of a node (after one immediate retry: a pooled
  connection the server closed is replaced without a fault) marks THAT node down, and
  one background task pings it with jittered exponential backoff on its own connection.
  Meanwhile units routed to it fail at once, without a network attempt; units of other
  nodes are not affected. Every `reconnect_max_s` the task also refreshes the topology:
  when the down node no longer owns slots (a replica took over, or its slots were moved),
  the outage ends and its users are routed to their new nodes.
- Events: `lost` once per node outage (the detail names the node, for operators);
  `regained` when the LAST down node answers again (so `queryrec_redis_up` reads "0
  while any master is down").
- A timeout is the caller's budget, as in single-node mode (it cancels the call).
- Redirections: MOVED patches redis-py's slot cache (`move_slot`) and the command is sent
  to the new owner; ASK sends `ASKING` and the command in ONE pipeline on the importing
  node's same connection. (redis-py 8.1's own ASK handling in the asyncio client sends
  ASKING as a separately pooled command, which with more than one idle connection per
  node lands on another connection than the command and ping-pongs until "TTL
  exhausted"; the cluster test would fail with it.)
- Per-node connections: redis-py's cluster nodes raise at their connection cap instead
  of waiting, so each node has a semaphore of `pool_size` calls; more concurrent calls
  wait for one, as with the single-node `BlockingConnectionPool`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import PRIMARY
from redis.exceptions import (
    AskError,
    MaxConnectionsError,
    MovedError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.errors import SettingsError, StateUnavailable

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""Cluster URL scheme -> the single-node scheme its options are read with."""

REDIRECTS = 5
"""MOVED / ASK redirections followed per command before it counts as refused (a slot
migrates at most once per redirection; more means the cluster is reconfiguring)."""

RECONNECT_BASE_S = 0.05
_PINGS_PER_ROUND = 30


class Failure(StrEnum):
    """Why a unit got no replies (`RedisState` turns it into its client-facing sentence)."""

    DOWN = "down"  # its node is known down, refused the connection, or its slot is uncovered
    LATE = "late"  # its node did not answer within the socket timeout
    REFUSED = "refused"  # a command error (or too many redirections)


@dataclass
class Unit:
    """Commands that go to one node together: all their keys share the slot of `key`
    (one user's keys). `commands`: raw commands, e.g. ("LRANGE", key, 0, 9)."""

    key: str
    commands: list[tuple[Any, ...]]


Outcome = list[Any] | Failure
"""One unit's replies, in command order (a reply may be a `ResponseError` instance, e.g.
`NoScriptError`: the caller decides), or why it got none."""


@dataclass
class _Outage:
    since: float  # time.monotonic()
    task: asyncio.Task[None] | None = None


@dataclass
class ClusterEvents:
    """What the router reports (`RedisState` forwards them to its `RedisEvents`)."""

    ping_failed: Callable[[], None]
    lost: Callable[[str], None]  # detail for operators (node named, secrets masked)
    regained: Callable[[float], None]  # seconds since the first node of the outage


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://`, `rediss+cluster://`)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def url_error(shown: str, error: ValueError) -> SettingsError:
    """A URL redis-py refused -> one line naming the setting and the URL as `shown`
    (password redacted). Quoted values in redis-py's reason are masked: a mistyped URL can
    put a password where a port was expected ("could not be cast ... as 'secret'")."""
    reason = re.sub(r"as '[^']*'", "as '***'", str(error).splitlines()[0] if str(error) else "")
    if "port" in reason.lower():  # the port's text may be a password typed without "@"
        shown = f"{shown.partition('://')[0]}://***"
    return SettingsError(f"invalid Redis URL (QUERYREC_REDIS_URL) {shown}: {reason or 'malformed'}")


def parse_single_url(url: str, shown: str) -> dict[str, Any]:
    """redis-py's connection options of a single-node URL (redis://, rediss://, unix://);
    SettingsError (`url_error`) when redis-py refuses it (scheme, port, IPv6, options)."""
    try:
        return dict(parse_url(url))
    except ValueError as error:
        raise url_error(shown, error) from None


def parse_cluster_url(url: str, shown: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """-> (startup nodes as (host, port), connection options for redis-py).

    The options are what redis-py reads from the same URL with the single-node scheme
    (user, password, query parameters such as `socket_timeout`; TLS for `rediss+`).
    SettingsError naming `shown` (the URL as messages may show it: password redacted) on
    a malformed URL or a database other than 0 (a cluster has only database 0).
    """
    scheme = url.partition("://")[0].lower()
    if scheme not in CLUSTER_SCHEMES:
        raise SettingsError(f"{shown}: not a Redis Cluster URL (redis+cluster://host:port,...)")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise SettingsError(f"{shown}: not a valid URL") from None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        host = host.strip("[]")  # IPv6 literal
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(
                f"{shown}: each cluster node must be host:port (comma-separated), "
                f"not {item.strip()!r}"
            )
        nodes.append((host, int(port)))
    first = hosts.split(",")[0].strip()
    single = f"{CLUSTER_SCHEMES[scheme]}://{userinfo}{at}{first}{parts.path}"
    if parts.query:
        single += f"?{parts.query}"
    options = parse_single_url(single, shown)
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    if options.pop("db", 0) not in (0, None):
        raise SettingsError(f"{shown}: a Redis Cluster has only database 0")
    return nodes, options


def _is_connection_failure(error: BaseException) -> bool:
    """A refused / reset / closed connection, not a timeout, a command error, or the
    client's own connection cap (MaxConnectionsError is a ConnectionError in redis-py)."""
    if isinstance(error, (TimeoutError, RedisTimeoutError, MaxConnectionsError)):
        return False
    return isinstance(error, (RedisConnectionError, OSError))


def _failure_of(error: BaseException) -> Failure:
    if _is_connection_failure(error) or isinstance(error, RedisClusterException):
        return Failure.DOWN
    if isinstance(error, (TimeoutError, RedisTimeoutError)):
        return Failure.LATE
    return Failure.REFUSED


@dataclass
class _NodeBatch:
    node: ClusterNode
    units: list[int] = field(default_factory=list)  # indices into the call's units


class ClusterRouter:
    """Runs units of commands on a Redis Cluster, one pipeline per node (asyncio)."""

    def __init__(
        self,
        url: str,
        *,
        shown_url: str,
        password: str | None,
        timeout_s: float,
        pool_size: int,
        reconnect_max_s: float,
        events: ClusterEvents,
        scrub: Callable[[str], str],
    ) -> None:
        """Configure the cluster client; connects lazily (`ping` discovers the cluster).

        url: a cluster URL (`parse_cluster_url`); password wins over one in it.
        shown_url: the URL with its password redacted (for operators' messages).
        timeout_s: socket connect and read timeout of each node's round trip.
        pool_size: concurrent round trips per node; more wait for a free one.
        reconnect_max_s: the longest pause between reconnect pings of a down node.
        scrub: masks secrets in operator-facing details.
        """
        nodes, options = parse_cluster_url(url, shown_url)
        self._shown_url = shown_url
        self._options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            **options,
        }
        if password is not None:
            self._options["password"] = password
        self._pool_size = pool_size
        self._reconnect_max_s = reconnect_max_s
        self._events = events
        self._scrub = scrub
        # No client-level retries: `execute_pipeline` is called per node here, and the
        # retry of redis-py's own pipeline would close every node's connections.
        # reinitialize_steps=0: a MOVED patches the one slot instead of re-reading the
        # whole topology every few MOVEDs (which also recycles every connection).
        self.client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            require_full_coverage=False,  # a dead master's users fail, the others are served
            reinitialize_steps=0,
            retry=Retry(NoBackoff(), 0),
            max_connections=pool_size + 4,  # + topology refreshes and pings
            **self._options,
        )
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._down: dict[str, _Outage] = {}
        self._outage_since: float | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._refreshed_at = float("-inf")
        self._closed = False

    # -- state ---------------------------------------------------------------------------

    @property
    def down_nodes(self) -> list[str]:
        """Names ("host:port") of the masters known down now."""
        return list(self._down)

    @property
    def available(self) -> bool:
        """False only while every master the topology names is known down."""
        if not self._down:
            return True
        primaries = {node.name for node in self.client.get_primaries()}
        return not primaries or bool(primaries - set(self._down))

    async def ping(self) -> list[str]:
        """Discover the cluster (once) and PING every master not known down; -> the
        names of masters that do not answer. StateUnavailable when the cluster cannot be
        discovered or no master answers (the message names the redacted URL: for
        operators)."""
        try:
            await self._discover()
        except (RedisError, RedisClusterException, OSError) as error:
            raise StateUnavailable(
                self._scrub(
                    f"Redis cluster at {self._shown_url} cannot be discovered "
                    f"({type(error).__name__})"
                )
            ) from None
        primaries = self.client.get_primaries()
        silent = []
        for node in primaries:
            if node.name in self._down:
                silent.append(node.name)
                continue
            try:
                async with self._slot(node):
                    await node.execute_command("PING")
            except (RedisError, OSError) as error:
                if _is_connection_failure(error):
                    self._mark_down(node, error)
                silent.append(node.name)
        if len(silent) == len(primaries):
            raise StateUnavailable(
                f"Redis cluster at {self._shown_url}: no master answers (reconnecting)"
            )
        return silent

    async def close(self) -> None:
        """Stop the reconnect tasks and close every connection."""
        self._closed = True
        tasks = [outage.task for outage in self._down.values() if outage.task is not None]
        if self._refresh_task is not None:
            tasks.append(self._refresh_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.aclose()

    # -- commands ------------------------------------------------------------------------

    async def run(self, units: Sequence[Unit]) -> list[Outcome]:
        """Every unit's replies: units grouped by their slot's node, one pipelined round
        trip per node, the nodes concurrently; redirections followed. A unit whose node is
        down, failing or late gets a `Failure`; the other units are answered normally.
        Every unit fails (DOWN) when the cluster cannot be discovered at all."""
        try:
            await self._discover()
        except (RedisError, RedisClusterException, OSError):
            return [Failure.DOWN] * len(units)
        outcomes: list[Outcome | None] = [None] * len(units)
        batches: dict[str, _NodeBatch] = {}
        for index, unit in enumerate(units):
            try:
                node = self.client.get_node_from_key(unit.key)
            except RedisClusterException:  # its slot is not covered (a gap in the topology)
                node = None
            if node is None:
                outcomes[index] = Failure.DOWN
                self._refresh_soon()  # the slot may have been assigned since
            elif node.name in self._down:
                outcomes[index] = Failure.DOWN  # at once, no network attempt
            else:
                batches.setdefault(node.name, _NodeBatch(node)).units.append(index)
        results = await asyncio.gather(
            *(
                self._run_on_node(batch.node, [units[i] for i in batch.units])
                for batch in batches.values()
            )
        )
        for batch, node_outcomes in zip(batches.values(), results, strict=True):
            for index, outcome in zip(batch.units, node_outcomes, strict=True):
                outcomes[index] = outcome
        return [outcome if outcome is not None else Failure.REFUSED for outcome in outcomes]

    async def _run_on_node(self, node: ClusterNode, units: list[Unit]) -> list[Outcome]:
        """One pipelined round trip for `units` on `node` (one retry after a connection
        failure, then the node is marked down); then the redirected commands."""
        commands = [PipelineCommand(i, *args) for i, args in enumerate(_flat(units))]
        for attempt in (1, 2):
            for command in commands:
                command.result = None
            try:
                async with self._slot(node):
                    await node.execute_pipeline(commands)
                broken = next(
                    (
                        c.result
                        for c in commands
                        if isinstance(c.result, BaseException)
                        and _failure_of(c.result) is not Failure.REFUSED
                    ),
                    None,
                )
                if broken is not None:
                    raise broken
                break
            except (RedisError, OSError) as error:
                if attempt == 1 and _is_connection_failure(error):
                    continue  # a pooled connection the server closed: one more try
                if _is_connection_failure(error):
                    self._mark_down(node, error)
                return [_failure_of(error)] * len(units)
        await self._follow_redirections(commands)
        outcomes: list[Outcome] = []
        position = 0
        for unit in units:
            replies = [c.result for c in commands[position : position + len(unit.commands)]]
            position += len(unit.commands)
            redirected = any(isinstance(r, AskError) for r in replies)  # MovedError too
            outcomes.append(Failure.REFUSED if redirected else replies)
        return outcomes

    async def _follow_redirections(self, commands: list[PipelineCommand]) -> None:
        """Re-send each MOVED / ASK command to where the cluster pointed, up to REDIRECTS
        times: after MOVED redis-py's slot cache is patched and the command goes to the
        new owner; after ASK, `ASKING` + the command in one pipeline on the importing
        node (same connection, as the protocol requires). Results are set in place."""
        for _ in range(REDIRECTS):
            redirected = [c for c in commands if isinstance(c.result, AskError)]
            if not redirected:
                return
            groups: dict[tuple[str, bool], tuple[ClusterNode, list[PipelineCommand]]] = {}
            for command in redirected:
                error = command.result
                assert isinstance(error, AskError)
                asking = not isinstance(error, MovedError)
                if not asking:
                    await self.client.nodes_manager.move_slot(error)
                target = self._node_at(error.host, int(error.port))
                groups.setdefault((target.name, asking), (target, []))[1].append(command)
            await asyncio.gather(
                *(
                    self._resend(node, group, asking)
                    for (_, asking), (node, group) in groups.items()
                )
            )

    async def _resend(
        self, node: ClusterNode, commands: list[PipelineCommand], asking: bool
    ) -> None:
        """`commands` on `node` in one round trip (each after ASKING when `asking`)."""
        sent: list[PipelineCommand] = []
        for command in commands:
            if asking:
                sent.append(PipelineCommand(-1, "ASKING"))
            sent.append(PipelineCommand(command.position, *command.args, **command.kwargs))
        try:
            async with self._slot(node):
                await node.execute_pipeline(sent)
        except (RedisError, OSError) as error:
            if _is_connection_failure(error):
                self._mark_down(node, error)
            for command in commands:
                command.result = error
            return
        results = [c.result for c in sent if c.position >= 0]
        for command, result in zip(commands, results, strict=True):
            command.result = result

    def _node_at(self, host: str, port: int) -> ClusterNode:
        """The cluster node at host:port; a node the topology did not name yet (a new
        master receiving slots) is added, as redis-py's `move_slot` does."""
        manager = self.client.nodes_manager
        node = manager.get_node(host=host, port=port)
        if node is None:
            node = ClusterNode(host, port, PRIMARY, **manager.connection_kwargs)
            manager.set_nodes(manager.nodes_cache, {node.name: node})
        return node

    # -- faults --------------------------------------------------------------------------

    async def _discover(self) -> None:
        """redis-py's discovery (`CLUSTER SLOTS` from a startup node), once; a no-op
        afterwards (MOVED patches the slot cache; outages refresh it)."""
        await self.client.initialize()

    def _refresh_soon(self) -> None:
        """Refresh the topology in the background: at most one refresh at a time and one
        per `reconnect_max_s` (a slot missing from the cache has no MOVED to fix it)."""
        running = self._refresh_task is not None and not self._refresh_task.done()
        if self._closed or running or time.monotonic() - self._refreshed_at < self._reconnect_max_s:
            return
        self._refreshed_at = time.monotonic()

        async def refresh() -> None:
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                await self.client.nodes_manager.initialize()

        self._refresh_task = asyncio.get_running_loop().create_task(
            refresh(), name="redis-cluster-refresh"
        )

    def _slot(self, node: ClusterNode) -> asyncio.Semaphore:
        """The node's semaphore of `pool_size` concurrent round trips."""
        if node.name not in self._slots:
            self._slots[node.name] = asyncio.Semaphore(self._pool_size)
        return self._slots[node.name]

    def _mark_down(self, node: ClusterNode, error: BaseException) -> None:
        """The first connection failure of a node's outage: report it, drop its idle
        connections (they point at the lost process), start its one reconnect task."""
        if node.name in self._down or self._closed:
            return
        now = time.monotonic()
        outage = _Outage(since=now)
        self._down[node.name] = outage
        if self._outage_since is None:
            self._outage_since = now
        self._events.lost(
            self._scrub(f"Redis cluster node {node.name} is down: {type(error).__name__}: {error}")
        )
        outage.task = asyncio.get_running_loop().create_task(
            self._reconnect(node), name=f"redis-reconnect-{node.name}"
        )

    async def _reconnect(self, node: ClusterNode) -> None:
        """Ping the down node with jittered exponential backoff until it answers, or until
        a topology refresh shows it owns no slot any more; then mark it up."""
        with contextlib.suppress(RedisError, OSError):
            await node.disconnect_free_connections()
        options = dict(self._options)
        if options.pop("ssl", False):
            options["connection_class"] = SSLConnection
        probe = aioredis.Redis.from_pool(
            aioredis.ConnectionPool(
                max_connections=1,
                retry=Retry(NoBackoff(), 0),
                host=node.host,
                port=node.port,
                **options,
            )
        )
        backoff = ExponentialWithJitterBackoff(
            cap=self._reconnect_max_s, base=min(RECONNECT_BASE_S, self._reconnect_max_s)
        )
        failures = 0
        refreshed = time.monotonic()
        try:
            while True:
                try:
                    await probe.ping()
                    break
                except (RedisError, OSError):
                    self._events.ping_failed()
                failures += 1
                if time.monotonic() - refreshed >= self._reconnect_max_s:
                    refreshed = time.monotonic()
                    if await self._owns_no_slot(node.name):
                        break
                await asyncio.sleep(backoff.compute(failures % _PINGS_PER_ROUND))
        finally:
            await probe.aclose()
        self._down.pop(node.name, None)
        if not self._down and self._outage_since is not None:
            down_s = time.monotonic() - self._outage_since
            self._outage_since = None
            self._events.regained(down_s)

    async def _owns_no_slot(self, name: str) -> bool:
        """Refresh redis-py's topology (`CLUSTER SLOTS` from an answering node); -> True
        when node `name` is no longer the owner of any slot."""
        try:
            await self.client.nodes_manager.initialize()
        except (RedisError, RedisClusterException, OSError):
            return False
        owners = {nodes[0].name for nodes in self.client.nodes_manager.slots_cache.values()}
        return name not in owners


def _flat(units: list[Unit]) -> list[tuple[Any, ...]]:
    return [command for unit in units for command in unit.commands]
