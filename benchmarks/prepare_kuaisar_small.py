"""Benchmark: `queryrec data prepare` at the real KuaiSAR-small scale.

Generates the `kuaisar-small` preset once (25,877 users, ~7.5 M feed rows, ~3.2 M search
rows) under bench-work/, then runs `queryrec data prepare` on it as a child process and
records wall time and peak resident memory (the child's own ru_maxrss from wait4, what
`/usr/bin/time -v` reports as "Maximum resident set size"). Prints the numbers and writes them to
bench-work/prepare_kuaisar_small.json. Budget (issue): 10 minutes, 8 GiB, on 2 cores.

    python benchmarks/prepare_kuaisar_small.py [--workdir bench-work] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUDGET_SECONDS = 600
BUDGET_RSS_GIB = 8.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    queryrec = [sys.executable, "-m", "app.cli"]
    raw = args.workdir / "raw-kuaisar-small"
    if not (raw / "synth_manifest.json").exists():
        print(f"generating {raw} (about a minute) ...", flush=True)
        subprocess.run(
            [*queryrec, "data", "synth", "--out", str(raw), "--preset", "kuaisar-small", "--force"],
            check=True,
        )
    input_bytes = sum(p.stat().st_size for p in raw.glob("*.csv"))
    runs = []
    for attempt in range(args.repeat):
        out = args.workdir / "data-kuaisar-small"
        started = time.perf_counter()
        child = subprocess.Popen(
            [*queryrec, "data", "prepare", "--raw", str(raw), "--out", str(out), "--force"],
            stdout=subprocess.DEVNULL,
        )
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would include the synth run).
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if child.returncode != 0:
            print(f"prepare failed with exit code {child.returncode}", file=sys.stderr)
            return 2
        peak_kib = usage.ru_maxrss
        runs.append({"seconds": round(seconds, 1), "peak_rss_kib": peak_kib})
        print(
            f"run {attempt + 1}: {seconds:.1f} s, peak RSS {peak_kib / 2**20:.2f} GiB", flush=True
        )
    stats = json.loads((args.workdir / "data-kuaisar-small" / "stats.json").read_text())
    result = {
        "benchmark": "data prepare, kuaisar-small preset",
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "input_csv_bytes": input_bytes,
        "input_rows": stats["rows"],
        "runs": runs,
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "peak_rss_gib": round(max(r["peak_rss_kib"] for r in runs) / 2**20, 2),
        "budget": {"seconds": BUDGET_SECONDS, "rss_gib": BUDGET_RSS_GIB},
    }
    result["within_budget"] = (
        result["median_seconds"] <= BUDGET_SECONDS and result["peak_rss_gib"] <= BUDGET_RSS_GIB
    )
    target = args.workdir / "prepare_kuaisar_small.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {target}")
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
