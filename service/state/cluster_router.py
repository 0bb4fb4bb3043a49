"""Redis Cluster routing under `ClusterState`: one pipeline per node, faults per node.

`ClusterState` (service.state.cluster) keeps the key layout and the decoding; this module
only decides where commands go and what a failing node means. It uses redis-py's asyncio cluster client
(`redis.asyncio.cluster.RedisCluster`) for everything cluster-specific: discovery
(`CLUSTER SLOTS`), the slot of a key (`keyslot`, hash tags), the slot -> node cache
(`get_node_from_key`, patched by `NodesManager.move_slot` on MOVED) and each node's
connections and pipelined round trip (`ClusterNode.execute_pipeline`).

URLs: `redis+cluster://[user:password@]host:port[,host:port...][?option=value]` (TLS:
`rediss+cluster://`), read by `service.state.urls.parse_cluster_url`.

A batch of users is grouped by the node that holds each user's slot (a user's keys share
one slot: `service.state.keys` hash-tags them) and each node gets ONE pipelined round
trip, the nodes concurrently. redis-py's `ClusterPipeline` does the same grouping, but a
node that cannot be reached fails its whole `execute()` (and its retry closes every
node's connections); here a node's failure stays that node's: its units come back as a
`Failure` and the other nodes' units are answered normally.

Faults per node (the single-node model, one per master; the outage itself is
`service.state.outage.Outage`, the same as the single-node store's):
- A connection failure (refused, reset) of a node (after one immediate retry: a pooled
  connection the server closed is replaced without a fault) marks THAT node down: one
  `Outage` whose background task pings it with jittered exponential backoff on its own
  connection. Meanwhile units routed to it fail at once, without a network attempt;
  units of other nodes are not affected. Every `reconnect_max_s` the task also refreshes
  the topology:
  when the down node no longer owns slots (a replica took over, or its slots were moved),
  the outage ends and its users are routed to their new nodes.
- Events: `redis_lost` once per node outage (the detail names the node, for operators);
  `redis_regained` when the LAST down node answers again (so `queryrec_redis_up` reads "0
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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError

from service.errors import StateUnavailable
from service.state.outage import Failure, Outage, Reporter, failure_of, is_connection_failure
from service.state.urls import parse_cluster_url

REDIRECTS = 5
"""MOVED / ASK redirections followed per command before it counts as refused (a slot
migrates at most once per redirection; more means the cluster is reconfiguring)."""


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
        reporter: Reporter,
    ) -> None:
        """Configure the cluster client; connects lazily (`ping` discovers the cluster).

        url: a cluster URL (`parse_cluster_url`); password wins over one in it.
        shown_url: the URL with its password redacted (for operators' messages).
        timeout_s: socket connect and read timeout of each node's round trip.
        pool_size: concurrent round trips per node; more wait for a free one.
        reconnect_max_s: the longest pause between reconnect pings of a down node.
        reporter: the store's, for node losses, failed pings and the recovery (it also
            masks secrets in operator-facing details).
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
        self._reporter = reporter
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
        self._down: dict[str, Outage] = {}
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
                self._reporter.scrubbed(
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
                if is_connection_failure(error):
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
        outages = list(self._down.values())
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        for outage in outages:
            await outage.cancel()
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
                        and failure_of(c.result) is not Failure.REFUSED
                    ),
                    None,
                )
                if broken is not None:
                    raise broken
                break
            except (RedisError, OSError) as error:
                if attempt == 1 and is_connection_failure(error):
                    continue  # a pooled connection the server closed: one more try
                if is_connection_failure(error):
                    self._mark_down(node, error)
                return [failure_of(error)] * len(units)
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
            if is_connection_failure(error):
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
        """The first connection failure of a node's outage begins it (`Outage`: reported,
        its idle connections dropped, one reconnect task that also ends the outage when a
        topology refresh shows the node owns no slot any more); later failures of the
        same outage change nothing."""
        if node.name in self._down or self._closed:
            return
        options = dict(self._options)
        if options.pop("ssl", False):
            options["connection_class"] = SSLConnection
        outage = Outage(
            f"redis-reconnect-{node.name}",
            f"Redis cluster node {node.name} is down: {type(error).__name__}: {error}",
            probe_options={"host": node.host, "port": node.port, **options},
            reconnect_max_s=self._reconnect_max_s,
            reporter=self._reporter,
            drop_idle=node.disconnect_free_connections,
            ended=lambda _: self._node_up(node.name),
            moved_away=lambda: self._owns_no_slot(node.name),
        )
        self._down[node.name] = outage
        if self._outage_since is None:
            self._outage_since = outage.since

    def _node_up(self, name: str) -> None:
        """Node `name` answers again (or owns no slot any more); `redis_regained` when it
        was the last down node, with the seconds since the first went down."""
        self._down.pop(name, None)
        if not self._down and self._outage_since is not None:
            down_s = time.monotonic() - self._outage_since
            self._outage_since = None
            self._reporter.regained(down_s)

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
