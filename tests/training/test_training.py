"""The training loop on tiny data: every model runs, QueryRec learns, checkpoints reload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from queryrec.cli.main import main
from queryrec.errors import SchemaMismatchError
from queryrec.features.dataset import PreparedDataset
from queryrec.models.registry import MODELS
from queryrec.training.batches import BatchBuilder
from queryrec.training.checkpoint import load_checkpoint
from queryrec.training.config import TrainConfig
from queryrec.training.loop import predict, train


@pytest.fixture(scope="module")
def dataset(tiny_data: Path) -> PreparedDataset:
    return PreparedDataset(tiny_data)


# The baselines' own classes run through the CLI in tests/models/test_baselines.py.
@pytest.mark.parametrize(
    "model", sorted(name for name, spec in MODELS.items() if spec.architecture == "ctr")
)
def test_one_epoch_per_model(model: str, dataset: PreparedDataset, tmp_path: Path) -> None:
    result = train(
        dataset.root,
        tmp_path / model,
        TrainConfig(model=model, epochs=1, batch_size=512, progress=False),
        dataset=dataset,
    )
    assert 0.0 <= result.test["auc"] <= 1.0
    assert result.history[0]["train_L_ctr"] > 0
    if MODELS[model].next_loss:
        assert "train_L_next" in result.history[0]
    if MODELS[model].contrastive_loss:
        assert "train_L_cl" in result.history[0]
    assert (tmp_path / model / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_queryrec_learns_the_planted_signal(dataset: PreparedDataset, tmp_path: Path) -> None:
    cfg = TrainConfig(model="queryrec", epochs=3, batch_size=256, progress=False)
    result = train(dataset.root, tmp_path / "run", cfg, dataset=dataset)
    assert result.test["auc"] > 0.6


def test_same_seed_same_weights(dataset: PreparedDataset, tmp_path: Path) -> None:
    cfg = TrainConfig(
        model="queryrec", epochs=1, batch_size=512, progress=False, max_train_samples=2048
    )
    first = train(dataset.root, tmp_path / "a", cfg, dataset=dataset)
    second = train(dataset.root, tmp_path / "b", cfg, dataset=dataset)
    assert first.test["auc"] == second.test["auc"]


def test_checkpoint_round_trip(dataset: PreparedDataset, tmp_path: Path) -> None:
    cfg = TrainConfig(model="queryrec-dcn", epochs=1, batch_size=512, progress=False)
    train(dataset.root, tmp_path / "run", cfg, dataset=dataset)
    model, payload = load_checkpoint(tmp_path / "run", dataset)
    builder = BatchBuilder(dataset, click_history=50, query_history=20, query_tokens=8)
    arrays = builder.split_arrays("test", with_aux=False)
    probabilities = predict(model, builder, arrays, 1024, torch.device("cpu"))
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(arrays.label, probabilities) == pytest.approx(
        payload["metrics"]["test"]["auc"], abs=1e-9
    )
    again, _ = load_checkpoint(tmp_path / "run", dataset)
    np.testing.assert_array_equal(
        probabilities, predict(again, builder, arrays, 1024, torch.device("cpu"))
    )
    # Another batch size changes float summation order only.
    np.testing.assert_allclose(
        probabilities, predict(again, builder, arrays, 333, torch.device("cpu")), atol=1e-6
    )


def test_checkpoint_refuses_another_dataset(
    dataset: PreparedDataset, tmp_path: Path, tiny_raw: Path
) -> None:
    from queryrec.data.prepare import PrepareConfig, run_prepare

    train(
        dataset.root,
        tmp_path / "run",
        TrainConfig(model="din", epochs=1, progress=False),
        dataset=dataset,
    )
    other = tmp_path / "other"
    run_prepare(tiny_raw, other, PrepareConfig(valid_fraction=0.2))
    with pytest.raises(SchemaMismatchError, match="trained on dataset"):
        load_checkpoint(tmp_path / "run", PreparedDataset(other))


def test_train_cli(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "train",
            "--data",
            str(tiny_data),
            "--model",
            "din",
            "--out",
            str(tmp_path / "r"),
            "--epochs",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert "din seed 0: test AUC" in capsys.readouterr().out
    assert (
        main(["train", "--data", str(tiny_data), "--model", "nope", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "unknown model 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("negatives", ["feed", "user"])
def test_next_item_targets_never_cross_the_split(dataset: PreparedDataset, negatives: str) -> None:
    """L_next targets of training samples come from the training period only."""
    from queryrec.training.batches import AuxiliaryConfig

    builder = BatchBuilder(
        dataset,
        click_history=50,
        query_history=20,
        query_tokens=8,
        aux=AuxiliaryConfig(next_window_hours=1e4, next_negative_source=negatives),
    )
    arrays = builder.split_arrays("train", with_aux=True)
    valid_start = dataset.schema["split"]["valid_start_ms"]
    assert arrays.next_positive_range is not None and arrays.next_negative_range is not None
    lo, hi = arrays.next_positive_range
    for start, stop, user, ts in zip(lo, hi, arrays.user, arrays.ts, strict=True):
        if stop > start:
            assert dataset.click_ts[stop - 1] < valid_start
            assert dataset.click_ts[start] > ts and (dataset.click_user[start:stop] == user).all()
    lo, hi = arrays.next_negative_range
    times = builder.noclick_ts if negatives == "user" else builder.feed_ts_sorted
    assert all(times[b - 1] < valid_start for a, b in zip(lo, hi, strict=True) if b > a)
    assert all(times[a] > t for a, b, t in zip(lo, hi, arrays.ts, strict=True) if b > a)
    # Without the cut, a window this long would reach into validation for some samples.
    assert (hi > lo).any()


@pytest.mark.parametrize("negatives", ["feed", "user"])
def test_next_item_negatives_never_hold_the_users_own_window_clicks(
    dataset: PreparedDataset, negatives: str
) -> None:
    """r- = shown and not clicked by u: no item of u's r+ window is drawn as a negative,
    while without the rule some are (so the check can fail)."""
    from queryrec.training.batches import AuxiliaryConfig

    def batch(exclude: bool) -> tuple[dict[str, np.ndarray], np.ndarray, object]:
        aux = AuxiliaryConfig(
            next_window_hours=48,
            next_negatives=16,
            next_negative_source=negatives,
            next_negatives_exclude_positives=exclude,
        )
        builder = BatchBuilder(dataset, click_history=50, query_history=20, query_tokens=8, aux=aux)
        arrays = builder.split_arrays("train", with_aux=True)
        rows = np.arange(len(arrays))
        return builder.build(arrays, rows, np.random.default_rng(0)), rows, arrays

    def own_clicks_drawn(out: dict[str, np.ndarray], arrays: object) -> int:
        lo, hi = arrays.next_positive_range  # type: ignore[attr-defined]
        return sum(
            int(np.isin(out["next_negative"][i], dataset.click_item[a:b]).sum())
            for i, (a, b) in enumerate(zip(lo, hi, strict=True))
            if b > a
        )

    kept, _, arrays = batch(exclude=True)
    assert own_clicks_drawn(kept, arrays) == 0
    assert (kept["next_negative"] > 0).any()
    unfiltered, _, arrays = batch(exclude=False)
    assert own_clicks_drawn(unfiltered, arrays) > 0


def test_cli_defaults_mirror_the_config() -> None:
    from queryrec.cli.main import (
        DEFAULT_CL_POSITIVES,
        DEFAULT_NEXT_NEGATIVES,
        DEFAULT_SPARSE_CATCH_UP,
        DEFAULT_SPARSE_DECAY,
    )
    from queryrec.training.batches import AuxiliaryConfig
    from queryrec.training.config import TrainConfig

    aux = AuxiliaryConfig()
    assert (
        aux.cl_positive_source,
        aux.next_negative_source,
        TrainConfig().sparse_decay,
        TrainConfig().sparse_momentum_catch_up,
    ) == (
        DEFAULT_CL_POSITIVES,
        DEFAULT_NEXT_NEGATIVES,
        DEFAULT_SPARSE_DECAY,
        DEFAULT_SPARSE_CATCH_UP,
    )


def test_train_takes_the_cl_positive_source_and_refuses_an_unknown_one(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", str(tiny_data), "--model", "queryrec-no-diffusion", "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "q"), "--cl-positives", "query"]) == 0
    assert (tmp_path / "q" / "checkpoint.pt").is_file()
    assert main([*args, "--out", str(tmp_path / "x"), "--cl-positives", "everyone"]) == 2
    assert "cl_positive_source must be session or query" in capsys.readouterr().err
