"""What cluster routing costs: one batched state read, single node vs a local Redis Cluster.

    python benchmarks/state_read_cluster.py [--users 1000] [--batch 64] [--repeats 400]
        [--out bench-work/state_read_cluster.json]

The same data goes into one embedded redis-server and into a 3-master `EmbeddedCluster`
(same binary, same machine): `--users` users, each with L=20 queries of 4 words, H=50
clicks, a 3-field profile and a cached 64-float query vector, written through
`RedisState`'s own append path. Then, on each, `RedisState.read` of `--batch` random users
(with the cached vector, as Score reads) `--repeats` times, and the one-user read of the
Score path as many times; wall ms (median, p90) and client CPU ms (process time) per
read. The two targets alternate in rounds of 50 reads so that a change in the machine's
load hits both alike. Numbers: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.state.by_url import open_state
from service.state.embedded_cluster import EmbeddedCluster
from service.state.embedded_redis import EmbeddedRedis
from service.state.store import HistoryCaps, StateStore

CAPS = HistoryCaps(queries=20, clicks=50, ttl_s=3600)
CACHE = "enc-bench"
ROUND = 50  # reads per target before switching to the other


async def fill(state: StateStore, users: list[int], seed: int) -> None:
    """Every user's histories, profile and cached vector, through the service's writes."""
    rng = np.random.default_rng(seed)

    async def one(user: int) -> None:
        for q in range(CAPS.queries):
            await state.append_query(user, 1_000 + q, rng.integers(1, 50_000, 4).tolist())
        await state.append_clicks(user, 2_000, rng.integers(1, 1_000_000, CAPS.clicks).tolist())
        vector = rng.standard_normal(64).astype(np.float32)
        await state.cache_query_reprs(CACHE, [(user, b"v" * 16, vector)])

    for lo in range(0, len(users), 50):
        await asyncio.gather(*(one(user) for user in users[lo : lo + 50]))
    profiles: Any = state.client
    async with profiles.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.hset(f"qr:{{{user}}}:p", mapping={"age": 3, "gender": 1, "city": 7})
        await pipe.execute()


async def timed_reads(state: StateStore, batches: list[list[int]]) -> tuple[list[float], float]:
    """(wall ms of each read, client CPU ms per read)."""
    walls = []
    cpu = time.process_time()
    for batch in batches:
        start = time.perf_counter()
        states = await state.read(batch, CACHE)
        walls.append((time.perf_counter() - start) * 1e3)
        assert len(states) == len(batch) and all(s.unavailable is None for s in states)
    return walls, (time.process_time() - cpu) / len(batches) * 1e3


def summary(walls: list[float], cpu_ms: list[float]) -> dict[str, float]:
    ordered = sorted(walls)
    return {
        "median_ms": statistics.median(walls),
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))],
        "cpu_ms_per_read": statistics.median(cpu_ms),
        "reads": len(walls),
    }


async def measure(
    urls: dict[str, str], users: list[int], batch: int, repeats: int
) -> dict[str, Any]:
    states = {name: open_state(url, CAPS, pool_size=64) for name, url in urls.items()}
    try:
        for state in states.values():
            await state.ping()
            await fill(state, users, seed=0)  # the same data in both
        rng = np.random.default_rng(1)
        plan = {
            "batch": [rng.choice(users, batch, replace=False).tolist() for _ in range(repeats)],
            "one_user": [[int(u)] for u in rng.choice(users, repeats)],
        }
        walls: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        for kind, batches in plan.items():
            for state in states.values():  # warm-up: connections, scripts
                await timed_reads(state, batches[:20])
            for lo in range(0, repeats, ROUND):
                for name, state in states.items():
                    wall, cpu = await timed_reads(state, batches[lo : lo + ROUND])
                    walls.setdefault((kind, name), []).extend(wall)
                    cpus.setdefault((kind, name), []).append(cpu)
        result: dict[str, Any] = {}
        for (kind, name), wall in walls.items():
            result.setdefault(kind, {})[name] = summary(wall, cpus[(kind, name)])
        return result
    finally:
        for state in states.values():
            await state.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("bench-work/state_read_cluster.json"))
    args = parser.parse_args()
    users = list(range(1, args.users + 1))
    with EmbeddedRedis() as single, EmbeddedCluster(masters=3) as cluster:
        urls = {"single_node": single.url, "cluster_3_masters": cluster.url}
        numbers = asyncio.run(measure(urls, users, args.batch, args.repeats))
    result = {
        "users_loaded": args.users,
        "batch_users": args.batch,
        "repeats": args.repeats,
        "per_user": "20 queries x 4 words, 50 clicks, 3 profile fields, 64-float cached vector",
        "commands_per_user": 4,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        **numbers,
    }
    for kind in ("batch", "one_user"):
        single, clustered = result[kind]["single_node"], result[kind]["cluster_3_masters"]
        result[kind]["cluster_over_single_median"] = clustered["median_ms"] / single["median_ms"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for kind, label in (("batch", f"read of {args.batch} users"), ("one_user", "read of 1 user")):
        row = result[kind]
        print(
            f"{label}: single node {row['single_node']['median_ms']:.3f} ms median "
            f"(p90 {row['single_node']['p90_ms']:.3f}, CPU {row['single_node']['cpu_ms_per_read']:.3f}); "
            f"3-master cluster {row['cluster_3_masters']['median_ms']:.3f} ms "
            f"(p90 {row['cluster_3_masters']['p90_ms']:.3f}, CPU "
            f"{row['cluster_3_masters']['cpu_ms_per_read']:.3f}); "
            f"x{row['cluster_over_single_median']:.2f}"
        )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
