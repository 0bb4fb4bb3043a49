"""Where a served Score's CPU goes: py-spy samples of `queryrec serve` under load.

    python benchmarks/profile_serving.py --data DATA_DIR --bundle BUNDLE_DIR [--candidates 100]
        [--seconds 20] [--concurrency 8] [--out bench-work/profile]

Needs py-spy: `.venv/bin/pip install -e '.[profile]'`.

Loads the dataset's state into an embedded Redis, starts `queryrec serve` on the bundle
(a generous budget: the profile is of the full work, not of degraded answers), sends
Score calls with `--candidates` items drawn from the test split's shown items with their
popularity, and samples the server with `py-spy record` (all threads, 250 Hz) for
`--seconds`. It writes the collapsed stacks (`serve.folded`, for flame graphs) and
`summary.json`: the share of samples per request stage (by the innermost frame of ours
each sample passes through) and the top functions by own samples. docs/BENCHMARKS.md
quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc

from clients.credentials import api_metadata
from clients.launcher import ServerProcess
from clients.replay import build_events
from queryrec.features.bundle_format import read_manifest
from queryrec.features.dataset import PreparedDataset
from service.api import scorer_pb2, scorer_pb2_grpc
from service.state.embedded_redis import EmbeddedRedis
from service.state.load import load_state

# Stage of a sample: the first of these (innermost first) found in its stack.
STAGES = (
    ("ctr user graph (ONNX Runtime, on a cache miss)", "_user_side_batch"),
    ("ctr graph (ONNX Runtime)", "_ctr_batch"),
    ("encoder graph (ONNX Runtime)", "_encode_batch"),
    ("CTR inputs", "ctr_feed"),
    ("CTR inputs", "pair_feed"),
    ("CTR inputs", "user_feed"),
    ("encoder inputs", "encoder_feed"),
    ("features (Redis state -> model inputs)", "user_row"),
    ("Redis read and decode", "read (service/state/single_node.py"),
    ("Redis read and decode", "read (service/state/cluster.py"),
    ("batcher", "service/inference/batcher.py"),
    ("scoring pipeline", "service/inference/scoring.py"),
    ("RPC wrapper, validation, response", "service/transport/calls.py"),
    ("RPC wrapper, validation, response", "service/transport/server.py"),
    ("redis-py", "redis/"),
    ("grpc", "grpc/"),
    ("asyncio event loop", "asyncio/"),
)


def requests_for(
    dataset: PreparedDataset, candidates: int, seed: int
) -> list[tuple[int, list[int], int]]:
    """(user, items, time) per test-split feed page, the items re-drawn with popularity."""
    streams, _, _ = build_events(dataset)
    pages = [(u, e.ids, e.ts) for u, events in streams.items() for e in events if e.kind == 0]
    shown = Counter(item for _, items, _ in pages for item in items)
    catalogue, weights = zip(*shown.items(), strict=True)
    rng = random.Random(seed)
    return [(u, rng.choices(catalogue, weights, k=candidates), ts) for u, _, ts in pages]


async def load(
    target: str, requests: list[tuple[int, list[int], int]], seconds: float, concurrency: int
) -> int:
    """Score calls in a loop for `seconds`; -> calls answered."""
    done = 0
    stop_at = time.perf_counter() + seconds
    metadata = api_metadata()  # the server's API token, when the environment has it
    async with grpc.aio.insecure_channel(target) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            while time.perf_counter() < stop_at:
                user, items, ts = requests[i % len(requests)]
                await stub.Score(
                    scorer_pb2.ScoreRequest(user_id=user, item_ids=items, request_time_ms=ts),
                    metadata=metadata,
                )
                done += 1
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):  # innermost first
        for stage, marker in STAGES:
            if marker in frame:
                return stage
    return "other (interpreter, threads, libraries)"


def summarise(folded: Path) -> dict[str, object]:
    stages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        stages[stage_of(stack)] += n
        own[stack.split(";")[-1]] += n
    return {
        "samples": total,
        "stage_share": {k: round(v / total, 4) for k, v in stages.most_common()},
        "top_own": [[frame, round(n / total, 4)] for frame, n in own.most_common(25)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench-work/profile"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    dataset = PreparedDataset(args.data)
    manifest = read_manifest(args.bundle)
    lengths = manifest["max_lengths"]
    requests = requests_for(dataset, args.candidates, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    folded = args.out / "serve.folded"
    with EmbeddedRedis() as redis_server:
        load_state(
            dataset,
            redis_server.url,
            progress=False,
            query_cap=int(lengths["query_history"]),
            click_cap=int(lengths["click_history"]),
        )
        server = ServerProcess(
            args.bundle,
            redis_server.url,
            args.out / "serve.log",
            {
                "QUERYREC_BUDGET_MS": "10000",
                "QUERYREC_MAX_CANDIDATES": str(args.candidates),
                "QUERYREC_WORKERS": "1",  # one process: the one py-spy samples
            },
        )
        port = server.start()
        target = f"127.0.0.1:{port}"
        try:
            asyncio.run(load(target, requests, 3.0, args.concurrency))  # warm: cache, pools
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(server.pid),
                    "--duration",
                    str(int(args.seconds)),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(folded),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            calls = asyncio.run(load(target, requests, args.seconds, args.concurrency))
            _, err = spy.communicate(timeout=args.seconds + 60)
            if spy.returncode != 0:
                raise SystemExit(f"py-spy failed: {err.strip().splitlines()[-1:]}")
        finally:
            server.stop()
    summary = {
        "data": str(args.data),
        "model": manifest["model_version"],
        "candidates": args.candidates,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "calls": calls,
        "calls_per_s": round(calls / args.seconds, 1),
        **summarise(folded),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("calls_per_s", "samples", "stage_share")}, indent=2))


if __name__ == "__main__":
    main()
