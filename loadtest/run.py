"""The load test runner: a Locust run against the scoring service, summarised from exact times.

    python -m loadtest run [--rate 50] [--duration 20] [--target HOST:PORT] ...
    python -m loadtest soak --rate R --minutes 10

`run_load(LoadConfig(...))` is the API (loadtest/bench.py sweeps rates through it): it
writes the traffic mix of `loadtest/locustfile.py` from a prepared dataset, runs
`locust --headless` as a SUBPROCESS against `config.target` (Locust brings gevent and
monkey-patches the standard library on import: it must never be imported into this
process or into pytest's; an import-linter contract keeps it out), then reads the
locustfile's per-call exact times (Locust's own percentiles are rounded to two
significant digits) into `summary.json`:

    requests {method: calls}, failures {method: calls}, failures_total,
    failures_by_code {gRPC code: calls}, failure_examples {"method CODE": the first
    failure's details}, rps (completed calls per second of the run),
    latency_ms {method: {p50, p95, p99, p99.9, max, mean}} (exact, all completed calls),
    degraded {share, count, by_reason} (of the Score answers), duration_s, config,
    locust {returncode, csv_prefix, log, cpu_s (the load generator's CPU, start-up
    included), test_cpu_s and cpu_ms_per_call (its CPU while the test ran), totals: Locust's own final counts per RPC and
    "Aggregated", with its rounded p99, for a cross-check}, mix {users, items, queries}

Without `--target` the CLI first stands the service up the way the demo does
(`served_stack`): an embedded Redis, the state of the prepared dataset loaded into it,
`queryrec serve` on the bundle as a subprocess (admin API on a free port, no drain
delay, the Score budget equal to the load's deadline) and stops it all afterwards.

The offered rate is constant: `users` Locust users each paced by `constant_throughput`
at `rate / users` calls per second, whatever their latency (a user whose calls take
longer than its interval falls behind: the achieved `rps` then shows it).

`soak` runs one long Locust run at a fixed rate and adds the server's RSS (its whole
process tree, from /proc) over time and the Score p99 minute by minute (`soak.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from queryrec.errors import QueryRecError
from queryrec.features.bundle_format import read_manifest

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
DEFAULT_DATA = Path("demo-work/data")
DEFAULT_BUNDLE = Path("demo-work/bundle")
"""What `make demo` writes: the `small` prepared dataset and the QueryRec bundle."""
DEFAULT_OUT = Path("bench-work/loadtest")
DEFAULT_SOAK_OUT = Path("bench-work/soak")

METHODS = ("Score", "RecordQuery", "RecordClicks", "RecordSearchClicks")
PERCENTILES = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}
USER_ZIPF_S = 1.0
"""Zipf exponent of the user draw: the user of activity rank r is drawn with weight
1 / r**s (s = 1: the 1 % most active of 2,500 users get about 45 % of the calls)."""
QUERY_SAMPLE = 5000
"""Real queries (their raw word ids) sampled into the mix for RecordQuery."""
LOCUST_GRACE_S = 120.0
"""How long Locust may take beyond the run time (start-up, stopping) before it is killed."""
RUN_TIME_BACKSTOP_S = 30.0
"""Locust's own --run-time, beyond the duration the locustfile stops at (see
`locust_command`)."""
RSS_SAMPLE_S = 10.0
"""Seconds between two RSS samples of the server during a soak."""


class LoadTestError(QueryRecError):
    """The load test could not run (missing inputs, Locust crashed, nothing measured)."""


@dataclass(frozen=True)
class LoadConfig:
    """One Locust run: where to send what, how fast, for how long."""

    target: str  # HOST:PORT of a running server
    data: Path  # prepared dataset (ids for the traffic mix)
    out: Path  # folder for Locust CSVs, exact times and summary.json
    rate: float = 50.0  # offered requests/s, all RPCs together
    duration_s: float = 20.0
    users: int = 16  # Locust users
    candidates: int = 100
    budget_ms: float = 50.0  # Score deadline
    write_share: float = 0.1  # share of calls that write (searches, their clicks, clicks)
    seed: int = 0

    def check(self) -> None:
        """LoadTestError naming the first field out of range."""
        if self.rate <= 0 or not math.isfinite(self.rate):
            raise LoadTestError(f"rate must be a positive number of calls/s, got {self.rate}")
        if self.duration_s < 1:
            raise LoadTestError(f"duration_s must be at least 1 s, got {self.duration_s}")
        if self.users < 1:
            raise LoadTestError(f"users must be at least 1, got {self.users}")
        if self.candidates < 1:
            raise LoadTestError(f"candidates must be at least 1, got {self.candidates}")
        if self.budget_ms <= 0:
            raise LoadTestError(f"budget_ms must be positive, got {self.budget_ms}")
        if not 0.0 <= self.write_share <= 1.0:
            raise LoadTestError(f"write_share must lie in [0, 1], got {self.write_share}")
        if ":" not in self.target:
            raise LoadTestError(f"target must be HOST:PORT, got {self.target!r}")

    def as_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------- the mix


def write_mix(config: LoadConfig, path: Path, times_dir: Path) -> dict[str, int]:
    """Write the locustfile's mix file (ids with weights, request shape, pace) from the
    prepared dataset; -> how many users, items and queries it holds.

    Users: those `service.state.load.load_state` writes (any click or search before the
    test split, or a profile), ranked by that activity, weight 1 / rank**USER_ZIPF_S.
    Items: the catalogue's items with at least one impression in the feed timeline,
    weighted by their impressions. Queries: up to QUERY_SAMPLE real non-empty queries.
    """
    from queryrec.features.dataset import PreparedDataset

    if not config.data.is_dir():
        raise LoadTestError(
            f"{config.data}: no prepared dataset there (run `make demo`, which writes "
            "demo-work/data, or pass --data DATA_DIR)"
        )
    dataset = PreparedDataset(config.data)
    as_of = int(dataset.schema["split"]["test_start_ms"])
    user_raw, item_raw, word_raw = (dataset.raw_ids(n) for n in ("users", "items", "words"))

    def counts(index: np.ndarray, size: int) -> np.ndarray:
        return np.bincount(index.astype(np.int64), minlength=size)[:size]

    n_users = len(user_raw)
    activity = counts(dataset.click_user[dataset.click_ts < as_of], n_users) + counts(
        dataset.search_user[dataset.search_ts < as_of], n_users
    )
    profiles = pl.read_parquet(dataset.root / "features/users.parquet")
    with_profile = profiles.filter(pl.col("has_features"))["index"].to_numpy().astype(np.int64)
    loaded = activity > 0
    loaded[with_profile[with_profile < n_users]] = True
    loaded &= user_raw >= 0
    users = np.flatnonzero(loaded)
    users = users[np.lexsort((user_raw[users], -activity[users]))]  # most active first
    if len(users) == 0:
        raise LoadTestError(f"{config.data}: no user with any state to load")
    ranks = np.arange(1, len(users) + 1, dtype=np.float64)

    impressions = counts(dataset.feed_item, len(item_raw))
    items = np.flatnonzero((impressions > 0) & (item_raw >= 0))
    if len(items) == 0:
        raise LoadTestError(f"{config.data}: no item with an impression")

    rng = np.random.default_rng(config.seed)
    offsets, words = dataset.query_offsets, dataset.query_words
    non_empty = np.flatnonzero(offsets[1:] > offsets[:-1])
    picked = rng.choice(non_empty, size=min(QUERY_SAMPLE, len(non_empty)), replace=False)
    queries = []
    for session in np.sort(picked):
        raw = word_raw[words[offsets[session] : offsets[session + 1]]]
        if (raw := raw[raw >= 0]).size:
            queries.append(raw.tolist())

    mix = {
        "users": user_raw[users].tolist(),
        "user_weights": (1.0 / ranks**USER_ZIPF_S).tolist(),
        "items": item_raw[items].tolist(),
        "item_weights": impressions[items].tolist(),
        "queries": queries,
        "candidates": config.candidates,
        "budget_ms": config.budget_ms,
        "write_share": config.write_share,
        "per_user_rate": config.rate / config.users,
        "duration_s": config.duration_s,
        "seed": config.seed,
        "times_dir": str(times_dir.resolve()),
    }
    path.write_text(json.dumps(mix) + "\n")
    return {"users": len(users), "items": len(items), "queries": len(queries)}


# ---------------------------------------------------------------------------- Locust


def locust_command(config: LoadConfig, mix_path: Path, csv_prefix: Path) -> list[str]:
    """The headless Locust command line of one run (all users spawned within 1 s).

    The locustfile stops the run `duration_s` after its start by the monotonic clock;
    `--run-time` is only a backstop (RUN_TIME_BACKSTOP_S later), because Locust arms it
    against gevent's cached loop time, which can fire seconds early after a slow start.
    Besides the CSVs (rewritten once a second, so they can miss the last second), Locust
    writes its final totals to `<prefix>.json`.
    """
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--users",
        str(config.users),
        "--spawn-rate",
        str(config.users),
        "--run-time",
        f"{math.ceil(config.duration_s + RUN_TIME_BACKSTOP_S)}s",
        "--stop-timeout",
        "0",
        "--host",
        config.target,
        "--csv",
        str(csv_prefix),
        "--json-file",
        str(csv_prefix),  # Locust appends .json
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--mix-file",
        str(mix_path),
    ]


def run_locust(
    config: LoadConfig, mix_path: Path, csv_prefix: Path, log_path: Path
) -> tuple[int, float]:
    """Run Locust to completion (output to `log_path`); -> its exit code (1 when any call
    failed: the summary decides) and the CPU seconds it used (the load generator shares
    the machine with the server). LoadTestError if it hangs."""
    timeout = config.duration_s + LOCUST_GRACE_S
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w", encoding="utf-8") as log:
        try:
            done = subprocess.run(
                locust_command(config, mix_path, csv_prefix),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LoadTestError(
                f"locust did not finish within {timeout:.0f} s (log: {log_path})"
            ) from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # children waited for: Locust
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.returncode, cpu_s


def run_load(config: LoadConfig) -> dict[str, Any]:
    """Run Locust against `config.target`; -> the summary (also written to
    out/summary.json). LoadTestError when Locust could not run or measured nothing."""
    config.check()
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    times_dir = out / "times"
    shutil.rmtree(times_dir, ignore_errors=True)  # no stale calls from an earlier run
    times_dir.mkdir()
    mix_path = out / "mix.json"
    mix_counts = write_mix(config, mix_path, times_dir)
    csv_prefix = out / "locust"
    log_path = out / "locust.log"
    returncode, locust_cpu_s = run_locust(config, mix_path, csv_prefix, log_path)
    calls = read_times(times_dir)
    if returncode not in (0, 1) or not calls:
        raise LoadTestError(
            f"locust exited with code {returncode} after {len(calls)} calls\n{_tail(log_path)}"
        )
    summary = summarize(calls, read_window(times_dir), config)
    test_cpu_s = read_test_cpu_s(times_dir)
    summary["failure_examples"] = read_failure_examples(times_dir)
    summary["mix"] = mix_counts
    summary["locust"] = {
        "returncode": returncode,
        "csv_prefix": str(csv_prefix),
        "log": str(log_path),
        "cpu_s": locust_cpu_s,
        "test_cpu_s": test_cpu_s,
        "cpu_ms_per_call": None if test_cpu_s is None else test_cpu_s / len(calls) * 1e3,
        "totals": locust_totals(Path(f"{csv_prefix}.json")),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"--- last lines of {path} ---\n" + "\n".join(text[-lines:])


# ---------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Call:
    """One row of the locustfile's exact-times file."""

    start_s: float  # epoch seconds at the call's start
    method: str
    ms: float  # exact duration
    code: str  # gRPC status code name; OK on success
    degraded_reasons: tuple[str, ...]


