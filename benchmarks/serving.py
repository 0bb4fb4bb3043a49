"""Scoring-service benchmark: state load rate, replay throughput and latency, server CPU split.

    python benchmarks/serving.py --data DATA_DIR --bundle BUNDLE_DIR [--out FILE]

1. `state load` into an embedded Redis: users per minute.
2. `queryrec serve` as a subprocess (budget 1 s, so no request degrades under the
   client's own load on a shared 2-core box), then the test-split replay at several
   concurrencies: calls/s, Score p50 / p99, served vs offline AUC. The replay client runs
   on the same cores as the server.
3. Server CPU per Score: the server process's user + system CPU (from /proc) over a
   Score-only pass (every test page scored once, no writes) divided by the calls; split
   into Redis (client side: pipelined read + decode + feature building, measured in this
   process over the same users), encoder (one ONNX Runtime call per user, batch 1: the
   batch size seen at this load) and CTR (one call per page), measured in-process on one
   thread; the rest is transport and the request's Python (gRPC, asyncio, protobuf).
Results go to a JSON file; docs/BENCHMARKS.md "Scoring service" quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import grpc
import numpy as np

from clients.credentials import api_metadata
from clients.launcher import ServerProcess
from clients.replay import build_events, run_replay
from queryrec.features.bundle_format import read_manifest
from queryrec.features.dataset import PreparedDataset
from service.api import scorer_pb2, scorer_pb2_grpc
from service.inference.bundle_loader import load_bundle
from service.inference.features import Encoded, FeatureBuilder, UserRow, split_encoded
from service.state.by_url import open_state
from service.state.embedded_redis import EmbeddedRedis
from service.state.load import LoadReport, load_state
from service.state.store import HistoryCaps


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def score_only(
    target: str, pages: list[tuple[int, list[int], int]], concurrency: int
) -> float:
    """Send every page once as a Score; -> seconds."""
    metadata = api_metadata()  # the server's API token, when the environment has it
    async with grpc.aio.insecure_channel(target) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        todo = iter(pages)

        async def worker() -> None:
            for user, items, ts in todo:
                await stub.Score(
                    scorer_pb2.ScoreRequest(user_id=user, item_ids=items, request_time_ms=ts),
                    metadata=metadata,
                )

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


def stage_cpu(
    bundle_dir: Path, url: str, pages: list[tuple[int, list[int], int]]
) -> dict[str, float]:
    """CPU ms per request of the Redis read (+ features), the encoder and the CTR graph,
    each measured alone in this process on one thread."""
    bundle = load_bundle(bundle_dir, device="cpu", threads=1)
    features = FeatureBuilder.for_bundle(bundle)
    lengths = bundle.manifest["max_lengths"]
    caps = HistoryCaps(int(lengths["query_history"]), int(lengths["click_history"]), 3600)

    async def read_all() -> list[UserRow]:
        state = open_state(url, caps)
        rows = []
        for user, _, ts in pages:
            (one,) = await state.read([user], bundle.model_version)
            rows.append(features.user_row(user, one, ts))
        await state.close()
        return rows

    start = time.process_time()
    rows = asyncio.run(read_all())
    redis_ms = (time.process_time() - start) / len(pages) * 1e3
    with_queries = [r for r in rows if r.query_count]
    encoder_ms = 0.0
    if bundle.encoder is not None and with_queries:
        start = time.process_time()
        for row in with_queries:
            bundle.encoder.run(None, features.encoder_feed([row]))
        encoder_ms = (time.process_time() - start) / len(with_queries) * 1e3
    # The CTR graph's encoder inputs: each request's own, computed before the timing.
    encoded: list[list[Encoded] | None] = [None] * len(rows)
    if bundle.encoder is not None:
        graphs = bundle.manifest["graphs"]
        names = list(graphs["query_encoder"]["outputs"])
        encoded = [
            split_encoded(bundle.encoder.run(None, features.encoder_feed([row])), names, [row])
            for row in rows
        ]
    start = time.process_time()
    for row, own, (_, items, _) in zip(rows, encoded, pages, strict=True):
        feed = features.ctr_feed([row], own, [bundle.items(np.array(items))])
        bundle.ctr.run(None, feed)
    ctr_ms = (time.process_time() - start) / len(pages) * 1e3
    return {
        "redis_ms": redis_ms,
        "encoder_ms_per_encode": encoder_ms,
        "encode_share": len(with_queries) / len(rows),
        "encoder_ms": encoder_ms * len(with_queries) / len(rows),
        "ctr_ms": ctr_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument(
        "--delays-ms", default="0,1", help="micro-batcher max delays to compare (both batchers)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-work/serving.json"))
    args = parser.parse_args()
    dataset = PreparedDataset(args.data)
    manifest = read_manifest(args.bundle)
    lengths = manifest["max_lengths"]
    result: dict[str, object] = {"data": str(args.data), "model": manifest["model_version"]}
    streams, _, _ = build_events(dataset)
    pages = [(u, e.ids, e.ts) for u, events in streams.items() for e in events if e.kind == 0]
    with EmbeddedRedis() as redis_server:
        query_cap, click_cap = int(lengths["query_history"]), int(lengths["click_history"])

        def fresh_state() -> LoadReport:
            return load_state(
                dataset, redis_server.url, progress=False, query_cap=query_cap, click_cap=click_cap
            )

        loaded = fresh_state()
        result["state_load_users_per_min"] = loaded.users_per_minute
        print(f"state load: {loaded.users:,} users, {loaded.users_per_minute:,.0f} users/min")
        replays = []
        for delay in args.delays_ms.split(","):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                fresh_state()
                delays = {f"QUERYREC_{b}_MAX_DELAY_MS": delay for b in ("ENCODER", "CTR")}
                server = ServerProcess(
                    args.bundle, redis_server.url, Path("bench-work/serve.log"), delays
                )
                try:
                    port = server.start()
                    summary = run_replay(args.data, f"127.0.0.1:{port}", args.bundle, concurrency)
                finally:
                    server.stop()
                replays.append({"delay_ms": float(delay), "concurrency": concurrency, **summary})
        result["replay"] = replays
        # Server CPU per Score, on the state as of the end of the replay; no vector cache,
        # so that every request with queries encodes, as in the in-process split below.
        server = ServerProcess(
            args.bundle,
            redis_server.url,
            Path("bench-work/serve.log"),
            {"QUERYREC_CACHE_QUERY_REPR": "false"},
        )
        try:
            port = server.start()
            asyncio.run(score_only(f"127.0.0.1:{port}", pages[:500], 8))  # warm caches
            before = process_cpu_s(server.pid)
            seconds = asyncio.run(score_only(f"127.0.0.1:{port}", pages, 8))
            cpu_ms = (process_cpu_s(server.pid) - before) / len(pages) * 1e3
        finally:
            server.stop()
        stages = stage_cpu(args.bundle, redis_server.url, pages)
    rest = cpu_ms - stages["redis_ms"] - stages["encoder_ms"] - stages["ctr_ms"]
    result["score_only"] = {
        "calls": len(pages),
        "calls_per_s": len(pages) / seconds,
        "server_cpu_ms_per_score": cpu_ms,
        **stages,
        "transport_and_python_ms": rest,
        "mean_items_per_score": float(np.mean([len(p[1]) for p in pages])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "| max delay ms | concurrency | calls/s | Score p50 ms | Score p99 ms | served AUC "
        "| offline AUC | degraded |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in replays:
        print(
            f"| {r['delay_ms']:g} | {r['concurrency']} | {r['calls_per_s']:.0f} | {r['score_p50_ms']:.2f} | "
            f"{r['score_p99_ms']:.2f} | {r['served_auc']:.4f} | {r['offline_auc']:.4f} | "
            f"{r['degraded']:.0f} |"
        )
    s = result["score_only"]
    assert isinstance(s, dict)
    print(
        f"Score only ({s['calls']} calls, concurrency 8): {s['calls_per_s']:.0f} calls/s, server "
        f"CPU {s['server_cpu_ms_per_score']:.2f} ms/Score = Redis {s['redis_ms']:.2f} + encoder "
        f"{s['encoder_ms']:.2f} ({s['encode_share']:.0%} of requests encode, "
        f"{s['encoder_ms_per_encode']:.2f} ms each) + CTR {s['ctr_ms']:.2f} + transport and "
        f"Python {s['transport_and_python_ms']:.2f}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
