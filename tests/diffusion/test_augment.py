"""x0 encoding, diffusion train -> augment on tiny, the manifest check, L_cl with pseudo-positives."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from app.cli import main
from queryrec.diffusion.category_reference import CategoryReference
from queryrec.diffusion.quality import CATEGORY_REFERENCE, paired_gap
from queryrec.diffusion.train import (
    DiffusionModel,
    DiffusionTrainConfig,
    load_model,
    training_pair,
)
from queryrec.diffusion.x0 import CLICKED, SHOWN, UNSEEN, ItemUniverse, build_x0, sessions_in
from queryrec.errors import QueryRecError
from queryrec.features.dataset import PreparedDataset
from queryrec.features.model_inputs import HistoryLengths
from queryrec.features.pseudo_positives import PseudoPositives, load_pseudo_positives
from queryrec.losses import contrastive_loss
from queryrec.training.batches import AuxiliaryConfig, BatchBuilder


def test_x0_encodes_clicked_shown_and_unseen(tiny_data: Path) -> None:
    dataset = PreparedDataset(tiny_data)
    row = int(np.flatnonzero(np.diff(dataset.clicked_offsets) > 0)[0])
    shown = dataset.shown_items[dataset.shown_offsets[row] : dataset.shown_offsets[row + 1]]
    clicked = dataset.clicked_items[dataset.clicked_offsets[row] : dataset.clicked_offsets[row + 1]]
    n_items = int(dataset.schema["vocab_sizes"]["items"])
    other = next(i for i in range(2, n_items) if i not in set(shown))
    universe = ItemUniverse.from_items(np.unique(np.concatenate([shown, [other]])), n_items)
    x0 = build_x0(dataset, universe, np.array([row]), hide_clicks=False)[0]
    assert x0[universe.column[clicked]].tolist() == [CLICKED] * len(clicked)
    unclicked = np.setdiff1d(shown, clicked)
    assert (x0[universe.column[unclicked]] == SHOWN).all()
    assert x0[universe.column[other]] == UNSEEN
    hidden = build_x0(dataset, universe, np.array([row]), hide_clicks=True)[0]
    assert (hidden[universe.column[shown]] == SHOWN).all()  # as if click-less


def test_x0_grades_shown_items_by_first_display_position() -> None:
    """Positions: item 5 first and again fourth (keeps the first place), 7 second, 9 third
    (clicked); item 3 is in the universe but not shown."""

    class Sessions:
        shown_offsets = np.array([0, 4])
        shown_items = np.array([5, 7, 9, 5])
        clicked_offsets = np.array([0, 1])
        clicked_items = np.array([9])

    sessions = cast(PreparedDataset, Sessions)
    universe = ItemUniverse.from_items(np.array([3, 5, 7, 9]), 10)
    rows = np.array([0])
    x0 = build_x0(sessions, universe, rows, hide_clicks=False, position_weight=0.5)[0]
    assert x0.tolist() == pytest.approx([UNSEEN, -0.5, -1 + 0.5 / math.log2(3), CLICKED])
    hidden = build_x0(sessions, universe, rows, hide_clicks=True, position_weight=0.5)[0]
    assert hidden[3] == pytest.approx(-1 + 0.5 / 2.0)  # the click keeps its shown value
    flat = build_x0(sessions, universe, rows, hide_clicks=True)[0]
    assert flat.tolist() == [UNSEEN, SHOWN, SHOWN, SHOWN]
    with pytest.raises(ValueError, match="position_weight"):
        build_x0(sessions, universe, rows, hide_clicks=True, position_weight=1.0)


def test_training_pair_hides_shown_items_and_keeps_only_their_clicks() -> None:
    """One session showing items 2..9 (0 = first), 4 and 7 clicked; item 1 never shown."""

    class Sessions:
        shown_offsets = np.array([0, 8])
        shown_items = np.arange(2, 10)
        clicked_offsets = np.array([0, 2])
        clicked_items = np.array([4, 7])

    sessions = cast(PreparedDataset, Sessions)
    universe = ItemUniverse.from_items(np.arange(1, 10), 10)
    model = DiffusionModel(
        cast(Any, None), cast(Any, None), universe, {"train": {"position_weight": 0.0}}
    )
    rows = np.array([0] * 64)  # the same session 64 times: many independent draws
    plain_view, plain_target = training_pair(
        model, sessions, rows, DiffusionTrainConfig(hide_share=0.0), np.random.default_rng(0)
    )
    assert plain_view[0].tolist() == [UNSEEN] + [SHOWN] * 8  # click-less view
    assert plain_target[0].tolist() == [
        UNSEEN,
        SHOWN,
        SHOWN,
        CLICKED,
        SHOWN,
        SHOWN,
        CLICKED,
        SHOWN,
        SHOWN,
    ]
    view, target = training_pair(
        model, sessions, rows, DiffusionTrainConfig(hide_share=0.5), np.random.default_rng(0)
    )
    hidden = (view == UNSEEN) & (plain_view == SHOWN)  # (64, 9)
    assert 0.3 < hidden[:, 1:].mean() < 0.7  # about half of the shown items, never item 1
    assert (target[~hidden] == plain_target[~hidden]).all()  # what the view shows: x0
    clicked = plain_target == CLICKED
    assert (target[hidden & clicked] == CLICKED).all()  # hidden clicks stay clicks
    assert (target[hidden & ~clicked] == UNSEEN).all()  # hidden non-clicks: never shown
    assert (hidden & clicked).any() and (hidden & ~clicked).any()


@pytest.fixture(scope="module")
def augmented(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A private copy of tiny, a diffusion model trained on it, and its augment output."""
    data = tmp_path_factory.mktemp("aug") / "data"
    shutil.copytree(tiny_data, data)
    model = data.parent / "diffusion"
    common = ["--data", str(data)]
    assert main(["diffusion", "train", *common, "--out", str(model), "--epochs", "2"]) == 0
    assert main(["diffusion", "augment", *common, "--model", str(model)]) == 0
    return data, model