def read_times(times_dir: Path) -> list[Call]:
    """Every call of every Locust process (one `times-<pid>.csv` each), by start time."""
    calls = []
    for path in sorted(times_dir.glob("times-*.csv")):
        with path.open(newline="", encoding="utf-8") as file:
            for row in csv.DictReader(file):
                reasons = row["degraded_reasons"]
                calls.append(
                    Call(
                        float(row["start_s"]),
                        row["method"],
                        float(row["ms"]),
                        row["code"],
                        tuple(reasons.split("|")) if reasons else (),
                    )
                )
    calls.sort(key=lambda call: call.start_s)
    return calls


def read_window(times_dir: Path) -> tuple[float, float] | None:
    """(test start, test stop) in epoch seconds over the Locust processes, if written."""
    starts, stops = [], []
    for path in times_dir.glob("meta-*.json"):
        meta = json.loads(path.read_text())
        if meta.get("test_start") is not None:
            starts.append(float(meta["test_start"]))
            stops.append(float(meta["test_stop"]))
    return (min(starts), max(stops)) if starts else None


def read_failure_examples(times_dir: Path) -> dict[str, str]:
    """The first failure's details per "method CODE" over the Locust processes."""
    examples: dict[str, str] = {}
    for path in sorted(times_dir.glob("meta-*.json")):
        for key, details in json.loads(path.read_text()).get("failure_examples", {}).items():
            examples.setdefault(str(key), str(details))
    return examples


