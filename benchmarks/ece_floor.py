"""How much of a run's calibrated test ECE is the estimate's own noise.

    python benchmarks/ece_floor.py BENCH_DIR [BENCH_DIR ...] [--json OUT.json]

ECE over 10 equal-width bins is a noisy estimate: even a perfectly calibrated model shows
a positive ECE on a finite test split, because each bin's observed click rate scatters
around its mean prediction. For every run under BENCH_DIR/runs/ this reads the calibration
record that training wrote (`metrics.json`: test ECE after Platt scaling and the test
reliability bins after it) and prints, beside the measured ECE, the ECE expected from a
perfectly calibrated model with the same bins and counts:

    floor = sum_b (n_b / N) * sqrt(2 / pi) * sqrt(p_b (1 - p_b) / n_b)

(E|X| of the normal approximation of each bin's click rate around p_b; an upper bound,
as the spread of predictions inside a bin only lowers the variance). A measured ECE well
above the floor is miscalibration; one near it is noise.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any


def noise_floor(bins: list[dict[str, float]]) -> float:
    """Expected ECE of a perfectly calibrated model with these reliability bins."""
    total = sum(b["count"] for b in bins)
    return sum(
        (b["count"] / total)
        * math.sqrt(2 / math.pi)
        * math.sqrt(b["predicted"] * (1 - b["predicted"]) / b["count"])
        for b in bins
    )


def run_rows(bench_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(bench_dir.glob("runs/*/metrics.json")):
        calibration = json.loads(path.read_text()).get("calibration")
        if not calibration:
            continue
        rows.append(
            {
                "run": path.parent.name,
                "valid_ece_after": calibration["valid_ece_after"],
                "test_ece_after": calibration["test_ece_after"],
                "test_ece_floor": noise_floor(calibration["test_reliability_after"]),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench_dirs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = [row for d in args.bench_dirs for row in run_rows(d)]
    if not rows:
        raise SystemExit(f"no runs with a calibration record under {args.bench_dirs}")
    print("| run | valid ECE after | test ECE after | floor (perfectly calibrated) |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['run']} | {row['valid_ece_after']:.4f} | {row['test_ece_after']:.4f} "
            f"| {row['test_ece_floor']:.4f} |"
        )
    above = [r["test_ece_after"] - r["test_ece_floor"] for r in rows]
    print(
        f"\nmedian test ECE above its floor: {statistics.median(above):+.4f} over {len(rows)} runs"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
