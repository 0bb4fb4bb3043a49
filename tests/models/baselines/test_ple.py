"""PLE: the extraction level's gates, the search task's loss, the search samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from queryrec.features.dataset import PreparedDataset
from queryrec.models.baselines.ple import FEED, SEARCH, ExtractionLevel, PLEModel
from queryrec.models.config import PLEConfig
from queryrec.models.registry import build_model, model_config
from queryrec.training.batches import BatchBuilder
from queryrec.training.objective import to_tensors
from queryrec.training.task_inputs import SearchImpressions


def test_a_uniform_gate_averages_its_task_and_shared_experts() -> None:
    torch.manual_seed(0)
    level = ExtractionLevel(in_dim=4, expert=(3,), shared=2, per_task=1)
    for gate in [*level.task_gates, level.shared_gate]:
        torch.nn.init.zeros_(gate.weight)
        torch.nn.init.zeros_(gate.bias)
    x = [torch.randn(5, 4) for _ in range(3)]
    feed, search, shared = level(x)
    # One expert per task: task k's is level.task[k]. Task k mixes its own expert (on x[k]) and the 2 shared ones (on x[-1]), 1/3 each.
    expected_feed = (level.task[FEED](x[FEED]) + sum(e(x[-1]) for e in level.shared)) / 3
    expected_search = (level.task[SEARCH](x[SEARCH]) + sum(e(x[-1]) for e in level.shared)) / 3
    every = [level.task[FEED](x[FEED]), level.task[SEARCH](x[SEARCH])]
    expected_shared = (sum(every) + sum(e(x[-1]) for e in level.shared)) / 4
    torch.testing.assert_close(feed, expected_feed)
    torch.testing.assert_close(search, expected_search)
    torch.testing.assert_close(shared, expected_shared)


@pytest.fixture(scope="module")
def dataset(tiny_data: Path) -> PreparedDataset:
    return PreparedDataset(tiny_data)


def test_search_impressions_are_the_training_sessions_shown_items(
    dataset: PreparedDataset,
) -> None:
    impressions = SearchImpressions(dataset)
    train_end = dataset.schema["split"]["valid_start_ms"]
    expected = []
    for s in range(len(dataset.search_ts)):
        if dataset.search_ts[s] >= train_end:
            continue
        shown = dataset.shown_items[dataset.shown_offsets[s] : dataset.shown_offsets[s + 1]]
        clicked = set(
            dataset.clicked_items[dataset.clicked_offsets[s] : dataset.clicked_offsets[s + 1]]
        )
        expected += [(s, int(item), float(item in clicked)) for item in shown]
    got = list(
        zip(
            impressions.session.tolist(),
            impressions.item.tolist(),
            impressions.label.tolist(),
            strict=True,
        )
    )
    assert got == expected
    assert 0 < impressions.label.mean() < 1


def test_the_search_loss_is_the_weighted_cross_entropy_of_the_search_task(
    dataset: PreparedDataset,
) -> None:
    cfg = model_config("ple", dataset.schema, ple=PLEConfig(search_weight=0.5))
    torch.manual_seed(0)
    model = build_model("ple", dataset, cfg)
    assert isinstance(model, PLEModel)
    builder = BatchBuilder(dataset, cfg.history_lengths, training_inputs=PLEModel.training_inputs)
    arrays = builder.split_arrays("train", with_aux=False)
    batch = to_tensors(
        builder.build(arrays, np.arange(64), np.random.default_rng(0)), torch.device("cpu")
    )
    task = batch.inputs.search_task
    assert task is not None
    assert task.inputs.user.shape == (64,) and task.inputs.query_tokens.shape[1:] == (
        1,
        cfg.query_tokens,
    )
    out = model.forward_with_query(batch.inputs)
    logits = model.search_logits(task.inputs)
    p = torch.sigmoid(logits.double())
    y = task.label.double()
    by_hand = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean().detach() * 0.5
    assert float(out.losses["L_search"].detach()) == pytest.approx(float(by_hand), rel=1e-5)
    # Evaluation batches carry no search draw: the feed task alone.
    plain = builder.build(arrays, np.arange(8))
    assert plain.inputs.search_task is None
    assert model.forward_with_query(to_tensors(plain, torch.device("cpu")).inputs).losses == {}