def read_test_cpu_s(times_dir: Path) -> float | None:
    """CPU seconds the Locust processes used between test start and stop, if written."""
    values = [json.loads(p.read_text()).get("cpu_s") for p in times_dir.glob("meta-*.json")]
    known = [float(v) for v in values if v is not None]
    return sum(known) if known else None


def latency_stats(ms: Sequence[float]) -> dict[str, float]:
    """Exact percentiles (numpy's linear interpolation), max and mean of durations in ms."""
    values = np.asarray(ms, dtype=np.float64)
    stats = {name: float(np.percentile(values, q)) for name, q in PERCENTILES.items()}
    stats["max"] = float(values.max())
    stats["mean"] = float(values.mean())
    return stats


def summarize(
    calls: Sequence[Call], window: tuple[float, float] | None, config: LoadConfig
) -> dict[str, Any]:
    """The summary dict of one run (see the module docstring for its keys)."""
    requests = Counter(call.method for call in calls)
    failed = [call for call in calls if call.code != "OK"]
    failures = Counter(call.method for call in failed)
    if window is not None and window[1] > window[0]:
        duration = window[1] - window[0]
    else:  # no meta file: the span of the calls
        duration = max(calls[-1].start_s - calls[0].start_s, 1e-9)
    answered = [call for call in calls if call.method == "Score" and call.code == "OK"]
    degraded = [call for call in answered if call.degraded_reasons]
    by_reason = Counter(reason for call in degraded for reason in call.degraded_reasons)
    latency = {
        method: latency_stats([call.ms for call in calls if call.method == method])
        for method in METHODS
        if requests[method]
    }
    return {
        "requests": {method: requests[method] for method in METHODS},
        "failures": {method: failures[method] for method in METHODS},
        "failures_total": len(failed),
        "failures_by_code": dict(Counter(call.code for call in failed).most_common()),
        "rps": len(calls) / duration,
        "offered_rps": config.rate,
        "latency_ms": latency,
        "degraded": {
            "share": len(degraded) / len(answered) if answered else 0.0,
            "count": len(degraded),
            "by_reason": dict(by_reason.most_common()),
        },
        "duration_s": duration,
        "config": config.as_json(),
    }


