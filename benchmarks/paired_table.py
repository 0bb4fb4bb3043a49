"""One model against every other, paired by training seed, across one or more bench folders.

    python benchmarks/paired_table.py FULL BENCH_DIR [BENCH_DIR ...] [--json OUT.json]

`queryrec bench` pairs the full model with the others of *one* bench; the ablation rows
often run in a second bench on the same (augmented) dataset. This reads every
`BENCH_DIR/runs/MODEL-seedN/metrics.json` and prints a markdown table: each model's test
AUC per seed and mean, and FULL minus the model per seed (mean ± std), how many seeds FULL
is ahead, whether the mean difference is beyond its spread (mean > std), and the same
difference on the recent-click-less-search slice. Runs of one seed share the data order
and the initial draws of the layers two models share, so the paired spread is the
yardstick a gap is measured against. Only benches of the same dataset belong together.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

Scores = dict[int, tuple[float, float]]  # seed -> (test AUC, slice AUC)


def read_runs(bench_dirs: list[Path]) -> dict[str, Scores]:
    runs: dict[str, Scores] = {}
    for bench_dir in bench_dirs:
        for path in sorted(bench_dir.glob("runs/*/metrics.json")):
            name, seed = path.parent.name.rsplit("-seed", 1)
            metrics = json.loads(path.read_text())
            runs.setdefault(name, {})[int(seed)] = (
                metrics["test"]["auc"],
                metrics["slices"]["no_click_recent_queries"]["auc"],
            )
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class Row:
    """A model's test AUC per seed and, unless it is FULL, FULL minus it paired by seed."""

    model: str
    test_auc: dict[int, float]
    mean: float
    diff_mean: float | None = None
    diff_std: float = 0.0
    ahead: int = 0
    seeds: int = 0
    slice_diff_mean: float = 0.0
    slice_diff_std: float = 0.0

    @property
    def beyond_spread(self) -> bool:
        return self.diff_mean is not None and self.diff_mean > self.diff_std


def paired_rows(full: str, runs: dict[str, Scores]) -> list[Row]:
    """One row per model, best mean test AUC first."""
    if full not in runs:
        raise SystemExit(f"no runs of '{full}' (found: {', '.join(sorted(runs))})")
    reference = runs[full]
    rows = []
    for name, scores in runs.items():
        row = Row(
            name,
            {seed: scores[seed][0] for seed in sorted(scores)},
            _mean_std([v[0] for v in scores.values()])[0],
        )
        seeds = sorted(set(scores) & set(reference))
        if name != full and seeds:
            row.diff_mean, row.diff_std = _mean_std([reference[s][0] - scores[s][0] for s in seeds])
            row.ahead = sum(reference[s][0] > scores[s][0] for s in seeds)
            row.seeds = len(seeds)
            row.slice_diff_mean, row.slice_diff_std = _mean_std(
                [reference[s][1] - scores[s][1] for s in seeds]
            )
        rows.append(row)
    return sorted(rows, key=lambda r: -r.mean)


def markdown(full: str, rows: list[Row]) -> str:
    lines = [
        f"| model | test AUC per seed | mean | {full} − model | {full} ahead "
        f"| beyond the spread | slice: {full} − model |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        per_seed = " / ".join(f"{v:.4f}" for v in row.test_auc.values())
        if row.diff_mean is None:
            lines.append(f"| **{row.model}** | {per_seed} | {row.mean:.4f} | | | | |")
            continue
        lines.append(
            f"| {row.model} | {per_seed} | {row.mean:.4f} "
            f"| {row.diff_mean:+.4f} ± {row.diff_std:.4f} | {row.ahead}/{row.seeds} "
            f"| {'yes' if row.beyond_spread else 'no'} "
            f"| {row.slice_diff_mean:+.4f} ± {row.slice_diff_std:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("full", help="the model every other is paired against")
    parser.add_argument("bench_dirs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = paired_rows(args.full, read_runs(args.bench_dirs))
    print(markdown(args.full, rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
