"""benchmarks/paired_table.py: pairs by seed across bench folders, and the spread rule."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from ece_floor import noise_floor
from paired_table import markdown, paired_rows, read_runs


def _run(bench: Path, name: str, seed: int, auc: float, slice_auc: float) -> None:
    run = bench / "runs" / f"{name}-seed{seed}"
    run.mkdir(parents=True)
    metrics = {"test": {"auc": auc}, "slices": {"no_click_recent_queries": {"auc": slice_auc}}}
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_models_from_two_benches_pair_by_seed(tmp_path: Path) -> None:
    main, ablation = tmp_path / "main", tmp_path / "ablation"
    for seed, (full_auc, steady_auc, noisy_auc) in enumerate(
        [(0.80, 0.79, 0.70), (0.81, 0.80, 0.83), (0.82, 0.81, 0.79)]
    ):
        _run(main, "full", seed, full_auc, full_auc)
        _run(ablation, "steady", seed, steady_auc, full_auc - 0.02)
        _run(ablation, "noisy", seed, noisy_auc, full_auc)
    rows = {row.model: row for row in paired_rows("full", read_runs([main, ablation]))}
    steady, noisy = rows["steady"], rows["noisy"]
    assert steady.diff_mean is not None and abs(steady.diff_mean - 0.01) < 1e-9
    assert (steady.ahead, steady.seeds, steady.beyond_spread) == (3, 3, True)
    assert abs(steady.slice_diff_mean - 0.02) < 1e-9
    # ahead on 2 of 3 seeds, but the mean gap is smaller than its spread
    assert (noisy.ahead, noisy.beyond_spread) == (2, False)
    assert rows["full"].diff_mean is None
    table = markdown("full", list(rows.values()))
    assert "| steady | 0.7900 / 0.8000 / 0.8100 | 0.8000 | +0.0100 ± 0.0000 | 3/3 | yes |" in table


def test_the_ece_floor_shrinks_with_more_samples() -> None:
    few = [
        {"predicted": 0.3, "observed": 0.3, "count": 100},
        {"predicted": 0.7, "observed": 0.7, "count": 100},
    ]
    many = [{**b, "count": b["count"] * 100} for b in few]
    # E|N(0, sqrt(p(1-p)/n))| = sqrt(2/pi) sqrt(0.21/100) for both bins
    assert abs(noise_floor(few) - (2 / 3.141592653589793) ** 0.5 * (0.21 / 100) ** 0.5) < 1e-12
    assert abs(noise_floor(many) * 10 - noise_floor(few)) < 1e-12