def locust_totals(json_file: Path) -> dict[str, dict[str, float]]:
    """Locust's own final totals per RPC and "Aggregated" (calls, failures, its rounded
    p99 in ms), from its --json-file, to cross-check the exact numbers; {} when absent."""
    if not json_file.is_file():
        return {}
    totals: dict[str, dict[str, float]] = {}
    all_calls = all_failures = 0
    for entry in json.loads(json_file.read_text()):
        calls, failures = int(entry["num_requests"]), int(entry["num_failures"])
        times = {float(ms): int(n) for ms, n in entry.get("response_times", {}).items()}
        totals[str(entry["name"])] = {
            "requests": calls,
            "failures": failures,
            "p99_ms_rounded": _bucket_percentile(times, 0.99),
        }
        all_calls += calls
        all_failures += failures
    totals["Aggregated"] = {"requests": all_calls, "failures": all_failures}
    return totals


def _bucket_percentile(counts: dict[float, int], q: float) -> float:
    """Percentile `q` of Locust's rounded response-time histogram {ms: calls}."""
    total = sum(counts.values())
    if total == 0:
        return math.nan
    seen = 0
    for ms in sorted(counts):
        seen += counts[ms]
        if seen >= q * total:
            return ms
    return max(counts)


def verdict(summary: dict[str, Any], max_p99_ms: float | None) -> list[str]:
    """Why the run fails its bounds: failures > 0, Score p99 above `max_p99_ms`."""
    problems = []
    if summary["failures_total"] > 0:
        problems.append(f"{summary['failures_total']} failed calls {summary['failures_by_code']}")
    score = summary["latency_ms"].get("Score")
    if score is None:
        problems.append("no Score call completed")
    elif max_p99_ms is not None and score["p99"] > max_p99_ms:
        problems.append(f"Score p99 {score['p99']:.2f} ms > --max-p99-ms {max_p99_ms:g}")
    return problems


