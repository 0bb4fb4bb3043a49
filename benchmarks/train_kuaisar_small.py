"""Benchmark: train QueryRec once on the `kuaisar-small` preset (CPU), time and peak memory.

    python benchmarks/train_kuaisar_small.py [--workdir bench-work] [--max-train-samples N]

Uses the dataset of `benchmarks/prepare_kuaisar_small.py` (bench-work/data-kuaisar-small;
prepared here if absent) and runs `queryrec train --model queryrec --epochs E` as a child
process, recording wall time and the child's peak resident memory (wait4 ru_maxrss). A
full epoch at this scale takes longer than a working session on 2 cores, so by default it
trains one epoch on a random subset of the training split and extrapolates the epoch
time to the full split from the measured throughput; the result says so. Validation and
test are always scored in full. Writes bench-work/train_kuaisar_small.json.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--max-train-samples", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    queryrec = [sys.executable, "-m", "queryrec.cli.main"]
    data = args.workdir / "data-kuaisar-small"
    if not (data / "schema.json").exists():
        print(f"preparing {data} first (benchmarks/prepare_kuaisar_small.py) ...", flush=True)
        here = Path(__file__).with_name("prepare_kuaisar_small.py")
        subprocess.run([sys.executable, str(here), "--workdir", str(args.workdir)], check=False)
    run_dir = args.workdir / "run-kuaisar-small-queryrec"
    command = [
        *queryrec, "train", "--data", str(data), "--model", "queryrec", "--out", str(run_dir),
        "--epochs", str(args.epochs), "--device", "cpu",
    ]  # fmt: skip
    if args.max_train_samples:
        command += ["--max-train-samples", str(args.max_train_samples)]
    started = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        print("training failed", file=sys.stderr)
        return 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    stats = json.loads((data / "stats.json").read_text())
    train_rows = int(stats["per_split"]["train"]["feed_rows"])
    throughput = float(metrics["samples_per_second"])
    trained = min(train_rows, args.max_train_samples or train_rows)
    result = {
        "benchmark": "train queryrec, kuaisar-small preset, CPU",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "train_samples_available": train_rows,
        "train_samples_per_epoch_used": trained,
        "epochs_run": len(metrics["history"]),
        "wall_seconds": round(seconds, 1),
        "train_seconds": round(metrics["train_seconds"], 1),
        "samples_per_second": round(throughput),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
        "extrapolated_full_epoch_seconds": round(train_rows / throughput),
        "extrapolated": trained < train_rows,
        "test": metrics["test"],
        "valid": metrics["valid"],
        "slices": metrics["slices"],
    }
    target = args.workdir / "train_kuaisar_small.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
