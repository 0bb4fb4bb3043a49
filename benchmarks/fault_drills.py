"""Fault drills against `queryrec serve` as an operator would run them: Redis paused under
load, SIGTERM under load. Prints the counts the operations docs promise and writes them to
a JSON file.

    python benchmarks/fault_drills.py pauses  --bundle DIR [--pauses 20] [--pause-s 1.5]
        [--loops 8] [--budget-ms 50] [--margin-ms 25] [--out FILE]
    python benchmarks/fault_drills.py sigterm --bundle DIR [--runs 20] [--loops 8]
        [--drain-delay-s 5] [--workers 1] [--out FILE]

`pauses`: one `queryrec serve` (one worker, Score budget `--budget-ms`) over a redis-server
this script starts; `--loops` concurrent Score loops (100 candidates, users with recorded
searches) run in this process while Redis is stopped (SIGSTOP) `--pauses` times for
`--pause-s` each. Reported: calls, calls later than budget + `--margin-ms` (the promise:
none), the slowest call, status codes, the share answered degraded. The load runs in this
process, on the same box: a call's time includes the client's own scheduling.

`sigterm`: `--runs` times, start `queryrec serve`, put `--loops` Score loops on it that
retry at once on any error, send SIGTERM, and count every call's status until the server
has exited and each loop has seen its connection refused. The promise: calls end OK or
UNAVAILABLE, never CANCELLED, and the server exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import polars as pl

from clients.launcher import ServerProcess
from service.api import scorer_pb2 as pb
from service.api import scorer_pb2_grpc
from service.state.embedded_redis import EmbeddedRedis

REQUEST_MS = 1_700_000_000_000
ADMIN_PORT = re.compile(r"admin on port (?P<port>\d+)")


def raw_ids(bundle: Path, name: str, count: int) -> list[int]:
    ids: list[int] = pl.read_parquet(bundle / f"maps/{name}.parquet")["raw_id"].to_list()
    return ids[:count]


def record_searches(address: str, bundle: Path, users: list[int]) -> None:
    """Three searches per user, so that Scores go through the encoder too."""
    words = raw_ids(bundle, "words", 20)
    with grpc.insecure_channel(address) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        for user in users:
            for k in range(3):
                stub.RecordQuery(
                    pb.RecordQueryRequest(
                        user_id=user,
                        timestamp_ms=REQUEST_MS - 1000 * (k + 1),
                        token_ids=words[k : k + 3],
                    ),
                    timeout=30,
                )


class Calls:
    """Every call's seconds, status and degradation."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.began: list[float] = []  # perf_counter at each call's start
        self.code_of: list[str] = []
        self.codes: Counter[str] = Counter()
        self.degraded = 0

    async def score(self, stub: scorer_pb2_grpc.ScorerStub, request: pb.ScoreRequest) -> str:
        began = time.perf_counter()
        try:
            answer = await stub.Score(request, timeout=30)
            code = "OK"
            self.degraded += int(answer.degraded)
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        self.seconds.append(time.perf_counter() - began)
        self.began.append(began)
        self.code_of.append(code)
        self.codes[code] += 1
        return code


async def paused_redis(args: argparse.Namespace) -> dict[str, Any]:
    users, items = raw_ids(args.bundle, "users", 40), raw_ids(args.bundle, "items", 100)
    calls = Calls()
    windows: list[tuple[float, float]] = []  # (paused, resumed) perf_counter
    with EmbeddedRedis() as redis, tempfile.TemporaryDirectory() as scratch:
        settings = {
            "QUERYREC_BUDGET_MS": str(args.budget_ms),
            "QUERYREC_WORKERS": "1",
            "QUERYREC_ADMIN_PORT": "0",
        }
        server = ServerProcess(args.bundle, redis.url, Path(scratch) / "serve.log", settings)
        port = server.start()
        try:
            address = f"127.0.0.1:{port}"
            record_searches(address, args.bundle, users)
            stop = asyncio.Event()
            async with grpc.aio.insecure_channel(address) as channel:
                stub = scorer_pb2_grpc.ScorerStub(channel)

                async def loop(index: int) -> None:
                    count = 0
                    while not stop.is_set():
                        user = users[(index * 7 + count) % len(users)]
                        count += 1
                        request = pb.ScoreRequest(
                            user_id=user, item_ids=items, request_time_ms=REQUEST_MS
                        )
                        await calls.score(stub, request)

                loops = [asyncio.create_task(loop(i)) for i in range(args.loops)]
                for pause in range(args.pauses):
                    await asyncio.sleep(args.pause_s / 2)
                    paused_at = time.perf_counter()
                    redis.pause()
                    await asyncio.sleep(args.pause_s)
                    redis.resume()
                    windows.append((paused_at, time.perf_counter()))
                    print(f"pause {pause + 1}/{args.pauses}: {len(calls.seconds)} calls so far")
                await asyncio.sleep(args.pause_s / 2)
                stop.set()
                await asyncio.gather(*loops)
            server_side = server_histograms(server.log_path)
        finally:
            redis.resume()
            server.stop()
    limit_ms = args.budget_ms + args.margin_ms
    milliseconds = np.array(calls.seconds) * 1e3
    late = milliseconds > limit_ms
    began = np.array(calls.began)
    during = np.zeros(len(began), dtype=bool)
    for paused, resumed in windows:
        during |= (began >= paused) & (began < resumed)
    return {
        "drill": "paused_redis",
        "pauses": args.pauses,
        "pause_s": args.pause_s,
        "loops": args.loops,
        "budget_ms": args.budget_ms,
        "margin_ms": args.margin_ms,
        "calls": len(milliseconds),
        "calls_past_budget_plus_margin": int(late.sum()),
        "late_started_while_paused": int((late & during).sum()),
        "late_started_while_not_paused": int((late & ~during).sum()),
        "failed_while_paused": int(
            sum(1 for c, d in zip(calls.code_of, during, strict=True) if d and c != "OK")
        ),
        "failed_while_not_paused": int(
            sum(1 for c, d in zip(calls.code_of, during, strict=True) if not d and c != "OK")
        ),
        "p99_ms_while_not_paused": round(float(np.percentile(milliseconds[~during], 99)), 1),
        "max_ms": round(float(milliseconds.max()), 1),
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 1),
        "slowest_ms": [round(float(v), 1) for v in np.sort(milliseconds)[-10:]],
        "codes": dict(calls.codes),
        "degraded_share": round(calls.degraded / max(calls.codes["OK"], 1), 4),
        "server_side_cumulative_buckets": server_side,
    }