# ---------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class ServedStack:
    """A running server over an embedded Redis that holds the dataset's state."""

    target: str
    server_pid: int
    redis_url: str


@contextlib.contextmanager
def served_stack(
    data: Path, bundle: Path, budget_ms: float, log_path: Path
) -> Iterator[ServedStack]:
    """Embedded Redis, the state of `data` loaded into it (capped at the bundle's history
    lengths), `queryrec serve` on `bundle` with QUERYREC_BUDGET_MS = `budget_ms` (admin
    port 0, no drain delay: ServerProcess's settings); everything stops on exit."""
    from clients.launcher import ServerProcess
    from queryrec.features.dataset import PreparedDataset
    from service.state.embedded_redis import EmbeddedRedis
    from service.state.load import load_state

    for folder, what in ((data, "prepared dataset"), (bundle, "model bundle")):
        if not folder.is_dir():
            raise LoadTestError(
                f"{folder}: no {what} there (run `make demo`, which writes demo-work/data "
                "and demo-work/bundle, or pass --data / --bundle, or --target HOST:PORT "
                "to load a running server)"
            )
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise LoadTestError(f"{manifest_path}: not found (is {bundle} a `queryrec export` bundle?)")
    lengths = read_manifest(bundle)["max_lengths"]
    dataset = PreparedDataset(data)
    with EmbeddedRedis() as redis_server:
        report = load_state(
            dataset,
            redis_server.url,
            query_cap=int(lengths["query_history"]),
            click_cap=int(lengths["click_history"]),
            progress=False,
        )
        print(
            f"state: {report.users:,} users loaded in {report.seconds:.1f} s "
            f"into the embedded Redis at {redis_server.url}",
            file=sys.stderr,
        )
        server = ServerProcess(
            bundle, redis_server.url, log_path, {"QUERYREC_BUDGET_MS": f"{budget_ms:g}"}
        )
        try:
            port = server.start()
            print(f"server: pid {server.pid} on 127.0.0.1:{port} (log {log_path})", file=sys.stderr)
            yield ServedStack(f"127.0.0.1:{port}", server.pid, redis_server.url)
        finally:
            server.stop()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_rss_kb(pid: int) -> int:
    """Resident set size (VmRSS, KiB) of `pid` and its descendants together."""
    total = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


