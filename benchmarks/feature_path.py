"""What the feature path costs: training batches per second and serving features per request.

    python benchmarks/feature_path.py --data DATA_DIR --bundle BUNDLE_DIR [--out FILE] [--repeats N]

1. Training: `BatchBuilder.build` (model inputs + L_next / L_cl targets) over length-
   bucketed batches of 1024 training samples, as the training loop draws them; samples/s,
   median of `--repeats` passes over the same 60 batches.
2. Serving: the feature building of one Score request, from the user's state as Redis
   returned it (read once, beforehand, for the test split's feed pages) to the model
   inputs (`FeatureBuilder.user_row`); and the Redis read + decode itself. CPU ms per
   request (process time), median of the passes.

The serving part runs against the code before the one-feature-path change too (run it
with `PYTHONPATH=<checkout of the earlier commit>`); the training part takes the history
lengths as one `HistoryLengths` since the `ModelInputs` change, so an earlier checkout
needs its own copy of this file for that part; docs/BENCHMARKS.md quotes both,
interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

import queryrec
from queryrec.features.dataset import PreparedDataset
from queryrec.features.model_inputs import HistoryLengths
from queryrec.training.batch_order import bucketed_batches
from queryrec.training.batches import AuxiliaryConfig, BatchBuilder
from service.inference.bundle_loader import load_bundle
from service.inference.features import FeatureBuilder
from service.state.embedded_redis import EmbeddedRedis
from service.state.load import load_state
from service.state.single_node import RedisState
from service.state.store import HistoryCaps, UserState

BATCH, BATCHES = 1024, 60


def training_samples_per_s(dataset: PreparedDataset, repeats: int) -> list[float]:
    builder = BatchBuilder(
        dataset, HistoryLengths(clicks=50, queries=20, tokens=8), aux=AuxiliaryConfig()
    )
    arrays = builder.split_arrays("train", with_aux=True)
    rng = np.random.default_rng(0)
    batches = bucketed_batches(rng.permutation(len(arrays)), arrays.query_count, BATCH, rng)
    batches = batches[:BATCHES]
    rates = []
    for _ in range(repeats):
        aux_rng = np.random.default_rng(1)
        start = time.perf_counter()
        for rows in batches:
            builder.build(arrays, rows, aux_rng)
        rates.append(sum(len(r) for r in batches) / (time.perf_counter() - start))
    return rates


def serving_ms(
    dataset: PreparedDataset, bundle_dir: Path, repeats: int
) -> tuple[list[float], list[float]]:
    """(Redis read + decode ms per request, feature building ms per request) per pass."""
    bundle = load_bundle(bundle_dir, device="cpu", threads=1)
    # Before the change the constructor took the bundle; now `for_bundle` does.
    make: Any = getattr(FeatureBuilder, "for_bundle", FeatureBuilder)
    features = make(bundle)
    lengths = bundle.manifest["max_lengths"]
    caps = HistoryCaps(int(lengths["query_history"]), int(lengths["click_history"]), 3600)
    samples = dataset.samples("test")
    pages = samples.unique(["user", "ts"], maintain_order=True)
    user_raw = dataset.raw_ids("users") if hasattr(dataset, "raw_ids") else None
    if user_raw is None:  # before: the helper lived in the state loader
        from service.state.load import raw_ids  # type: ignore[attr-defined]

        user_raw = raw_ids(dataset, "users")
    requests = [
        (int(user_raw[u]), int(ts))
        for u, ts in zip(pages["user"].to_list(), pages["ts"].to_list(), strict=True)
    ]
    with EmbeddedRedis() as redis_server:
        load_state(dataset, redis_server.url, progress=False)

        async def read_all() -> list[UserState]:
            state = RedisState(redis_server.url, caps)
            out = [(await state.read([user], None))[0] for user, _ in requests]
            await state.close()
            return out

        read_ms, build_ms = [], []
        for _ in range(repeats):
            start = time.process_time()
            states = asyncio.run(read_all())
            read_ms.append((time.process_time() - start) / len(requests) * 1e3)
            start = time.process_time()
            for (user, ts), one in zip(requests, states, strict=True):
                features.user_row(user, one, ts)
            build_ms.append((time.process_time() - start) / len(requests) * 1e3)
    return read_ms, build_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-work/feature_path.json"))
    args = parser.parse_args()
    dataset = PreparedDataset(args.data)
    rates = training_samples_per_s(dataset, args.repeats)
    read_ms, build_ms = serving_ms(dataset, args.bundle, args.repeats)
    result = {
        "code": str(Path(queryrec.__file__).parent.parent),
        "train_build_samples_per_s": statistics.median(rates),
        "train_build_samples_per_s_all": rates,
        "serve_read_decode_ms": statistics.median(read_ms),
        "serve_features_ms": statistics.median(build_ms),
        "serve_features_ms_all": build_ms,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['code']}: training batches {result['train_build_samples_per_s']:,.0f} samples/s; "
        f"serving: Redis read + decode {result['serve_read_decode_ms']:.3f} ms, features "
        f"{result['serve_features_ms']:.3f} ms per request (CPU, median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
