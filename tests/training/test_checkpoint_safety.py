"""Checkpoints load with the weights-only unpickler: plain data and tensors only.

A `checkpoint.pt` that would run code when unpickled is refused without running it
(one line naming the file, exit 2 from `queryrec export`); `save_checkpoint` writes only
what that unpickler accepts, converting numpy scalars and paths on the way.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from queryrec.errors import QueryRecError
from queryrec.features.dataset import PreparedDataset
from queryrec.training.checkpoint import (
    CHECKPOINT_FILE,
    load_checkpoint,
    plain_payload,
    read_checkpoint,
    save_checkpoint,
)


class _CreatesAFile:
    """Unpickling this calls open(marker, "w"): code run by a code-executing loader."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (builtins.open, (self.marker, "w"))


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("queryrec: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def test_a_checkpoint_that_would_run_code_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "marker"
    payload = {"format": 1, "model_name": "queryrec", "metrics": _CreatesAFile(marker)}
    torch.save(payload, run / CHECKPOINT_FILE)

    with pytest.raises(QueryRecError, match="nothing in it was run"):
        read_checkpoint(run)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "bundle")]) == 2
    err = _one_line_error(capsys)
    assert str(run / CHECKPOINT_FILE) in err and "refused" in err
    assert not marker.exists()  # the code did not run
    assert not (tmp_path / "bundle").exists()

    # The control: the code-executing loader would have run it.
    opened = torch.load(run / CHECKPOINT_FILE, weights_only=False)["metrics"]
    opened.close()
    assert marker.exists()


def test_an_old_format_checkpoint_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the old writer could store (numpy scalars in metrics, a Path) is not data
    the safe loader builds: refused, naming the file and the type."""
    run = tmp_path / "run"
    run.mkdir()
    old = {"format": 1, "metrics": {"test": {"auc": np.float64(0.6)}}, "data_dir": Path("/x")}
    torch.save(old, run / CHECKPOINT_FILE)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "bundle")]) == 2
    err = _one_line_error(capsys)
    assert str(run / CHECKPOINT_FILE) in err and "numpy" in err and "retrain" in err


def test_a_truncated_checkpoint_is_one_line(
    queryrec_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    data = (queryrec_run / CHECKPOINT_FILE).read_bytes()
    (run / CHECKPOINT_FILE).write_bytes(data[: len(data) // 3])
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "bundle")]) == 2
    assert "not a readable checkpoint" in _one_line_error(capsys)


def test_a_checkpoint_without_its_configs_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": 1, "state_dict": {}}, run / CHECKPOINT_FILE)
    with pytest.raises(QueryRecError, match="checkpoint lacks model_name, model_config"):
        read_checkpoint(run)


def test_save_stores_plain_data_that_the_safe_loader_reads(
    queryrec_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    dataset = PreparedDataset(tiny_data)
    model, payload = load_checkpoint(queryrec_run, dataset)
    metrics = {"test": {"auc": np.float64(0.61), "n": np.int64(1063)}, "curve": np.arange(3)}
    train_cfg = {**payload["train_config"], "out": tmp_path / "somewhere"}
    save_checkpoint(
        tmp_path,
        model,
        payload["model_name"],
        model.cfg,
        train_cfg,
        payload["schema_hash"],
        metrics,
        data_dir=tiny_data,
    )
    again = read_checkpoint(tmp_path)  # weights_only=True
    assert again["metrics"] == {"test": {"auc": 0.61, "n": 1063}, "curve": [0, 1, 2]}
    assert type(again["metrics"]["test"]["auc"]) is float
    assert again["train_config"]["out"] == str(tmp_path / "somewhere")
    reloaded, _ = load_checkpoint(tmp_path, dataset, again)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_plain_payload_refuses_what_it_cannot_make_plain() -> None:
    assert plain_payload({"a": (np.int32(1), Path("/p")), "b": [np.bool_(True), None]}) == {
        "a": (1, "/p"),
        "b": [True, None],
    }
    with pytest.raises(TypeError, match=r"checkpoint\.metrics\.odd: a object"):
        plain_payload({"metrics": {"odd": object()}})