# ---------------------------------------------------------------------------- soak


def run_soak(config: LoadConfig, server_pid: int | None) -> dict[str, Any]:
    """One long run at `config.rate`: the run's summary plus the server's RSS (sampled
    every RSS_SAMPLE_S while it runs, when its pid is known) and per-minute Score p99,
    calls and failures; also written to out/soak.json."""
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        began = time.monotonic()
        while True:
            if server_pid is not None:
                samples.append((time.monotonic() - began, tree_rss_kb(server_pid)))
            if stop.wait(RSS_SAMPLE_S):
                break

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    try:
        summary = run_load(config)
    finally:
        stop.set()
        sampler.join()
    calls = read_times(config.out / "times")
    window = read_window(config.out / "times")
    t0 = window[0] if window is not None else calls[0].start_s
    minutes = max(1, math.ceil(config.duration_s / 60))
    per_minute = []
    for minute in range(minutes):
        inside = [c for c in calls if minute <= (c.start_s - t0) / 60 < minute + 1]
        if minute == minutes - 1:  # the last minute keeps the stragglers
            inside = [c for c in calls if (c.start_s - t0) / 60 >= minute]
        scores = [c.ms for c in inside if c.method == "Score"]
        per_minute.append(
            {
                "minute": minute + 1,
                "requests": len(inside),
                "failures": sum(c.code != "OK" for c in inside),
                "score_p50_ms": float(np.percentile(scores, 50)) if scores else None,
                "score_p99_ms": float(np.percentile(scores, 99)) if scores else None,
            }
        )
    rss: dict[str, Any] = {"pid": server_pid, "samples": [[round(t, 1), kb] for t, kb in samples]}
    if samples:
        rss |= {
            "start_kb": samples[0][1],
            "end_kb": samples[-1][1],
            "max_kb": max(kb for _, kb in samples),
            "growth_kb": samples[-1][1] - samples[0][1],
        }
    soak = {
        "rate": config.rate,
        "minutes": config.duration_s / 60,
        "failures_total": summary["failures_total"],
        "rss": rss,
        "per_minute": per_minute,
        "summary": summary,
    }
    (config.out / "soak.json").write_text(json.dumps(soak, indent=2) + "\n")
    return soak


SOAK_SHARE = 0.7
"""The share of the bench's maximum a soak from `--from-bench` runs at (the issue's 70 %)."""


def rate_from_bench(path: Path) -> float:
    """The rate to soak at from a bench result file: its top-level "max_rate" (the highest
    offered rate that met the bench's bounds)."""
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LoadTestError(f"{path}: cannot read a bench result ({error})") from None
    rate = body.get("max_rate") if isinstance(body, dict) else None
    if not isinstance(rate, int | float) or rate <= 0:
        raise LoadTestError(f'{path}: no positive top-level "max_rate"; pass --rate R')
    return float(rate)


def soak_rate(bench: Path, share: float = SOAK_SHARE) -> float:
    """`share` of the bench's maximum, the rate a soak from `--from-bench` runs at."""
    if not 0 < share <= 1:
        raise LoadTestError(f"--share must be in (0, 1], not {share}")
    return round(share * rate_from_bench(bench), 1)


# ---------------------------------------------------------------------------- CLI


