"""Benchmark: train QueryRec on the `kuaisar-small` preset (CPU): time, peak memory, AUC.

    python benchmarks/train_kuaisar_small.py [--workdir bench-work]
        [--runs sparse:0,dense:0,sparse-ddp2:1000000,sparse@0:0] [--epochs 1]

Uses the dataset of `benchmarks/prepare_kuaisar_small.py` (bench-work/data-kuaisar-small;
prepared here if absent). Each run is `queryrec train --model queryrec --epochs E
--config RUN.toml [--max-train-samples N]` as a child process (N = 0: the full training
split), RUN.toml a small experiment file written next to the run's folder in the workdir
(`[train] embedding_updates = "U"`, and the options below), timed, with the child's peak resident memory (wait4 ru_maxrss: the
largest of the child and its descendants). A run named `U-ddpK` runs under `torchrun
--standalone --nproc_per_node K` with one torch thread per process (K processes share
the cores); `U@D` sets `sparse_decay = D` (else the default), `U+catchup` sets
`sparse_momentum_catch_up = true` (lazy Adam takes the momentum steps a row missed); the
same runs as `experiments/scale-*.toml`. The default runs, in one
invocation on the same data and seed: a full epoch with sparse embedding updates (issue
19's target: <= 15 min), a full epoch with dense updates (the path before sparse updates;
about an hour on 2 cores), sparse under two DDP processes on 1,000,000 samples (a
throughput figure), and a full sparse epoch without the lazy decoupled decay (what the
decay buys). Validation and test are always scored in full. Writes
bench-work/train_kuaisar_small.json after every run. `--dry-run` writes the experiment
files and prints the commands without training.
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
    parser.add_argument(
        "--dry-run", action="store_true", help="write the experiment files, print the commands"
    )
    args = parser.parse_args()
    data = args.workdir / "data-kuaisar-small"
    if args.dry_run:
        for spec in args.runs.split(","):
            updates, _, samples = spec.partition(":")
            command, _, _ = _command(data, args.workdir, updates, int(samples or 0), args.epochs)
            print(" ".join(command))
        return 0
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


def _parse_run(name: str) -> tuple[str, str, bool, int]:
    """A run name -> (embedding updates, decay or "", catch-up, DDP processes). `name` is
    dense | sparse | auto, `-ddpK` appended for K DDP processes, `@D` for `sparse_decay = D`,
    `+catchup` for `sparse_momentum_catch_up = true`."""
    updates, _, catch_up = name.partition("+")
    if catch_up not in ("", "catchup"):
        raise SystemExit(f"unknown run suffix '+{catch_up}' in '{name}' (known: +catchup)")
    updates, _, decay = updates.partition("@")
    updates, _, ddp = updates.partition("-ddp")
    return updates, decay, bool(catch_up), int(ddp or 1)


def _experiment_file(updates: str, decay: str, catch_up: bool) -> str:
    """The experiment file (TOML) of one run: its `[train]` settings."""
    lines = ["[train]", f'embedding_updates = "{updates}"']
    if decay:
        lines.append(f"sparse_decay = {float(decay)!r}")
    if catch_up:
        lines.append("sparse_momentum_catch_up = true")
    return "\n".join(lines) + "\n"


def _command(
    data: Path, workdir: Path, name: str, samples: int, epochs: int
) -> tuple[list[str], dict[str, str], Path]:
    """The `queryrec train` command of run `name` (its experiment file written to the
    workdir), its environment and its run folder."""
    updates, decay, catch_up, processes = _parse_run(name)
    run_dir = workdir / f"run-kuaisar-small-queryrec-{name}-{samples or 'full'}"
    config = run_dir.with_name(run_dir.name + ".toml")
    workdir.mkdir(parents=True, exist_ok=True)
    config.write_text(_experiment_file(updates, decay, catch_up))
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
        "--epochs", str(epochs), "--device", "cpu", "--config", str(config),
    ]  # fmt: skip
    if samples:
        command += ["--max-train-samples", str(samples)]
    return command, env, run_dir


def _train(
    data: Path, workdir: Path, name: str, samples: int, epochs: int, train_rows: int
) -> dict[str, Any] | None:
    """One `queryrec train` child: its timings, peak RSS and metrics (None if it failed).
    `name` as in `_parse_run`."""
    updates, decay, catch_up, processes = _parse_run(name)
    command, env, run_dir = _command(data, workdir, name, samples, epochs)
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
