"""`queryrec bench` on tiny data: results.json schema, RESULTS.md and plots."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from app.bench import paired_differences
from app.cli import DEFAULT_MODELS, main
from queryrec.models.registry import DEFAULT_BENCH_MODELS
from queryrec.training.results import TrainResult


def test_cli_default_models_match_the_registry() -> None:
    assert DEFAULT_MODELS == DEFAULT_BENCH_MODELS


@pytest.mark.slow
def test_bench_writes_results(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    data = tmp_path / "data"  # the bench augments the dataset for queryrec: a private copy
    shutil.copytree(tiny_data, data)
    code = main(
        [
            "bench",
            "--data",
            str(data),
            "--out",
            str(out),
            "--models",
            "din,queryrec",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"din", "queryrec"}
    for model in results["models"].values():
        for key in (
            "auc_mean",
            "auc_std",
            "gauc_mean",
            "logloss_mean",
            "seeds",
            "train_seconds_mean",
        ):
            assert key in model
        assert model["seeds"] == 2
    assert set(results["slices"]["no_click_recent_queries"]) == {"din", "queryrec"}
    assert results["paired"]["din"]["seeds"] == 2
    table = (out / "RESULTS.md").read_text()
    assert "| queryrec |" in table and "Imp % vs DIN" in table and "Paired by seed" in table
    assert (out / "valid_auc_per_epoch.png").stat().st_size > 0
    assert (out / "test_auc_per_model.png").stat().st_size > 0
    # Every model is calibrated on validation and measured on test, with its diagram.
    assert (out / "reliability.png").stat().st_size > 0
    for name in ("din", "queryrec"):
        m = results["models"][name]
        assert m["test_ece_after_mean"] >= 0 and m["calibrated_auc_change_max"] < 1e-4
    assert "test ECE before" in table
    assert "| din |" in capsys.readouterr().out
    # queryrec uses diffusion pseudo-positives: the bench ran the diffusion job first.
    assert (data / "augment/manifest.json").is_file()
    methods = results["augmentation_quality"]["methods"]
    assert "diffusion" in methods and "popular shown items" in methods
    # The autoencoder reference is off in bench unless asked for (it doubles the job).
    assert "autoencoder (no diffusion)" not in methods
    assert not (out / "diffusion" / "autoencoder").exists()
    assert "hidden-click evaluation" in table
    assert (
        main(["bench", "--data", str(tiny_data), "--out", str(out), "--models", "din,bogus"]) == 2
    )


def _result(model: str, seed: int, auc: float, slice_auc: float) -> TrainResult:
    return TrainResult(
        model, seed, {}, {"auc": auc}, {"no_click_recent_queries": {"auc": slice_auc}}, [], 1, 0, 0
    )


def test_paired_differences_by_seed() -> None:
    runs = {
        "queryrec": [
            _result("queryrec", s, a, b) for s, a, b in ((0, 0.74, 0.73), (1, 0.75, 0.72))
        ],
        "queryrec-no-cl": [
            _result("queryrec-no-cl", s, a, b) for s, a, b in ((0, 0.73, 0.73), (1, 0.72, 0.71))
        ],
        "din": [_result("din", 5, 0.7, 0.7)],  # no seed in common: left out
    }
    paired = paired_differences(runs)
    assert set(paired) == {"queryrec-no-cl"}
    auc, sliced = paired["queryrec-no-cl"]["auc"], paired["queryrec-no-cl"]["slice_auc"]
    assert auc["mean"] == pytest.approx(0.02) and auc["full_ahead"] == 2
    assert auc["std"] == pytest.approx(statistics.stdev([0.01, 0.03]))
    assert sliced["mean"] == pytest.approx(0.005) and sliced["full_ahead"] == 1
