"""A Score's CPU without the transport: `Scorer.score` in-process, on cache hits.

    python -m benchmarks.score_in_process --data DATA_DIR --bundle BUNDLE_DIR
        [--users 200] [--candidates 100] [--rounds 7]

Loads the dataset's state into an embedded Redis, builds the service's `Scorer` on the
bundle (defaults, a 10 s budget so that nothing degrades), scores `--users` users once
(filling the cache) and then `--rounds` times each, and prints the median CPU time of
this process per Score (`time.process_time`: the Redis server's own CPU is not in it).
What the load test's "server CPU per request" adds to this is the gRPC transport and
the machine shared with the load generator (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np

from queryrec.features.dataset import PreparedDataset
from service.inference.bundle_loader import load_bundle
from service.inference.scoring import Scorer
from service.settings import ServiceSettings
from service.state.by_url import open_state
from service.state.embedded_redis import EmbeddedRedis
from service.state.load import load_state
from service.state.store import HistoryCaps


async def measure(
    bundle_dir: Path, url: str, data: PreparedDataset, users: int, candidates: int, rounds: int
) -> dict[str, object]:
    settings = ServiceSettings.model_validate({"bundle": bundle_dir, "budget_ms": 10_000})
    bundle = load_bundle(bundle_dir, device="cpu")
    lengths = bundle.manifest["max_lengths"]  # the caps `queryrec serve` uses by default
    caps = HistoryCaps(
        queries=int(lengths["query_history"]),
        clicks=int(lengths["click_history"]),
        ttl_s=settings.state_ttl_s,
        search_clicks=settings.max_search_clicks,
    )
    scorer = Scorer(bundle, open_state(url, caps), settings)
    scorer.start()
    scorer.warm_up()
    raw_users = [int(u) for u in data.raw_ids("users")[1 : users + 1]]
    items = [int(i) for i in data.raw_ids("items")[1 : candidates + 1]]
    at = int(data.schema["split"]["test_start_ms"])
    for user in raw_users:  # fill the cache
        await scorer.score(user, items, at, 10.0)
    await asyncio.gather(*scorer._background)
    per_round = []
    for _ in range(rounds):
        began = time.process_time()
        for user in raw_users:
            await scorer.score(user, items, at, 10.0)
        per_round.append((time.process_time() - began) / len(raw_users) * 1e3)
    await scorer.stop()
    return {
        "bundle": str(bundle_dir),
        "split_ctr_graph": scorer.split,
        "cpu_ms_per_score": round(float(np.median(per_round)), 3),
        "rounds": [round(r, 3) for r in per_round],
        "cache_hits": scorer.counts.cache_hits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    data = PreparedDataset(args.data)
    with EmbeddedRedis() as redis:
        load_state(data, redis.url, progress=False)
        result = asyncio.run(
            measure(args.bundle, redis.url, data, args.users, args.candidates, args.rounds)
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
