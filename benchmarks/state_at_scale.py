"""Benchmark: `state load` of every `kuaisar-small` user into Redis, its memory, and the
extrapolation to 100 M users.

    python benchmarks/state_at_scale.py [--workdir bench-work] [--users-target 100000000]
        [--node-memory-gib 25] [--score-cpu-ms 2.56] [--score-rate 50000]

Starts an embedded (real) Redis, reads `INFO memory` before and after loading every user
of bench-work/data-kuaisar-small (the real release's 25,877 users; histories as of the
test split's start, capped at L = 20 queries and H = 50 clicks, as the server keeps them),
and reports bytes per user (`used_memory` delta / users). The extrapolation to
`--users-target` users: memory for the primaries (the per-user cost as measured; users
with fuller histories cost more, so the history-length distribution is printed too), the
cluster that holds it (`--node-memory-gib` of data per primary, each with one replica),
and the scorer processes for `--score-rate` Score/s from `--score-cpu-ms` (server CPU
per Score call, one worker, measured in docs/BENCHMARKS.md "Side by side"). Writes
bench-work/state_at_scale.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import redis

from queryrec.features.dataset import PreparedDataset
from service.state.embedded_redis import EmbeddedRedis
from service.state.load import load_state


def _memory(client: redis.Redis) -> dict[str, int]:
    info = client.info("memory")
    return {k: int(info[k]) for k in ("used_memory", "used_memory_dataset", "used_memory_rss")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--users-target", type=int, default=100_000_000)
    parser.add_argument("--node-memory-gib", type=float, default=25.0)
    parser.add_argument("--score-cpu-ms", type=float, default=2.56)
    parser.add_argument("--score-rate", type=float, default=50_000)
    args = parser.parse_args()
    dataset = PreparedDataset(args.workdir / "data-kuaisar-small")
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        before = _memory(client)
        report = load_state(dataset, server.url, progress=True)
        after = _memory(client)
        keys = int(client.dbsize())
        lists = {
            "queries_per_user": report.queries / report.users,
            "clicks_per_user": report.clicks / report.users,
        }
    per_user = (after["used_memory"] - before["used_memory"]) / report.users
    total_gib = per_user * args.users_target / 2**30
    primaries = math.ceil(total_gib / args.node_memory_gib)
    processes = math.ceil(args.score_rate * args.score_cpu_ms / 1000)
    result = {
        "users_loaded": report.users,
        "queries": report.queries,
        "clicks": report.clicks,
        "keys": keys,
        "load_seconds": round(report.seconds, 1),
        "users_per_second": round(report.users / report.seconds),
        "memory_before": before,
        "memory_after": after,
        "bytes_per_user": round(per_user),
        "dataset_bytes_per_user": round(
            (after["used_memory_dataset"] - before["used_memory_dataset"]) / report.users
        ),
        **{k: round(v, 2) for k, v in lists.items()},
        "extrapolation": {
            "users": args.users_target,
            "primary_memory_gib": round(total_gib, 1),
            "with_one_replica_gib": round(2 * total_gib, 1),
            "node_memory_gib": args.node_memory_gib,
            "primaries": primaries,
            "nodes_with_replicas": 2 * primaries,
            "score_cpu_ms_per_call": args.score_cpu_ms,
            "score_per_second_per_process": round(1000 / args.score_cpu_ms),
            "score_rate": args.score_rate,
            "scorer_processes_at_full_cpu": processes,
            "scorer_processes_at_70_percent": math.ceil(processes / 0.7),
        },
    }
    target = args.workdir / "state_at_scale.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
