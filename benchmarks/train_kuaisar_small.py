"""Benchmark: train QueryRec on the `kuaisar-small` preset (CPU): time, peak memory, AUC.

    python benchmarks/train_kuaisar_small.py [--workdir bench-work]
        [--runs sparse:0,dense:0,sparse-ddp2:1000000,sparse@0:0] [--epochs 1]

Uses the dataset of `benchmarks/prepare_kuaisar_small.py` (bench-work/data-kuaisar-small;
prepared here if absent). Each run is `queryrec train --model queryrec --epochs E
--embedding-updates U [--max-train-samples N]` as a child process (N = 0: the full
training split), timed, with the child's peak resident memory (wait4 ru_maxrss: the
largest of the child and its descendants). A run named `U-ddpK` runs under `torchrun
--standalone --nproc_per_node K` with one torch thread per process (K processes share
the cores); `U@D` passes `--sparse-decay D` (else the default), `U+catchup` passes
`--sparse-catch-up` (lazy Adam takes the momentum steps a row missed). The default runs, in one
invocation on the same data and seed: a full epoch with sparse embedding updates (issue
19's target: <= 15 min), a full epoch with dense updates (the path before sparse updates;
about an hour on 2 cores), sparse under two DDP processes on 1,000,000 samples (a
throughput figure), and a full sparse epoch without the lazy decoupled decay (what the
decay buys). Validation and test are always scored in full. Writes
bench-work/train_kuaisar_small.json after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from queryrec.training.config import TrainConfig

DEFAULTS = TrainConfig()  # what `queryrec train` uses where a run names no option


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--runs", default="sparse:0,dense:0,sparse-ddp2:1000000,sparse@0:0")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    data = args.workdir / "data-kuaisar-small"
    if not (data / "schema.json").exists():
        print(f"preparing {data} first (benchmarks/prepare_kuaisar_small.py) ...", flush=True)
        here = Path(__file__).with_name("prepare_kuaisar_small.py")
        subprocess.run([sys.executable, str(here), "--workdir", str(args.workdir)], check=False)
    stats = json.loads((data / "stats.json").read_text())
    train_rows = int(stats["per_split"]["train"]["feed_rows"])
    runs: list[dict[str, Any]] = []
    target = args.workdir / "train_kuaisar_small.json"
    for spec in args.runs.split(","):
        updates, _, samples = spec.partition(":")
        result = _train(data, args.workdir, updates, int(samples or 0), args.epochs, train_rows)
        if result is None:
            return 2
        runs.append(result)
        print(json.dumps(result, indent=2), flush=True)
        summary = {
            "benchmark": "train queryrec, kuaisar-small preset, CPU, sparse vs dense embeddings",
            "machine": {
                "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
            },
            "train_samples_available": train_rows,
            "runs": runs,
        }
        target.write_text(json.dumps(summary, indent=2) + "\n")  # after every run
    print(f"written to {target}")
    return 0


def _train(
    data: Path, workdir: Path, updates: str, samples: int, epochs: int, train_rows: int
) -> dict[str, Any] | None:
    """One `queryrec train` child: its timings, peak RSS and metrics (None if it failed).
    `updates` is dense | sparse, `-ddpK` appended for K DDP processes, `@D` for
    `--sparse-decay D`, `+catchup` for `--sparse-catch-up`."""
    name = updates
    updates, _, catch_up = updates.partition("+")
    if catch_up not in ("", "catchup"):
        raise SystemExit(f"unknown run suffix '+{catch_up}' in '{name}' (known: +catchup)")
    updates, _, decay = updates.partition("@")
    updates, _, ddp = updates.partition("-ddp")
    processes = int(ddp or 1)
    run_dir = workdir / f"run-kuaisar-small-queryrec-{name}-{samples or 'full'}"
    launcher = [sys.executable, "-m", "app.cli"]
    env = dict(os.environ)
    if processes > 1:
        launcher = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(processes), "-m", "app.cli",
        ]  # fmt: skip
        env["OMP_NUM_THREADS"] = "1"  # the processes share the cores
    command = [
        *launcher, "train", "--data", str(data), "--model", "queryrec", "--out", str(run_dir),
        "--epochs", str(epochs), "--device", "cpu", "--embedding-updates", updates,
    ]  # fmt: skip
    if samples:
        command += ["--max-train-samples", str(samples)]
    if decay:
        command += ["--sparse-decay", decay]
    if catch_up:
        command += ["--sparse-catch-up"]
    print(f"[bench] {' '.join(command[2:])}", flush=True)
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        print(f"training failed: {' '.join(command)}", file=sys.stderr)
        return None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    throughput = float(metrics["samples_per_second"])
    trained = min(train_rows, samples or train_rows)
    return {
        "run": name,
        "embedding_updates": updates,
        "processes": processes,
        "sparse_decay": float(decay) if decay else DEFAULTS.sparse_decay,
        "sparse_momentum_catch_up": bool(catch_up) or DEFAULTS.sparse_momentum_catch_up,
        "train_samples_per_epoch_used": trained,
        "epochs_run": len(metrics["history"]),
        "wall_seconds": round(seconds, 1),
        "train_seconds": round(metrics["train_seconds"], 1),
        "samples_per_second": round(throughput),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
        "full_epoch_seconds": round(train_rows / throughput),
        "full_epoch_extrapolated": trained < train_rows,
        "test": metrics["test"],
        "valid": metrics["valid"],
        "slices": metrics["slices"],
    }


if __name__ == "__main__":
    sys.exit(main())
