"""Server CPU per Score, this code against another checkout of it, measured in pairs.

    python benchmarks/serving_ab.py --data DATA_DIR --bundle BUNDLE_DIR --before TREE [--rounds N]

Two `queryrec serve` processes run side by side on one embedded Redis (loaded with
`state load`): one from this tree, one with PYTHONPATH=TREE (for example a `git worktree`
of an earlier commit), both with the query-vector cache off so that every request with
queries encodes. Each round sends every test-split feed page once as a Score to one
server, then to the other (the order alternates), concurrency 8, and reads each server's
user + system CPU from /proc. A shared 2-core box drifts, so what counts is the ratio
within a round; the script prints every round and the median ratio, and writes them to
a JSON file. docs/BENCHMARKS.md quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import process_cpu_s, score_only

from clients.replay import build_events
from queryrec.demo import ServerProcess
from queryrec.features.dataset import PreparedDataset
from service.embedded_redis import EmbeddedRedis
from service.state_load import load_state

CONCURRENCY = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--before", type=Path, required=True, help="checkout to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-work/serving_ab.json"))
    args = parser.parse_args()
    dataset = PreparedDataset(args.data)
    streams, _, _ = build_events(dataset)
    pages = [(u, e.ids, e.ts) for u, events in streams.items() for e in events if e.kind == 0]
    no_cache = {"QUERYREC_CACHE_QUERY_REPR": "false"}
    rounds: list[dict[str, float]] = []
    with EmbeddedRedis() as redis_server:
        load_state(dataset, redis_server.url, progress=False)
        log_dir = args.out.parent
        log_dir.mkdir(parents=True, exist_ok=True)
        servers = {
            "after": ServerProcess(
                args.bundle, redis_server.url, log_dir / "ab_after.log", no_cache
            ),
            "before": ServerProcess(
                args.bundle,
                redis_server.url,
                log_dir / "ab_before.log",
                {**no_cache, "PYTHONPATH": str(args.before.resolve())},
            ),
        }
        try:
            ports = {name: server.start() for name, server in servers.items()}
            for name in servers:  # warm both
                asyncio.run(score_only(f"127.0.0.1:{ports[name]}", pages[:500], CONCURRENCY))
            for r in range(args.rounds):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                cpu_ms: dict[str, float] = {}
                for name in order:
                    pid = servers[name].pid
                    start = process_cpu_s(pid)
                    asyncio.run(score_only(f"127.0.0.1:{ports[name]}", pages, CONCURRENCY))
                    cpu_ms[name] = (process_cpu_s(pid) - start) / len(pages) * 1e3
                ratio = cpu_ms["after"] / cpu_ms["before"]
                rounds.append({**cpu_ms, "ratio": ratio})
                print(
                    f"round {r + 1}: before {cpu_ms['before']:.3f}, after {cpu_ms['after']:.3f} "
                    f"ms CPU per Score, after/before {ratio:.3f}"
                )
        finally:
            for server in servers.values():
                server.stop()
    result = {
        "calls_per_round": len(pages),
        "rounds": rounds,
        "median_before_ms": statistics.median(r["before"] for r in rounds),
        "median_after_ms": statistics.median(r["after"] for r in rounds),
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"median: before {result['median_before_ms']:.3f}, after {result['median_after_ms']:.3f} "
        f"ms CPU per Score; after/before {result['median_ratio']:.3f} (wrote {args.out})"
    )


if __name__ == "__main__":
    main()
