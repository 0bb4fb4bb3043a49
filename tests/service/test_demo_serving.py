"""The demo's serving stages: state load, `queryrec serve` as a subprocess, replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.demo import print_summary, serve_and_replay
from clients.launcher import ServerProcess
from queryrec.errors import QueryRecError
from queryrec.features.dataset import PreparedDataset


@pytest.mark.slow
def test_serve_and_replay_agrees_with_offline(
    tiny_data: Path, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    log = tmp_path / "serve.log"
    summary = serve_and_replay(PreparedDataset(tiny_data), bundle, manifest, log)
    assert abs(summary["served_auc"] - summary["offline_auc"]) <= 0.001
    assert summary["degraded"] == 0
    assert "queryrec serve: listening on 127.0.0.1:" in log.read_text()
    print_summary(summary)
    out = capsys.readouterr().out
    assert "| offline AUC | served AUC |" in out and "served AUC  " in out


def test_server_that_exits_fails_with_its_last_output(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "no-bundle", "redis://127.0.0.1:1/0", tmp_path / "s.log")
    with pytest.raises(QueryRecError, match=r"exited with code \d+ before listening") as caught:
        server.start()
    assert "no manifest" in str(caught.value)
    server.stop()  # idempotent after a failed start