def _add_common(parser: argparse.ArgumentParser, out: Path) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared dataset")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle")
    parser.add_argument(
        "--target", help="HOST:PORT of a running server: start nothing, only load it"
    )
    parser.add_argument("--out", type=Path, default=out, help="results folder")
    parser.add_argument("--users", type=int, default=16, help="Locust users")
    parser.add_argument("--candidates", type=int, default=100, help="items per Score")
    parser.add_argument("--budget-ms", type=float, default=50.0, help="Score deadline")
    parser.add_argument("--write-share", type=float, default=0.1, help="share of write calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-p99-ms", type=float, help="fail when Score p99 exceeds this")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="one Locust run, summary.json")
    _add_common(run, DEFAULT_OUT)
    run.add_argument("--rate", type=float, default=50.0, help="offered calls/s, all RPCs")
    run.add_argument("--duration", type=float, default=20.0, help="seconds")
    soak = commands.add_parser("soak", help="a long run: RSS and p99 per minute, soak.json")
    _add_common(soak, DEFAULT_SOAK_OUT)
    soak.add_argument("--rate", type=float, help="offered calls/s (else from --from-bench)")
    soak.add_argument("--from-bench", type=Path, help="bench result JSON with max_rate")
    soak.add_argument(
        "--share",
        type=float,
        default=SOAK_SHARE,
        help="share of the bench's max_rate to soak at (with --from-bench)",
    )
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--server-pid", type=int, help="with --target: the server's pid, for its RSS")
    return parser.parse_args(argv)


def _print_summary(summary: dict[str, Any]) -> None:
    score = summary["latency_ms"].get("Score", {})
    requests = ", ".join(f"{m} {n}" for m, n in summary["requests"].items())
    print(
        f"{summary['rps']:.1f} calls/s over {summary['duration_s']:.1f} s ({requests}); "
        f"failures {summary['failures_total']}; degraded {summary['degraded']['share']:.2%} "
        f"{summary['degraded']['by_reason']}"
    )
    if score:
        print("Score ms: " + ", ".join(f"{k} {score[k]:.2f}" for k in (*PERCENTILES, "max")))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry (`python -m loadtest`): 0 when within bounds, 1 when not, 2 when it could
    not run."""
    args = parse_args(argv)
    try:
        rate = args.rate
        if args.command == "soak" and rate is None:
            if args.from_bench is None:
                raise LoadTestError("soak needs --rate R or --from-bench FILE")
            rate = soak_rate(args.from_bench, args.share)
        duration = args.duration if args.command == "run" else args.minutes * 60
        with contextlib.ExitStack() as stack:
            server_pid = getattr(args, "server_pid", None)
            target = args.target
            if target is None:
                args.out.mkdir(parents=True, exist_ok=True)
                served = stack.enter_context(
                    served_stack(args.data, args.bundle, args.budget_ms, args.out / "serve.log")
                )
                target, server_pid = served.target, served.server_pid
            config = LoadConfig(
                target=target,
                data=args.data,
                out=args.out,
                rate=rate,
                duration_s=duration,
                users=args.users,
                candidates=args.candidates,
                budget_ms=args.budget_ms,
                write_share=args.write_share,
                seed=args.seed,
            )
            if args.command == "soak":
                soak = run_soak(config, server_pid)
                summary = soak["summary"]
                rss = soak["rss"]
                if "start_kb" in rss:
                    print(f"server RSS {rss['start_kb']:,} -> {rss['end_kb']:,} KiB")
                for row in soak["per_minute"]:
                    p99 = row["score_p99_ms"]
                    print(
                        f"minute {row['minute']}: {row['requests']} calls, "
                        f"{row['failures']} failures, Score p99 "
                        + ("-" if p99 is None else f"{p99:.2f} ms")
                    )
                written = config.out / "soak.json"
            else:
                summary = run_load(config)
                written = config.out / "summary.json"
    except QueryRecError as error:
        print(f"loadtest: {error}", file=sys.stderr)
        return 2
    _print_summary(summary)
    print(f"wrote {written}")
    problems = verdict(summary, args.max_p99_ms)
    for problem in problems:
        print(f"loadtest: FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0
