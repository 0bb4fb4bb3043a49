"""The side-by-side serving benchmark: the highest sustained rate of each server, one run.

    python -m loadtest.bench --bundle BUNDLE [--data DATA] [--run RUN_DIR]
        [--servers echo,naive-onnx,...] [--candidates 20,100,500] [--out DIR]

Every server gets the same machine, bundle, state and request stream (`loadtest.run`'s
Locust mix, same seed) in one run:

| server | what runs |
|---|---|
| `echo` | `loadtest.reference_servers` echo: the bare transport, constant scores |
| `naive-onnx` | Redis read, features, encoder + CTR in ONNX Runtime, inline, one at a time |
| `naive-torch` | the same in PyTorch eager (needs `--run`, the trained run) |
| `service` | `queryrec serve` with its defaults |
| `service-1-worker` | the same with QUERYREC_WORKERS=1 (ignored by a server without workers) |
| `service-threads` | QUERYREC_INFERENCE_ON=thread: model calls in worker threads, off the loop |
| `service-no-cache` | QUERYREC_CACHE_QUERY_REPR=false: every request with queries encodes |
| `service-no-batching` | QUERYREC_ENCODER_MAX_BATCH=1, QUERYREC_CTR_MAX_PAIRS=candidates |

For each server and candidate count: one embedded Redis, emptied (FLUSHALL, also of
cached query vectors) and loaded with the dataset's state (`service.state.load`) before
the server starts, so that no server sees another's writes or cache; the server starts;
a short warm-up run (discarded); then steps of `loadtest.run.run_load` at a constant
offered rate: doubling from `--start-rate` until a step fails the pass rule
(`loadtest.report.step_verdict`: Score p99 <= budget, no failed call, the rate delivered,
no degraded answers beyond the allowed share; a failing step is run once more and the
rate passes if the repeat does, since on a shared box one descheduled process makes a
single late call; both runs are kept, the repeat with `repeat: true`; `--repeats 0`
turns this off), then `--bisect` bisections between the
highest passing and the lowest failing rate (if the first step fails, halving down to
`--min-rate` first). Locust users per step: max(`--users`, rate x budget), so that a
server answering within the budget can be offered the rate (each user is paced at
rate / users calls per second). Per step, the server's process-tree CPU (user + system,
/proc, the server and any worker processes) over the step, and for `queryrec serve` its
/metrics stage durations (queryrec_stage_duration_seconds sums) before and after.

The floor per request (MEASURED.md), per candidate count: transport (the echo server's
lowest CPU per call over its passing steps) + the Redis read and feature building
(`RedisState.read` + `FeatureBuilder.user_row` + both feeds, measured in this process
over sampled users of the loaded state) + the model's matrix-multiply FLOPs over numpy's
single-thread float32 matmul rate measured in the same run. The FLOPs are counted from
the bundle's graphs, not estimated: every MatMul and Gemm input is made a graph output,
the graphs run once in ONNX Runtime on one user with a full history (every query and click
slot) and the candidates, and each product's 2*M*K*N (times its broadcast batch) is
summed; element-wise work, gathers and softmax are left out, so this is a lower bound.

results.json (schema 1):
    schema, created, machine {cpus, platform, python},
    config {data, bundle, run, servers, candidates, duration_s, warmup_s, users,
        start_rate, max_rate, min_rate, bisect, write_share, seed, budget_ms,
        min_delivered, max_degraded_share},
    max_rate: the service's (defaults) highest passing rate at the first candidate
        count (what `loadtest.run soak` reads); max_rate_of {server, candidates},
    floor {matmul_gflops, by_candidates {"N": {encoder_flops, ctr_flops, model_ms,
        state_ms, transport_ms, floor_ms}}},
    runs [{server, candidates, settings (QUERYREC_* of the server), log, skipped?,
        error?, steps [{rate, users, duration_s, wall_s, summary (run_load's),
        server_cpu_s, cpu_ms_per_request, stages_s {stage: seconds} | null,
        passed, why, error?}], max {rate, rps, p99_ms, cpu_ms_per_request} | null}].
`python -m loadtest.report results.json --out DIR` turns it into a table and plots.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.report import Rule, cpu_ms_per_request, max_step, score_p99_ms, step_verdict
from queryrec.features.bundle_format import read_manifest

REFERENCE_KINDS = ("echo", "naive-onnx", "naive-torch")
SERVICE_VARIANTS = (
    "service",
    "service-1-worker",
    "service-threads",
    "service-no-cache",
    "service-no-batching",
)
SERVERS = ("echo", "naive-onnx", "naive-torch", *SERVICE_VARIANTS)
STAGE_METRIC = "queryrec_stage_duration_seconds"
FLOOR_USERS = 300
"""Users sampled for the in-process Redis read + features measurement of the floor."""
MATMUL_SIZE = 512
"""Side of the square float32 matrices of the matmul-rate measurement (large enough for
OpenBLAS's peak: the floor is a best case)."""


# ---------------------------------------------------------------------------- servers


def service_settings(server: str, candidates: int) -> dict[str, str]:
    """QUERYREC_* variables of a `queryrec serve` variant (on top of the defaults)."""
    from service.settings import ServiceSettings

    fields = ServiceSettings.model_fields
    base = {
        # the production defaults: ServerProcess (the demo's launcher) raises the budget
        "QUERYREC_BUDGET_MS": f"{fields['budget_ms'].default:g}",
        "QUERYREC_ADMIN_PORT": str(free_port()),
    }
    extra = {
        "service": {},
        "service-1-worker": {"QUERYREC_WORKERS": "1"},
        "service-threads": {"QUERYREC_INFERENCE_ON": "thread"},
        "service-no-cache": {"QUERYREC_CACHE_QUERY_REPR": "false"},
        "service-no-batching": {
            "QUERYREC_ENCODER_MAX_BATCH": "1",
            "QUERYREC_CTR_MAX_PAIRS": str(candidates),
        },
    }[server]
    return base | extra


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RunningServer:
    """A started server: where to send load, whose CPU to count, where its metrics are."""

    target: str
    pid: int
    admin_port: int | None
    settings: dict[str, str]
    log: Path


@contextmanager
def started(
    server: str,
    candidates: int,
    bundle: Path,
    redis_url: str,
    run_dir: Path | None,
    data: Path,
    log: Path,
    settings: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """Start `server`, yield it, always stop it. `settings`: QUERYREC_* on top of a
    service variant's own (`service_settings`)."""
    from clients.launcher import ServerProcess
    from loadtest.reference_servers import ReferenceServerProcess

    if server in REFERENCE_KINDS:
        process = ReferenceServerProcess(
            server,
            log,
            bundle_dir=bundle,
            redis_url=redis_url,
            run_dir=run_dir,
            data_dir=data if server == "naive-torch" else None,
        )
        try:
            port = process.start()
            yield RunningServer(f"127.0.0.1:{port}", process.pid, None, {}, log)
        finally:
            process.stop()
        return
    env = service_settings(server, candidates) | (settings or {})
    service = ServerProcess(bundle, redis_url, log, env)
    try:
        port = service.start()
        yield RunningServer(
            f"127.0.0.1:{port}", service.pid, int(env["QUERYREC_ADMIN_PORT"]), env, log
        )
    finally:
        service.stop()


# ---------------------------------------------------------------------------- measuring


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and every descendant (Linux /proc), including
    the CPU of children they have already reaped (cutime, cstime)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process has gone meanwhile
            continue
        member = int(stat.parent.name)
        parents[member] = int(fields[1])
        cpu[member] = sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(cpu.get(member, 0.0) for member in tree)


def stage_sums(admin_port: int | None) -> dict[str, float] | None:
    """Seconds summed per stage of queryrec_stage_duration_seconds from the admin
    /metrics (None: no admin port or no answer)."""
    if admin_port is None:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != STAGE_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{STAGE_METRIC}_sum":
                sums[sample.labels["stage"]] = float(sample.value)
    return sums


def matmul_gflops(size: int = MATMUL_SIZE, seconds: float = 0.5) -> float:
    """numpy's float32 matmul rate on one thread, GFLOP/s (the best of a few rounds)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    best = 0.0
    with threadpool_limits(limits=1):
        a @ b  # the first call allocates and sets up
        for _ in range(5):
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds / 5:
                a @ b
                calls += 1
            best = max(best, 2 * size**3 * calls / elapsed / 1e9)
    return best


def matmul_flops(graph: Path, feed: dict[str, np.ndarray]) -> int:
    """2*M*K*N summed over every MatMul and Gemm of `graph` (times broadcast batch
    dimensions) for `feed`: the operands' shapes are read from one ONNX Runtime run of
    the graph with every operand added as an output."""
    import onnx
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.load(str(graph)))
    constant = {init.name: list(init.dims) for init in model.graph.initializer}
    typed = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    outputs = {o.name for o in model.graph.output}
    products = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    wanted: list[str] = []
    for node in products:
        for name in node.input[:2]:
            if name not in constant and name not in outputs and name not in wanted:
                wanted.append(name)
                elem = typed.get(name, onnx.TensorProto.FLOAT)
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, feed), strict=True))
    shapes = {name: list(np.shape(value)) for name, value in values.items()} | constant
    total = 0
    for node in products:
        a, b = (list(shapes[name]) for name in node.input[:2])
        if node.op_type == "Gemm":
            attrs = {attr.name: attr.i for attr in node.attribute}
            m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
            n = b[0] if attrs.get("transB") else b[1]
            total += 2 * m * k * n
            continue
        a = [1, *a] if len(a) == 1 else a
        b = [*b, 1] if len(b) == 1 else b
        batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
        total += 2 * math.prod(batch) * a[-2] * a[-1] * b[-1]
    return int(total)


def full_history_feeds(
    bundle_dir: Path, candidates: int
) -> tuple[dict[str, np.ndarray] | None, dict[str, np.ndarray]]:
    """(encoder feed, CTR feed) of one user with every query and click slot filled (and,
    for a bundle that reads them, every search's clicked results) and `candidates`
    candidates, built by the service's feature path (`service.inference.features.inline_feeds`)."""
    from service.inference.bundle_loader import load_bundle
    from service.inference.features import FeatureBuilder, inline_feeds
    from service.state.store import UserState

    bundle = load_bundle(bundle_dir, device="cpu", threads=1)
    features = FeatureBuilder.for_bundle(bundle)
    lengths = features.lengths
    at = 1_700_000_000_000
    words = np.resize(bundle.words.raw, lengths.queries * lengths.tokens)
    per_search = lengths.clicks_per_query
    state = UserState(
        query_ts=at - 60_000 * np.arange(1, lengths.queries + 1, dtype=np.int64),
        query_sizes=np.full(lengths.queries, lengths.tokens, dtype=np.int64),
        query_words=words,
        query_click_sizes=np.full(lengths.queries, per_search, dtype=np.int64),
        query_click_items=np.resize(bundle.items.raw, lengths.queries * per_search),
        click_ts=at - 1000 * np.arange(1, lengths.clicks + 1, dtype=np.int64),
        click_items=np.resize(bundle.items.raw, lengths.clicks),
    )
    user = int(bundle.users.raw[0]) if len(bundle.users) else 1
    row = features.user_row(user, state, at)
    items = bundle.items(np.resize(bundle.items.raw, candidates))
    return inline_feeds(features, bundle.encoder, encoder_outputs(bundle), [row], [items])


def encoder_outputs(bundle: Any) -> list[str]:
    """The bundle's encoder outputs, in order ([]: no encoder graph)."""
    graphs = bundle.manifest["graphs"]
    return list(graphs["query_encoder"]["outputs"]) if "query_encoder" in graphs else []


def model_flops(bundle_dir: Path, candidates: int) -> dict[str, int]:
    """Matmul FLOPs of one Score with a full history: {"encoder_flops", "ctr_flops"}."""
    from queryrec.features.bundle_format import CTR_FILE, ENCODER_FILE

    encoder_feed, ctr_feed = full_history_feeds(bundle_dir, candidates)
    encoder = 0 if encoder_feed is None else matmul_flops(bundle_dir / ENCODER_FILE, encoder_feed)
    return {"encoder_flops": encoder, "ctr_flops": matmul_flops(bundle_dir / CTR_FILE, ctr_feed)}


def state_ms(bundle_dir: Path, redis_url: str, candidates: int, users: int = FLOOR_USERS) -> float:
    """CPU ms per request of the Redis read and feature building, in this process: for
    sampled users of the bundle, `RedisState.read` (one pipelined round trip, no cached
    vector), `FeatureBuilder.user_row` and both graph feeds (the encoder's outputs stood
    in by zeros of their shapes: the graphs' own time is not counted here)."""
    from service.inference.bundle_loader import load_bundle
    from service.inference.features import FeatureBuilder, split_encoded
    from service.state.by_url import open_state
    from service.state.store import HistoryCaps

    bundle = load_bundle(bundle_dir, device="cpu", threads=1)
    features = FeatureBuilder.for_bundle(bundle)
    lengths = bundle.manifest["max_lengths"]
    caps = HistoryCaps(int(lengths["query_history"]), int(lengths["click_history"]), 3600)
    rng = np.random.default_rng(0)
    sample = rng.choice(bundle.users.raw, size=min(users, len(bundle.users)), replace=False)
    items = bundle.items(rng.choice(bundle.items.raw, size=candidates))
    names = encoder_outputs(bundle)
    d = 0 if bundle.encoder is None else int(bundle.encoder.get_outputs()[0].shape[1])
    at = int(time.time() * 1000)

    async def one_pass() -> None:
        state = open_state(redis_url, caps)
        try:
            for user in sample.tolist():
                (one,) = await state.read([user], None)
                row = features.user_row(user, one, at)
                encoded = None
                if names:
                    feed = features.encoder_feed([row])
                    slots = feed["query_age"].shape[1]
                    zeros = [
                        np.zeros((1, slots, d) if name == "query_states" else (1, d), np.float32)
                        for name in names
                    ]
                    encoded = split_encoded(zeros, names, [row])
                features.ctr_feed([row], encoded, [items])
        finally:
            await state.close()

    asyncio.run(one_pass())  # connections, first-call costs
    start = time.process_time()
    asyncio.run(one_pass())
    return (time.process_time() - start) / len(sample) * 1e3


# ---------------------------------------------------------------------------- the sweep


@dataclass(frozen=True)
class SweepConfig:
    """How the rates are stepped and judged (see the module docstring)."""

    duration_s: float = 20.0
    warmup_s: float = 5.0
    users: int = 16
    start_rate: float = 50.0
    max_rate: float = 6400.0
    min_rate: float = 5.0
    bisect: int = 2
    repeats: int = 1  # runs more of a failing step before the rate counts as failed
    write_share: float = 0.1
    seed: int = 0
    rule: Rule = field(default_factory=Rule)

    def users_for(self, rate: float) -> int:
        """Locust users of a step: enough that latency within the budget lets every
        user keep its pace (rate / users calls per second)."""
        return max(self.users, math.ceil(rate * self.rule.budget_ms / 1e3))


def rate_plan(passes: Callable[[float], bool], config: SweepConfig) -> Iterator[tuple[float, bool]]:
    """Step rates: double from the start until a step fails (halve until one passes if
    the first fails), then `bisect` bisections; yields (rate, passed) as it goes.
    `passes(rate)` runs one step."""
    lowest_fail: float | None = None
    highest_pass: float | None = None
    rate = config.start_rate
    bisections = 0
    while True:
        passed = passes(rate)
        yield rate, passed
        if passed:
            highest_pass = rate
        else:
            lowest_fail = rate
        if lowest_fail is None:
            rate *= 2
            if rate > config.max_rate:
                return
        elif highest_pass is None:
            rate = math.floor(rate / 2)
            if rate < config.min_rate:
                return
        else:
            if bisections >= config.bisect:
                return
            rate = round((highest_pass + lowest_fail) / 2)
            if rate in (highest_pass, lowest_fail):
                return
            bisections += 1


def run_step(
    server: RunningServer,
    rate: float,
    duration_s: float,
    users: int,
    candidates: int,
    data: Path,
    out: Path,
    config: SweepConfig,
) -> dict[str, Any]:
    """One constant-rate load step; -> the step record (see the module docstring)."""
    from loadtest.run import LoadConfig, run_load

    load = LoadConfig(
        target=server.target,
        data=data,
        out=out,
        rate=rate,
        duration_s=duration_s,
        users=users,
        candidates=candidates,
        budget_ms=config.rule.budget_ms,
        write_share=config.write_share,
        seed=config.seed,
    )
    step: dict[str, Any] = {"rate": rate, "users": users, "duration_s": duration_s}
    stages_before = stage_sums(server.admin_port)
    cpu_before, began = tree_cpu_s(server.pid), time.monotonic()
    try:
        step["summary"] = run_load(load)
    except Exception as error:  # a crashed server or load generator: recorded, sweep ends
        step["error"] = (
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        )
    step["wall_s"] = time.monotonic() - began
    step["server_cpu_s"] = tree_cpu_s(server.pid) - cpu_before
    stages_after = stage_sums(server.admin_port)
    step["stages_s"] = None
    if stages_before is not None and stages_after is not None:
        step["stages_s"] = {k: v - stages_before.get(k, 0.0) for k, v in stages_after.items()}
    step["cpu_ms_per_request"] = cpu_ms_per_request(step) if "summary" in step else None
    step["passed"], step["why"] = step_verdict(step, config.rule)
    return step


def sweep(
    server_name: str,
    candidates: int,
    running: RunningServer,
    data: Path,
    out: Path,
    config: SweepConfig,
) -> list[dict[str, Any]]:
    """Warm up, then the rate plan; -> the step records, in the order they ran."""
    tag = f"{server_name}-c{candidates}"
    if config.warmup_s > 0:
        rate = min(config.start_rate, 20.0)
        warmup = out / "steps" / f"{tag}-warmup"
        run_step(running, rate, config.warmup_s, config.users, candidates, data, warmup, config)
    steps: list[dict[str, Any]] = []

    def run_once(rate: float, repeat: int) -> dict[str, Any]:
        folder = out / "steps" / (f"{tag}-r{rate:g}" + (f"-repeat{repeat}" if repeat else ""))
        users = config.users_for(rate)
        step = run_step(running, rate, config.duration_s, users, candidates, data, folder, config)
        if repeat:
            step["repeat"] = True
        steps.append(step)
        p99 = score_p99_ms(step)
        say(
            f"{tag}: {rate:g} req/s offered{' (repeat)' if repeat else ''}, "
            f"{step.get('summary', {}).get('rps', 0):.0f} delivered, p99 "
            f"{'-' if p99 is None else f'{p99:.1f}'} ms, "
            f"{step['cpu_ms_per_request'] or 0:.2f} ms CPU/request: {step['why']}"
        )
        return step

    def passes(rate: float) -> bool:
        for repeat in range(config.repeats + 1):
            step = run_once(rate, repeat)
            if "error" in step:
                return False
            if step["passed"]:
                return True
        return False

    for _ in rate_plan(passes, config):
        if steps and "error" in steps[-1]:
            break
    return steps


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def summarize_max(steps: list[dict[str, Any]], rule: Rule) -> dict[str, Any] | None:
    """The highest passing step's rate, delivered rate, p99 and CPU per request."""
    best = max_step(steps, rule)
    if best is None:
        return None
    return {
        "rate": best["rate"],
        "rps": best["summary"]["rps"],
        "p99_ms": score_p99_ms(best),
        "cpu_ms_per_request": best["cpu_ms_per_request"],
    }


def floor(
    runs: list[dict[str, Any]], per_candidates: dict[int, dict[str, float]], gflops: float
) -> dict[str, Any]:
    """The floor per request of each candidate count (see the module docstring)."""
    by_candidates: dict[str, dict[str, Any]] = {}
    for candidates, parts in per_candidates.items():
        echo = [
            s["cpu_ms_per_request"]
            for r in runs
            if r["server"] == "echo" and int(r["candidates"]) == candidates
            for s in r.get("steps", [])
            if s.get("passed") and s.get("cpu_ms_per_request") is not None
        ]
        transport = min(echo) if echo else None
        model = (parts["encoder_flops"] + parts["ctr_flops"]) / (gflops * 1e9) * 1e3
        entry: dict[str, Any] = {**parts, "model_ms": model, "transport_ms": transport}
        entry["floor_ms"] = None if transport is None else transport + parts["state_ms"] + model
        by_candidates[str(candidates)] = entry
    return {"matmul_gflops": gflops, "by_candidates": by_candidates}


def run_bench(
    bundle: Path,
    data: Path,
    run_dir: Path | None,
    servers: list[str],
    candidate_counts: list[int],
    out: Path,
    config: SweepConfig,
) -> dict[str, Any]:
    """The whole benchmark; -> results (also written to out/results.json)."""
    from queryrec.features.dataset import PreparedDataset
    from service.state.embedded_redis import EmbeddedRedis
    from service.state.load import load_state

    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(bundle)
    lengths = manifest["max_lengths"]
    dataset = PreparedDataset(data)
    results: dict[str, Any] = {
        "schema": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "config": {
            "data": str(data),
            "bundle": str(bundle),
            "run": str(run_dir) if run_dir else None,
            "servers": servers,
            "candidates": candidate_counts,
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
            "users": config.users,
            "start_rate": config.start_rate,
            "max_rate": config.max_rate,
            "min_rate": config.min_rate,
            "bisect": config.bisect,
            "repeats": config.repeats,
            "write_share": config.write_share,
            "seed": config.seed,
            "budget_ms": config.rule.budget_ms,
            "min_delivered": config.rule.min_delivered,
            "max_degraded_share": config.rule.max_degraded_share,
        },
        "runs": [],
    }
    path = out / "results.json"
    with EmbeddedRedis() as redis_server:
        import redis

        def fresh_state() -> None:
            with redis.Redis.from_url(redis_server.url) as client:
                client.flushall()
            load_state(
                dataset,
                redis_server.url,
                query_cap=int(lengths["query_history"]),
                click_cap=int(lengths["click_history"]),
                progress=False,
            )

        fresh_state()
        gflops = matmul_gflops()
        per_candidates: dict[int, dict[str, float]] = {}
        for candidates in candidate_counts:
            flops = model_flops(bundle, candidates)
            per_candidates[candidates] = {
                **{k: float(v) for k, v in flops.items()},
                "state_ms": state_ms(bundle, redis_server.url, candidates),
            }
        say(f"matmul {gflops:.0f} GFLOP/s on one thread; floor parts {per_candidates}")
        for candidates in candidate_counts:
            for server in servers:
                run: dict[str, Any] = {"server": server, "candidates": candidates, "steps": []}
                results["runs"].append(run)
                if server == "naive-torch" and run_dir is None:
                    run["skipped"] = "no --run given (naive-torch needs the trained run)"
                    continue
                fresh_state()
                log = out / "logs" / f"{server}-c{candidates}.log"
                run["log"] = str(log)
                try:
                    with started(
                        server, candidates, bundle, redis_server.url, run_dir, data, log
                    ) as running:
                        run["settings"] = running.settings
                        run["steps"] = sweep(server, candidates, running, data, out, config)
                except Exception as error:  # a server that does not start: recorded
                    run["error"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                    say(f"{server} at {candidates} candidates: {run['error']}")
                run["max"] = summarize_max(run["steps"], config.rule)
                results["floor"] = floor(results["runs"], per_candidates, gflops)
                path.write_text(json.dumps(results, indent=2) + "\n")  # partial results
    results["floor"] = floor(results["runs"], per_candidates, gflops)
    service = next((r for r in results["runs"] if r["server"] == "service" and r.get("max")), None)
    results["max_rate"] = service["max"]["rate"] if service else None
    results["max_rate_of"] = (
        {"server": "service", "candidates": service["candidates"]} if service else None
    )
    path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--bundle", type=Path, default=Path("demo-work/bundle"))
    parser.add_argument(
        "--data", type=Path, default=None, help="prepared dataset (default: the bundle's)"
    )
    parser.add_argument("--run", type=Path, default=None, help="trained run (naive-torch)")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"from {','.join(SERVERS)}")
    parser.add_argument("--candidates", default="100", help="comma-separated, e.g. 20,100,500")
    parser.add_argument("--out", type=Path, default=Path("bench-work/side-by-side"))
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per step")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up load")
    parser.add_argument("--users", type=int, default=16, help="Locust users, at least")
    parser.add_argument("--start-rate", type=float, default=50.0)
    parser.add_argument("--max-rate", type=float, default=6400.0)
    parser.add_argument("--min-rate", type=float, default=5.0)
    parser.add_argument("--bisect", type=int, default=2, help="bisections after the first failure")
    parser.add_argument(
        "--repeats", type=int, default=1, help="reruns of a failing step before it counts"
    )
    parser.add_argument("--write-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-ms", type=float, default=50.0, help="p99 bound and deadline")
    parser.add_argument(
        "--min-delivered", type=float, default=Rule.min_delivered, help="share of the offered rate"
    )
    parser.add_argument(
        "--max-degraded",
        type=float,
        default=Rule.max_degraded_share,
        help="share of degraded Score answers a passing step may have",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        raise SystemExit(f"unknown servers {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    bundle = args.bundle
    data = args.data
    if data is None:
        data = Path(read_manifest(bundle)["dataset"]["path"])
    config = SweepConfig(
        duration_s=args.duration,
        warmup_s=args.warmup,
        users=args.users,
        start_rate=args.start_rate,
        max_rate=args.max_rate,
        min_rate=args.min_rate,
        bisect=args.bisect,
        repeats=args.repeats,
        write_share=args.write_share,
        seed=args.seed,
        rule=Rule(args.budget_ms, args.min_delivered, args.max_degraded),
    )
    candidates = [int(c) for c in args.candidates.split(",")]
    run_bench(bundle, data, args.run, servers, candidates, args.out, config)
    from loadtest.report import write_report

    for written in write_report(args.out / "results.json", args.out):
        say(f"wrote {written}")


if __name__ == "__main__":
    main()
