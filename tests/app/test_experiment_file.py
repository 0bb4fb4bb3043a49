"""Experiment files (`--config FILE.toml`): they set every config field, flags win, bad
files are one line; every file under experiments/ parses against the real configs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.cli import main
from app.experiment_file import Experiment, load_experiment
from queryrec.diffusion.train import DiffusionTrainConfig
from queryrec.models.config import PLEConfig, SESRecConfig
from queryrec.models.registry import MODELS
from queryrec.training.config import TrainConfig

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"

FILE = """
[train]
learning_rate = 0.002
epochs = 2
next_weight = 0.03
embedding_updates = "dense"
sparse_decay = 0
sparse_momentum_catch_up = true

[aux]
cl_positive_source = "query"
next_negative_source = "user"

[model]
dim = 16
mlp = [64, 32]

[model.ple]
search_weight = 0.25

[lightgbm]
num_leaves = 15

[diffusion]
hide_share = 0.25
pointwise = 8
query_words = true
position_weight = 0.3

[diffusion.schedule]
steps = 7

[bench]
models = ["din", "ple", "lightgbm"]
seeds = 2
diffusion_autoencoder = true

[models.din]
learning_rate = 0.005

[models.din.model]
dim = 8
"""


def _write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_file_sets_every_kind_of_field(tmp_path: Path) -> None:
    experiment = load_experiment(_write(tmp_path, FILE))
    ple = experiment.train_config("ple", seed=3)
    assert (ple.model, ple.seed, ple.learning_rate, ple.epochs) == ("ple", 3, 0.002, 2)
    assert (ple.next_weight, ple.embedding_updates, ple.sparse_decay) == (0.03, "dense", 0.0)
    assert ple.sparse_momentum_catch_up is True
    assert (ple.aux.cl_positive_source, ple.aux.next_negative_source) == ("query", "user")
    assert ple.model_overrides == {"dim": 16, "mlp": (64, 32), "ple": PLEConfig(search_weight=0.25)}
    # [models.din] wins over the common tables for din only
    din = experiment.train_config("din")
    assert din.learning_rate == 0.005 and din.model_overrides["dim"] == 8
    assert din.model_overrides["mlp"] == (64, 32)
    # the LightGBM rows take [lightgbm], not [model]
    assert experiment.train_config("lightgbm").model_overrides == {"num_leaves": 15}
    diffusion = experiment.diffusion_config()
    assert (diffusion.hide_share, diffusion.pointwise, diffusion.query_words) == (0.25, 8, True)
    assert diffusion.position_weight == 0.3 and diffusion.schedule.steps == 7
    assert experiment.bench == {
        "models": ["din", "ple", "lightgbm"],
        "seeds": 2,
        "diffusion_autoencoder": True,
    }


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    experiment = load_experiment(_write(tmp_path, FILE))
    cfg = experiment.train_config("din", learning_rate=0.1, next_weight=None, epochs=5)
    assert (cfg.learning_rate, cfg.epochs, cfg.next_weight) == (0.1, 5, 0.03)
    assert experiment.diffusion_config(pointwise=4, unit=None).pointwise == 4


def test_no_file_gives_the_configs_defaults() -> None:
    empty = load_experiment(None)
    assert empty.train_config("queryrec") == TrainConfig(model="queryrec")
    assert empty.diffusion_config() == DiffusionTrainConfig()
    assert Experiment().train_config("din", seed=1, progress=False) == TrainConfig(
        model="din", seed=1, progress=False
    )


def test_train_flags_win_over_the_file_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_data: Path
) -> None:
    seen: list[TrainConfig] = []

    def fake_train(data: Path, out: Path, cfg: TrainConfig) -> Any:
        seen.append(cfg)
        return SimpleNamespace(test={"auc": 0.5, "gauc": 0.5, "logloss": 0.7}, best_epoch=1)

    monkeypatch.setattr("queryrec.training.loop.train", fake_train)
    path = _write(tmp_path, FILE)
    args = ["train", "--data", str(tiny_data), "--model", "queryrec", "--out", str(tmp_path / "r")]
    assert main([*args, "--config", str(path)]) == 0
    assert (seen[-1].learning_rate, seen[-1].next_weight, seen[-1].epochs) == (0.002, 0.03, 2)
    flags = ["--learning-rate", "0.01", "--next-weight", "0", "--cl-weight", "0.2"]
    flags += ["--cl-temperature", "0.5", "--batch-size", "64", "--patience", "2", "--epochs", "3"]
    assert main([*args, "--config", str(path), *flags]) == 0
    cfg = seen[-1]
    assert (cfg.learning_rate, cfg.next_weight, cfg.cl_weight, cfg.temperature) == (
        0.01,
        0.0,
        0.2,
        0.5,
    )
    assert (cfg.batch_size, cfg.patience, cfg.epochs) == (64, 2, 3)
    assert cfg.aux.cl_positive_source == "query"  # the file's, no flag for it
    assert main(args) == 0  # no file: the defaults
    assert seen[-1] == TrainConfig(model="queryrec")


def test_bench_takes_models_seeds_and_settings_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_bench(data: Path, out: Path, names: Any, seeds: int, base: Any, **kw: Any) -> Any:
        calls.append({"names": names, "seeds": seeds, "base": base, **kw})
        return {}

    monkeypatch.setattr("app.bench.run_bench", fake_bench)
    path = _write(tmp_path, FILE)
    base = ["bench", "--data", str(tmp_path), "--out", str(tmp_path / "b")]
    assert main([*base, "--config", str(path)]) == 0
    call = calls[-1]
    assert call["names"] == ("din", "ple", "lightgbm") and call["seeds"] == 2
    assert call["diffusion_autoencoder"] is True
    assert call["diffusion"].hide_share == 0.25
    assert call["per_model"]["din"].learning_rate == 0.005
    assert call["per_model"]["ple"].model_overrides["ple"].search_weight == 0.25
    assert all(not cfg.progress for cfg in call["per_model"].values())
    assert main([*base, "--config", str(path), "--models", "din", "--seeds", "1"]) == 0
    assert calls[-1]["names"] == ("din",) and calls[-1]["seeds"] == 1
    assert main([*base, "--config", str(path), "--learning-rate", "0.5"]) == 0
    assert calls[-1]["per_model"]["din"].learning_rate == 0.5  # the flag beats [models.din]
    assert main(base) == 0
    assert calls[-1]["seeds"] == 3 and calls[-1]["diffusion_autoencoder"] is False
    assert calls[-1]["diffusion"] == DiffusionTrainConfig()


def test_diffusion_train_reads_its_table_and_flags_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[DiffusionTrainConfig] = []
    monkeypatch.setattr(
        "queryrec.diffusion.commands.run_diffusion_train",
        lambda data, out, cfg, references: seen.append(cfg),
    )
    path = _write(tmp_path, FILE)
    args = ["diffusion", "train", "--data", str(tmp_path), "--out", str(tmp_path / "d")]
    assert main([*args, "--config", str(path), "--epochs", "3"]) == 0
    assert (seen[-1].hide_share, seen[-1].query_words, seen[-1].epochs) == (0.25, True, 3)
    assert main(args) == 0
    assert seen[-1] == DiffusionTrainConfig()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[train]\nlearning_rte = 0.1\n", "[train] learning_rte: unknown key"),
        ("[trian]\n", "table trian: unknown key"),
        ("[train]\nepochs = 'two'\n", "[train] epochs: expected an integer"),
        ("[train]\nepochs = 1.5\n", "[train] epochs: expected an integer"),
        ("[train]\nlearning_rate = true\n", "[train] learning_rate: expected a number"),
        ("[train]\nmodel = 'din'\n", "[train] model: unknown key"),
        ("[train]\ntemperature = 0\n", "[train] temperature (beta of L_cl) must be > 0"),
        ("[train]\nnext_weight = -1\n", "[train] next_weight must be >= 0"),
        ("[aux]\nnext_negative_source = 'own'\n", "[aux] next_negative_source must be"),
        ("[model]\nvocab = 3\n", "[model] vocab: unknown key"),
        ("[model.ple]\nsearch_weight = -0.1\n", "[model] ple.search_weight must be >= 0"),
        ("[model.sesrec]\nmargn = 0.1\n", "[model.sesrec] margn: unknown key"),
        ("[lightgbm]\nleaves = 3\n", "[lightgbm] leaves: unknown key"),
        ("[diffusion]\nhide_share = 1.5\n", "[diffusion] hide share must be in [0, 1)"),
        ("[diffusion]\nquery_words = 1\n", "[diffusion] query_words: expected true or false"),
        ("[bench]\nmodels = ['din', 'nope']\n", "[bench] models: unknown model 'nope'"),
        ("[bench]\nseeds = 0\n", "[bench] seeds: must be >= 1"),
        ("[bench]\nautoencoder = true\n", "[bench] autoencoder: unknown key"),
        ("[models.nope]\nepochs = 1\n", "[models.nope] unknown model 'nope'"),
        ("[models.din]\nepoch = 1\n", "[models.din] epoch: unknown key"),
        ("[train\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str
) -> None:
    path = _write(tmp_path, text)
    code = main(
        ["bench", "--data", str(tmp_path), "--out", str(tmp_path / "b"), "--config", str(path)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"queryrec: error: {path}: ")
    assert where in err


def test_a_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    args = ["train", "--data", str(tmp_path), "--model", "din", "--out", str(tmp_path / "r")]
    assert main([*args, "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err


def test_research_flags_are_gone_from_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    for command, flag in [
        ("train", "--sparse-decay"),
        ("train", "--sparse-catch-up"),
        ("train", "--embedding-updates"),
        ("train", "--cl-positives"),
        ("bench", "--next-negatives"),
        ("bench", "--diffusion-autoencoder"),
    ]:
        assert main([command, "--help"]) == 0
        assert flag not in capsys.readouterr().out
    assert main(["diffusion", "train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--query-words", "--pointwise", "--position-weight", "--hide-share"):
        assert flag not in out
    assert "--config" in out


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.toml")), ids=lambda p: p.name)
def test_every_experiment_file_parses_against_the_configs(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("#") and "queryrec " in text  # says what it reproduces and how
    experiment = load_experiment(path)  # also builds every named model's TrainConfig
    for name in experiment.bench.get("models", ["queryrec"]):
        assert name in MODELS
        assert isinstance(experiment.train_config(name), TrainConfig)
    experiment.diffusion_config()


def test_the_experiments_folder_holds_the_reported_runs() -> None:
    names = {p.name for p in EXPERIMENTS.glob("*.toml")}
    assert {"served-comparison.toml", "ablations.toml", "paper-table.toml"} <= names
    paper = load_experiment(EXPERIMENTS / "paper-table.toml")
    assert paper.train_config("sesrec").model_overrides["sesrec"] == SESRecConfig()