def test_augment_writes_k_unshown_items_per_clickless_query(augmented: tuple[Path, Path]) -> None:
    data, model = augmented
    dataset = PreparedDataset(data)
    manifest = json.loads((data / "augment/manifest.json").read_text())
    assert manifest["schema_hash"] == dataset.content_hash and manifest["k"] == 4
    pseudo = load_pseudo_positives(dataset)
    assert pseudo is not None
    valid_start = int(dataset.schema["split"]["valid_start_ms"])
    clickless = sessions_in(dataset, 0, valid_start, clicked=False)
    assert manifest["sessions"] == len(clickless) > 0
    for row in clickless[:50]:
        items = pseudo.items[pseudo.offsets[row] : pseudo.offsets[row + 1]]
        shown = dataset.shown_items[dataset.shown_offsets[row] : dataset.shown_offsets[row + 1]]
        assert len(items) == 4 and len(set(items.tolist())) == 4
        assert not set(items.tolist()) & set(shown.tolist())  # known negatives removed
    clicked = np.flatnonzero(np.diff(dataset.clicked_offsets) > 0)
    assert (np.diff(pseudo.offsets)[clicked] == 0).all()  # clicked queries keep their clicks
    info = json.loads((model / "diffusion.json").read_text())
    assert info["best_epoch"] in (1, 2) and len(info["history"]) == 2
    quality = json.loads((model / "results.json").read_text())
    assert set(quality["methods"]) == {
        "diffusion", "popular shown items", "random shown items", "autoencoder (no diffusion)",
        "first shown positions (outside the three)",
    }  # fmt: skip
    assert all(0 <= m["recall"] <= 1 for m in quality["methods"].values())
    assert set(quality["recall_gaps"]) == set(quality["methods"]) - {"diffusion"}
    assert set(quality["unshown_methods"]) == {
        "diffusion", "popular items", "random unshown items", "autoencoder (no diffusion)",
        CATEGORY_REFERENCE,
    }  # fmt: skip
    assert all(0 <= m["recall"] <= 1 for m in quality["unshown_methods"].values())
    shares = manifest["main_category_share"]
    assert 0 <= shares["pseudo_positives"] <= 1 and shares["clicks_of_clicked_queries"] > 0.5
    assert "| diffusion |" in (model / "RESULTS.md").read_text()
    assert manifest["position_weight"] == info["train"]["position_weight"] == 0.5
    assert manifest["source"] == "diffusion"