def server_histograms(log_path: Path) -> dict[str, Any]:
    """The server's own Score latency and Redis-stage histograms (cumulative bucket counts
    from its /metrics), to tell the server's time from the client's."""
    match = ADMIN_PORT.search(log_path.read_text())
    if match is None:
        return {}
    text = httpx.get(f"http://127.0.0.1:{match.group('port')}/metrics", timeout=30).text
    wanted = {
        "score": 'queryrec_grpc_request_duration_seconds_bucket{code="OK",method="Score"',
        "redis_stage": 'queryrec_stage_duration_seconds_bucket{stage="redis"',
    }
    found: dict[str, Any] = {name: {} for name in wanted}
    for line in text.splitlines():
        for name, prefix in wanted.items():
            if (
                line.startswith(prefix.rstrip('"').rsplit(",", 1)[0])
                and prefix.split("{")[1].split(",")[-1].rstrip('"') in line
            ):
                bound = line.split('le="')[1].split('"')[0]
                found[name][bound] = float(line.rsplit(" ", 1)[1])
    return found


async def sigterm_run(
    args: argparse.Namespace, redis_url: str, log: Path, users: list[int], items: list[int]
) -> dict[str, Any]:
    """One run: serve, load, SIGTERM, count codes until the server has exited and every
    loop has been refused (connection closed) three times after that."""
    settings = {
        "QUERYREC_WORKERS": str(args.workers),
        "QUERYREC_DRAIN_DELAY_S": str(args.drain_delay_s),
    }
    server = ServerProcess(args.bundle, redis_url, log, settings)
    port = server.start()
    calls = Calls()
    refused_after_exit: Counter[int] = Counter()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)

            async def loop(index: int) -> None:
                request = pb.ScoreRequest(
                    user_id=users[index % len(users)], item_ids=items, request_time_ms=REQUEST_MS
                )
                while refused_after_exit[index] < 3:
                    code = await calls.score(stub, request)
                    if server.poll() is not None and code == "UNAVAILABLE":
                        refused_after_exit[index] += 1

            loops = [asyncio.create_task(loop(i)) for i in range(args.loops)]
            while calls.codes["OK"] < 4 * args.loops:
                await asyncio.sleep(0.01)
            server.terminate()
            await asyncio.gather(*loops)
        exit_code = server.wait_exit(120)
    finally:
        server.stop()
    return {"codes": dict(calls.codes), "exit_code": exit_code}


async def sigterm_runs(args: argparse.Namespace) -> dict[str, Any]:
    users, items = raw_ids(args.bundle, "users", 40), raw_ids(args.bundle, "items", 100)
    runs = []
    with EmbeddedRedis() as redis, tempfile.TemporaryDirectory() as scratch:
        for run in range(args.runs):
            log = Path(scratch) / f"serve-{run}.log"
            runs.append(await sigterm_run(args, redis.url, log, users, items))
            print(f"run {run + 1}/{args.runs}: {runs[-1]}")
    total: Counter[str] = Counter()
    for run_result in runs:
        total.update(run_result["codes"])
    return {
        "drill": "sigterm",
        "runs": args.runs,
        "loops": args.loops,
        "drain_delay_s": args.drain_delay_s,
        "workers": args.workers,
        "codes": dict(total),
        "cancelled": total["CANCELLED"],
        "runs_with_cancelled": sum(1 for r in runs if r["codes"].get("CANCELLED")),
        "exit_codes": sorted({r["exit_code"] for r in runs}),
        "per_run": runs,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    drills = parser.add_subparsers(dest="drill", required=True)
    pauses = drills.add_parser("pauses", help="Redis paused under load")
    pauses.add_argument("--pauses", type=int, default=20)
    pauses.add_argument("--pause-s", type=float, default=1.5)
    pauses.add_argument("--budget-ms", type=float, default=50.0)
    pauses.add_argument("--margin-ms", type=float, default=25.0)
    sigterm = drills.add_parser("sigterm", help="SIGTERM under load")
    sigterm.add_argument("--runs", type=int, default=20)
    sigterm.add_argument("--drain-delay-s", type=float, default=5.0)
    sigterm.add_argument("--workers", type=int, default=1, help="server processes (SO_REUSEPORT)")
    for drill in (pauses, sigterm):
        drill.add_argument("--bundle", type=Path, required=True)
        drill.add_argument("--loops", type=int, default=8)
        drill.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    drill = paused_redis if args.drill == "pauses" else sigterm_runs
    result = asyncio.run(drill(args))
    out = args.out or Path(f"fault_drill_{args.drill}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    shown = {k: v for k, v in result.items() if k != "per_run"}
    print(json.dumps(shown, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
