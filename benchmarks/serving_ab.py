"""Server CPU per Score, A against B, measured in pairs: two bundles, or two checkouts.

    python benchmarks/serving_ab.py --data DATA_DIR --bundle A_BUNDLE --bundle-b B_BUNDLE
        [--candidates 100] [--rounds N] [--no-cache]
    python benchmarks/serving_ab.py --data DATA_DIR --bundle BUNDLE --before TREE [--rounds N]

Two `queryrec serve` processes run side by side on one embedded Redis (loaded with
`state load`, search clicks included):
- `--bundle-b`: the same code serving two bundles (e.g. the served `queryrec` against
  `queryrec-paper`), with the service's defaults (query-vector cache on; `--no-cache`
  turns it off in both, so that every request with searches encodes);
- `--before TREE`: one bundle, this tree against PYTHONPATH=TREE (for example a `git
  worktree` of an earlier commit), both with the cache off.
Each round sends every test-split feed page once as a Score to one server, then to the
other (the order alternates), concurrency 8, and reads each server's user + system CPU
(the process and its worker processes) from /proc. With `--candidates N` every Score carries N candidates: the page's own items,
then items drawn from the test split's impressions (seeded), so both servers score the
same requests. The caches fill in the first (warm-up) pass, as they would in service. A
shared 2-core box drifts, so what counts is the ratio within a round; the script prints
every round and the median ratio, and writes them to a JSON file. docs/BENCHMARKS.md
quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import score_only

from clients.launcher import ServerProcess
from clients.replay import build_events
from loadtest.bench import tree_cpu_s
from queryrec.features.dataset import PreparedDataset
from service.state.embedded_redis import EmbeddedRedis
from service.state.load import load_state

CONCURRENCY = 8


def with_candidates(
    pages: list[tuple[int, list[int], int]], candidates: int, pool: np.ndarray, seed: int = 0
) -> list[tuple[int, list[int], int]]:
    """Every page's items topped up (or cut) to `candidates` with items drawn from `pool`."""
    if candidates <= 0:
        return pages
    rng = np.random.default_rng(seed)
    out = []
    for user, items, ts in pages:
        extra = rng.choice(pool, size=max(candidates - len(items), 0)).tolist()
        out.append((user, (items + extra)[:candidates], ts))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True, help="A: the bundle measured")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--bundle-b", type=Path, help="B: a second bundle on this code")
    group.add_argument("--before", type=Path, help="B: this bundle on another checkout")
    parser.add_argument("--candidates", type=int, default=0, help="per Score (0: the page's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-cache", action="store_true", help="query-vector cache off")
    parser.add_argument("--out", type=Path, default=Path("bench-work/serving_ab.json"))
    args = parser.parse_args()
    dataset = PreparedDataset(args.data)
    streams, _, _ = build_events(dataset)
    pages = [(u, e.ids, e.ts) for u, events in streams.items() for e in events if e.kind == 0]
    pool = np.array([i for _, items, _ in pages for i in items], dtype=np.int64)
    pages = with_candidates(pages, args.candidates, pool)
    cache = {"QUERYREC_CACHE_QUERY_REPR": "false"} if args.no_cache or args.before else {}
    log_dir = args.out.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, float]] = []
    with EmbeddedRedis() as redis_server:
        load_state(dataset, redis_server.url, progress=False)
        b_bundle = args.bundle_b or args.bundle
        b_env = {**cache, "PYTHONPATH": str(args.before.resolve())} if args.before else cache
        servers = {
            "a": ServerProcess(args.bundle, redis_server.url, log_dir / "ab_a.log", cache),
            "b": ServerProcess(b_bundle, redis_server.url, log_dir / "ab_b.log", b_env),
        }
        try:
            ports = {name: server.start() for name, server in servers.items()}
            for name in servers:  # warm both (and fill their caches)
                asyncio.run(score_only(f"127.0.0.1:{ports[name]}", pages, CONCURRENCY))
            for r in range(args.rounds):
                order = ("b", "a") if r % 2 == 0 else ("a", "b")
                cpu_ms: dict[str, float] = {}
                for name in order:
                    pid = servers[name].pid
                    start = tree_cpu_s(pid)  # the server and its worker processes
                    asyncio.run(score_only(f"127.0.0.1:{ports[name]}", pages, CONCURRENCY))
                    cpu_ms[name] = (tree_cpu_s(pid) - start) / len(pages) * 1e3
                ratio = cpu_ms["a"] / cpu_ms["b"]
                rounds.append({**cpu_ms, "ratio": ratio})
                print(
                    f"round {r + 1}: a {cpu_ms['a']:.3f}, b {cpu_ms['b']:.3f} ms CPU per Score, "
                    f"a/b {ratio:.3f}",
                    flush=True,
                )
        finally:
            for server in servers.values():
                server.stop()
    result = {
        "a": str(args.bundle),
        "b": str(args.bundle_b) if args.bundle_b else f"{args.bundle} on {args.before}",
        "candidates": args.candidates or "the page's",
        "cache": not cache,
        "calls_per_round": len(pages),
        "rounds": rounds,
        "median_a_ms": statistics.median(r["a"] for r in rounds),
        "median_b_ms": statistics.median(r["b"] for r in rounds),
        "median_ratio": statistics.median(r["ratio"] for r in rounds),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"median: a {result['median_a_ms']:.3f}, b {result['median_b_ms']:.3f} ms CPU per "
        f"Score; a/b {result['median_ratio']:.3f} (wrote {args.out})"
    )


if __name__ == "__main__":
    main()