def test_word_conditioned_denoiser_trains_and_augments(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    model, common = tmp_path / "diffusion", ["--data", str(data)]
    train = ["diffusion", "train", *common, "--out", str(model), "--epochs", "1"]
    words = tmp_path / "words.toml"
    words.write_text("[diffusion]\nquery_words = true\n")  # a research knob: a file key
    assert main([*train, "--config", str(words), "--no-references"]) == 0
    dataset = PreparedDataset(data)
    loaded = load_model(model, dataset, torch.device("cpu"))
    rows = sessions_in(dataset, 0, int(dataset.schema["split"]["valid_start_ms"]), clicked=False)
    bags = loaded.words(dataset, rows[:3])
    assert bags is not None and bags.shape == (3, dataset.schema["vocab_sizes"]["words"])
    assert np.allclose(bags.sum(axis=1), 1.0)  # a mean over each query's words
    assert main(["diffusion", "augment", *common, "--model", str(model)]) == 0
    pseudo = load_pseudo_positives(dataset)
    assert pseudo is not None and (np.diff(pseudo.offsets)[rows] == 4).all()


def test_diffusion_commands_share_the_training_device_choice(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`diffusion train` resolves --device like `queryrec train` (training/distributed.py)."""
    common = ["--data", str(tiny_data), "--out", str(tmp_path / "m"), "--no-references"]
    assert main(["diffusion", "train", *common, "--device", "tpu"]) == 2
    assert "--device must be auto, cpu or cuda, not 'tpu'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["diffusion", "train", *common, "--device", "cuda"]) == 2
        assert "no CUDA device is available" in capsys.readouterr().err


def test_quality_command_rewrites_the_table(
    augmented: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, model = augmented
    before = json.loads((model / "results.json").read_text())
    (model / "RESULTS.md").unlink()
    assert main(["diffusion", "quality", "--data", str(data), "--model", str(model)]) == 0
    assert json.loads((model / "results.json").read_text()) == before  # seeded: same numbers
    assert "95 % interval" in (model / "RESULTS.md").read_text()
    assert "| autoencoder (no diffusion) |" in capsys.readouterr().out


def test_pseudo_positives_of_another_dataset_are_refused(
    augmented: tuple[Path, Path], tmp_path: Path, tiny_data: Path
) -> None:
    data, _ = augmented
    manifest_path = data / "augment/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "augment/manifest.json").write_text(json.dumps({**manifest, "schema_hash": "f" * 64}))
    with pytest.raises(QueryRecError, match="made for dataset ffffffffffff"):
        load_pseudo_positives(PreparedDataset(copy))
    assert load_pseudo_positives(PreparedDataset(tiny_data)) is None  # never augmented


def test_a_model_of_another_dataset_is_refused(
    augmented: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, model = augmented
    other = tmp_path / "model"
    shutil.copytree(model, other)
    info = json.loads((other / "diffusion.json").read_text())
    (other / "diffusion.json").write_text(json.dumps({**info, "schema_hash": "e" * 64}))
    data, _ = augmented
    assert main(["diffusion", "augment", "--data", str(data), "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "trained on dataset eeeeeeeeeeee" in err and err.count("\n") == 1


def test_category_reference_ranks_the_main_shown_category_by_clicks() -> None:
    """Items 2-9; categories: 2-5 -> 10, 6-9 -> 20. Session 0 clicks 3 twice over (sessions
    0, 1) and 7 once (session 2); session 3 shows 2, 4 and 6: main category 10; session 2 shows 8 and 9: 20."""

    class Sessions:
        shown_offsets = np.array([0, 2, 4, 6, 9])
        shown_items = np.array([3, 6, 3, 8, 8, 9, 2, 4, 6])
        clicked_offsets = np.array([0, 1, 2, 3, 3])
        clicked_items = np.array([3, 3, 7])

    categories = np.array([0, 1, 10, 10, 10, 10, 20, 20, 20, 20])
    reference = CategoryReference(
        cast(PreparedDataset, Sessions), categories, fit_sessions=np.array([0, 1, 2])
    )
    assert reference.clicks.tolist() == [0, 0, 0, 2, 0, 0, 0, 1, 0, 0]
    assert reference.main_category(3) == 10
    scores = reference.scores(np.array([3]), np.array([3, 5, 7]))[0]
    assert scores.tolist() == [2 + 3, 0 + 3, 1]  # main category first, then by clicks
    assert reference.positives(np.array([3]), k=2).tolist() == [[3, 7]]  # shown ones removed
    assert reference.positives(np.array([2]), k=2).tolist() == [[7, 3]]  # main category 20
    with pytest.raises(ValueError, match="only 2 clicked items"):
        reference.positives(np.array([3]), k=3)
    with pytest.raises(ValueError, match="session 0 leaves 1 clicked item unshown"):
        reference.positives(np.array([0]), k=2)


def test_augment_with_the_category_reference(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("augment"))
    assert main(["diffusion", "augment", "--data", str(data), "--reference", "category"]) == 0
    assert "category reference" in capsys.readouterr().out
    dataset = PreparedDataset(data)
    manifest = json.loads((data / "augment/manifest.json").read_text())
    assert manifest["source"].startswith("category reference") and manifest["k"] == 4
    assert manifest["main_category_share"]["pseudo_positives"] > 0.9  # on topic by design
    pseudo = load_pseudo_positives(dataset)
    assert pseudo is not None
    assert (np.diff(pseudo.offsets) > 0).sum() == manifest["sessions"] > 0
    for flags, message in (
        ([], "give --model or --reference category"),
        (["--reference", "category", "--model", str(tmp_path)], "not both"),
        (["--reference", "topic"], "unknown reference 'topic'"),
    ):
        assert main(["diffusion", "augment", "--data", str(data), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_builder_gives_clickless_queries_their_pseudo_positives(tiny_data: Path) -> None:
    dataset = PreparedDataset(tiny_data)
    has_click = np.diff(dataset.clicked_offsets) > 0
    clickless, clicked = int(np.flatnonzero(~has_click)[0]), int(np.flatnonzero(has_click)[0])
    offsets = np.zeros(len(has_click) + 1, dtype=np.int64)
    offsets[clickless + 1 :] = 2  # session `clickless` gets items 7 and 9
    pseudo = PseudoPositives(offsets=offsets, items=np.array([7, 9]))
    builder = BatchBuilder(
        dataset, HistoryLengths(5, 3, 4),
        aux=AuxiliaryConfig(cl_positives=3), pseudo_positives=pseudo,
    )  # fmt: skip
    out = builder._last_query_positives(np.array([clickless, clicked, -1]))
    assert out[0].tolist() == [7, 9, 0]
    own = dataset.clicked_items[
        dataset.clicked_offsets[clicked] : dataset.clicked_offsets[clicked + 1]
    ]
    assert out[1].tolist() == [*own[:3].tolist(), *[0] * (3 - min(3, len(own)))]
    assert out[2].tolist() == [0, 0, 0]


def test_contrastive_loss_with_pseudo_positives_by_hand() -> None:
    """Row 0: a click-less query with pseudo-positives 7, 9; row 1: clicked item 5."""
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [0.0, 0.0]]])
    ids = torch.tensor([[7, 9], [5, 0]])
    beta = 0.5
    # Row 0: negatives = row 1's first positive (id 5, direction (0, 1)): s = 0.
    # Positives: s(q0, 7) = 1, s(q0, 9) = 1/sqrt(2).
    row0 = ((0 / beta - 1 / beta) + (0 / beta - (1 / math.sqrt(2)) / beta)) / 2
    # Row 1: negative = row 0's first positive (id 7, direction (1, 0)): s = 0; positive s = 1.
    row1 = 0 / beta - 1 / beta
    expected = (row0 + row1) / 2
    got = contrastive_loss(query, positives, ids, beta)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_paired_gap_interval() -> None:
    ours = np.array([1.0, 0.5, 1.0, 0.0])
    assert paired_gap(ours, ours, seed=0) == {"mean": 0.0, "low": 0.0, "high": 0.0}
    lead = paired_gap(ours, ours - 0.25, seed=0)
    assert lead["mean"] == pytest.approx(0.25) and lead["low"] == pytest.approx(0.25)
    mixed = paired_gap(np.array([1.0, 0.0] * 50), np.array([0.0, 1.0] * 50), seed=0)
    assert mixed["low"] < 0.0 < mixed["high"]  # wins and losses cancel: no lead


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"position_weight": 1.0}, "position weight must be in"),
        ({"sampling_steps": 6}, "sampling steps must be in"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"pointwise": -1}, "pointwise width"),
        ({"hide_share": 1.0}, "hide share must be in"),
    ],
)
def test_diffusion_train_config_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiffusionTrainConfig(**kwargs)
