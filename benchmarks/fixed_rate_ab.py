"""Server variants at one offered rate: CPU per request, latency and failures side by side.

    python benchmarks/fixed_rate_ab.py --rate 250 --seconds 20 \
        --variant naive-onnx --variant loop= --variant threads=QUERYREC_INFERENCE_ON=thread \
        [--candidates 100] [--bundle demo-work/bundle] [--data demo-work/data] [--out FILE]

Each `--variant NAME=VAR=VALUE,VAR=VALUE` is a `queryrec serve` with those QUERYREC_*
settings on top of the defaults (`loadtest.bench`'s `service` variant); `naive-onnx`, `naive-torch` and `echo`
name the reference servers (`loadtest.reference_servers`). For every variant in turn:
the embedded Redis is emptied and loaded with the dataset's state, the server starts, a
3 s warm-up at 20 req/s, then one `loadtest.bench.run_step` at `--rate` (the same Locust
stream, seed and pass rule as the sweep). Printed and written per variant: delivered
rate, server process-tree CPU per call, Score p50 / p99, failed calls, degraded answers
and the /metrics stage seconds per Score. The sweep (`loadtest.bench`) finds each
server's maximum; this answers "what does one change cost at the same load".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import redis

from loadtest.bench import (
    REFERENCE_KINDS,
    SweepConfig,
    run_step,
    started,
)
from queryrec.features.bundle_format import read_manifest
from queryrec.features.dataset import PreparedDataset
from service.state.embedded_redis import EmbeddedRedis
from service.state.load import load_state

WARMUP_RATE, WARMUP_S = 20.0, 3.0


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """`name=VAR=value,VAR=value` (or a reference server's name) -> (name, settings)."""
    name, _, rest = text.partition("=")
    settings = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("QUERYREC_"):
            raise SystemExit(f"--variant {text}: expected QUERYREC_NAME=value, got {item!r}")
        settings[key] = value
    return name, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--bundle", type=Path, default=Path("demo-work/bundle"))
    parser.add_argument("--data", type=Path, default=Path("demo-work/data"))
    parser.add_argument("--out", type=Path, default=Path("bench-work/fixed_rate_ab.json"))
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    lengths = read_manifest(args.bundle)["max_lengths"]
    dataset = PreparedDataset(args.data)
    config = SweepConfig()
    work = args.out.parent / args.out.stem
    rows: list[dict[str, Any]] = []
    with EmbeddedRedis() as redis_server:
        for name, settings in variants:
            with redis.Redis.from_url(redis_server.url) as client:
                client.flushall()
            load_state(
                dataset,
                redis_server.url,
                query_cap=int(lengths["query_history"]),
                click_cap=int(lengths["click_history"]),
                progress=False,
            )
            log = work / f"{name}.log"
            kind = name if name in REFERENCE_KINDS else "service"
            with started(
                kind, args.candidates, args.bundle, redis_server.url, None, args.data, log, settings
            ) as server:
                warm = work / f"{name}-warmup"
                run_step(
                    server, WARMUP_RATE, WARMUP_S, 16, args.candidates, args.data, warm, config
                )
                users = config.users_for(args.rate)
                step = run_step(
                    server,
                    args.rate,
                    args.seconds,
                    users,
                    args.candidates,
                    args.data,
                    work / f"{name}-r{args.rate:g}",
                    config,
                )
            summary = step.get("summary", {})
            scores = max(1, int(summary.get("requests", {}).get("Score", 0)))
            latency = summary.get("latency_ms", {}).get("Score", {})
            row = {
                "variant": name,
                "settings": settings,
                "rate": args.rate,
                "rps": summary.get("rps"),
                "cpu_ms_per_request": step["cpu_ms_per_request"],
                "p50_ms": latency.get("p50"),
                "p99_ms": latency.get("p99"),
                "failures": summary.get("failures_total"),
                "degraded": summary.get("degraded", {}).get("count"),
                "stage_ms_per_score": {
                    k: v * 1e3 / scores for k, v in (step["stages_s"] or {}).items()
                },
                "why": step["why"],
            }
            rows.append(row)
            print(
                f"{name:16s} {row['rps'] or 0:7.0f} req/s  {row['cpu_ms_per_request'] or 0:.3f} "
                f"ms CPU/request  p50 {row['p50_ms'] or 0:.1f}  p99 {row['p99_ms'] or 0:.1f} ms  "
                f"failed {row['failures']}  degraded {row['degraded']}",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
