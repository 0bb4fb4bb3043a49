"""Memory across model reloads: RSS of `queryrec serve` after each `POST /v1/model/reload`.

    python benchmarks/reload_memory.py --bundle BUNDLE_DIR [--reloads 50] [--rate 50]
        [--out FILE] [--env NAME=VALUE ...]

`queryrec serve` runs as a subprocess (one worker, an embedded Redis, the admin API on a
free loopback port); a client thread keeps a light load on it (RecordQuery for a few
users, then Score calls at `--rate` per second, so both graphs run). The script posts
`--reloads` reloads of the bundle's own folder one after the other and prints the
server's resident memory (VmRSS from /proc/<pid>/status) after each one answered, then
the ratio RSS(after the last reload) / RSS(after the first). The target is a ratio of
at most 1.2 (README "Operations", "Reload and shutdown"). RSS is read as soon as a
reload answers, when the old model may still be retiring, so single values move by a
few tens of MB (the peak is reported too). `--env` passes extra
QUERYREC_* (or MALLOC_*) variables to the server, to compare settings.

Results go to a JSON file (default `reload_memory.json` in the current folder): the RSS
series in MB, the ratio, the settings and the Score calls answered during the run.
Any bundle works; a small one shows the growth best (the model itself adds little).
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import polars as pl

from clients.launcher import ServerProcess
from service.api import scorer_pb2, scorer_pb2_grpc
from service.state.embedded_redis import EmbeddedRedis

REQUEST_MS = 1_700_000_000_000
ADMIN_PORT = re.compile(r"admin on port (?P<port>\d+)")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS, Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class LightLoad:
    """A client thread: a few users with searches, then Score calls at `rate` per second
    until stopped (the reloads happen under it)."""

    def __init__(self, target: str, bundle: Path, rate: float) -> None:
        self.target, self.rate = target, rate
        self.users = pl.read_parquet(bundle / "maps/users.parquet")["raw_id"].to_list()[:8]
        self.items = pl.read_parquet(bundle / "maps/items.parquet")["raw_id"].to_list()[:20]
        self.words = pl.read_parquet(bundle / "maps/words.parquet")["raw_id"].to_list()[:20]
        self.answered = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="light-load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            for n, user in enumerate(self.users):
                stub.RecordQuery(
                    scorer_pb2.RecordQueryRequest(
                        user_id=user,
                        token_ids=self.words[n % 5 : n % 5 + 3],
                        timestamp_ms=REQUEST_MS - 60_000,
                    ),
                    timeout=10,
                )
            n = 0
            while not self._stop.wait(1.0 / self.rate):
                user = self.users[n % len(self.users)]
                items = self.items[n % 7 : n % 7 + 10]
                n += 1
                try:
                    stub.Score(
                        scorer_pb2.ScoreRequest(
                            user_id=user, item_ids=items, request_time_ms=REQUEST_MS
                        ),
                        timeout=10,
                    )
                    self.answered += 1
                except grpc.RpcError:
                    self.failed += 1


def admin_port(server: ServerProcess) -> int:
    """The admin port from the server's listening line."""
    match = ADMIN_PORT.search(server.tail())
    if match is None:
        raise RuntimeError(f"no admin port in the server's output\n{server.tail()}")
    return int(match.group("port"))


def measure(
    bundle: Path, reloads: int, rate: float, env: dict[str, str], log: Path
) -> dict[str, Any]:
    """Start the server, reload it `reloads` times under light load; -> the numbers."""
    with EmbeddedRedis() as redis:
        settings = {"QUERYREC_WORKERS": "1", "QUERYREC_BUDGET_MS": "1000", **env}
        server = ServerProcess(bundle, redis.url, log, settings)
        port = server.start()
        try:
            load = LightLoad(f"127.0.0.1:{port}", bundle, rate)
            load.start()
            started = rss_mb(server.pid)
            series: list[float] = []
            seconds: list[float] = []
            with httpx.Client(base_url=f"http://127.0.0.1:{admin_port(server)}", timeout=120) as c:
                for n in range(1, reloads + 1):
                    began = time.perf_counter()
                    answer = c.post("/v1/model/reload")
                    if answer.status_code != 200:
                        raise RuntimeError(f"reload {n}: {answer.status_code} {answer.text}")
                    seconds.append(time.perf_counter() - began)
                    series.append(rss_mb(server.pid))
                    print(f"reload {n:3d}: RSS {series[-1]:7.1f} MB", flush=True)
            load.stop()
        finally:
            server.stop()
    return {
        "bundle": str(bundle),
        "reloads": reloads,
        "rate_per_s": rate,
        "env": env,
        "rss_mb_at_start": round(started, 1),
        "rss_mb_after_reload": [round(value, 1) for value in series],
        "ratio_last_to_first": round(series[-1] / series[0], 3),
        "rss_mb_peak": round(max(series), 1),
        "reload_seconds_median": round(sorted(seconds)[len(seconds) // 2], 3),
        "scores_answered": load.answered,
        "scores_failed": load.failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--reloads", type=int, default=50)
    parser.add_argument("--rate", type=float, default=50.0, help="Score calls per second")
    parser.add_argument("--out", type=Path, default=Path("reload_memory.json"))
    parser.add_argument("--log", type=Path, default=Path("reload_memory.log"))
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the server (repeatable)"
    )
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    result = measure(args.bundle, args.reloads, args.rate, env, args.log)
    series = result["rss_mb_after_reload"]
    print(
        f"RSS at start {result['rss_mb_at_start']} MB; after reload 1: {series[0]} MB, "
        f"10: {series[min(9, len(series) - 1)]} MB, {len(series)}: {series[-1]} MB, "
        f"peak {result['rss_mb_peak']} MB; "
        f"ratio {result['ratio_last_to_first']} (target <= 1.2); "
        f"{result['scores_answered']} Score calls answered, {result['scores_failed']} failed"
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
