"""Every baseline through the user's commands on `tiny`: `queryrec train` for one epoch;
the servable ones exported and served through a real server and a real Redis (every
served score equals the offline score of the same impression); the others refused by
export with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from export.bundle import ExportOptions, export_bundle
from queryrec.errors import QueryRecError
from tests.clients.test_replay import serves_what_it_scores_offline

# SESRec and UniSAR train, export and serve in their own test modules.
BASELINES = ("ple", "iv4rec", "din-stats", "lightgbm", "lightgbm-query")
SERVABLE = ("ple", "iv4rec", "din-stats")


def _train(model: str, data: Path, out: Path) -> dict[str, object]:
    run = out / model
    code = main(
        ["train", "--data", str(data), "--out", str(run), "--model", model, "--epochs", "1"]
    )
    assert code == 0
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every baseline trained once on tiny (read-only)."""
    out = tmp_path_factory.mktemp("baseline-runs")
    for model in BASELINES:
        _train(model, tiny_data, out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", BASELINES)
def test_one_epoch_through_queryrec_train(model: str, runs: Path) -> None:
    metrics = json.loads((runs / model / "metrics.json").read_text())
    assert metrics["model"] == model
    assert 0.5 < metrics["valid"]["auc"] < 1.0  # above chance after one epoch on tiny
    assert 0.5 < metrics["test"]["auc"] < 1.0
    assert metrics["samples_per_second"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("model", SERVABLE)
def test_servable_baselines_serve_what_they_score_offline(
    model: str, runs: Path, tiny_data: Path, tmp_path: Path, redis_client_url: str
) -> None:
    serves_what_it_scores_offline(runs / model, tiny_data, tmp_path, redis_client_url)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("lightgbm", "LightGBM run cannot be exported"),
        ("lightgbm-query", "LightGBM run cannot be exported"),
    ],
)
def test_export_refuses_what_cannot_be_served_and_says_why(
    model: str, reason: str, runs: Path, tmp_path: Path
) -> None:
    with pytest.raises(QueryRecError, match=reason):
        export_bundle(runs / model, tmp_path / "bundle", ExportOptions())
    assert not (tmp_path / "bundle").exists()
