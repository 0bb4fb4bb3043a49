"""`queryrec demo` runs every stage that exists, end to end (tiny data here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from queryrec.features.schema import load_schema


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reruns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir = tmp_path / "demo"
    for _ in range(2):  # the demo owns its folder: a second run replaces it
        assert main(["demo", "--workdir", str(workdir), "--preset", "tiny", "--epochs", "1"]) == 0
        out = capsys.readouterr().out
        assert "# Dataset statistics" in out and "| test |" in out
        assert "| din |" in out and "| queryrec |" in out
        assert "model version queryrec-" in out and "parity: max abs diff" in out
        assert "pseudo-positives for" in out and "held-out hidden-click recall@4" in out
        assert "| offline AUC | served AUC |" in out
    load_schema(workdir / "data")
    assert (workdir / "data/augment/manifest.json").is_file()
