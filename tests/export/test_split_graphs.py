"""The split CTR graph (`CTRUserGraph` then `CTRPairGraph`) against the single graph
(`CTRGraph`) and the trained model, in PyTorch and through ONNX Runtime: the same scores
at several shapes, with users without any history and unknown items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.graphs import (
    CTRGraph,
    CTRPairGraph,
    CTRUserGraph,
    ctr_inputs,
    pair_graph_inputs,
    splits,
    user_graph_inputs,
)
from export.parity import draw_inputs, encoder_reference, run_split
from queryrec.evaluation.bundle_scoring import cpu_session
from queryrec.features.dataset import PreparedDataset
from queryrec.features.graph_feeds import graph_feed
from queryrec.features.model_inputs import ModelInputs
from queryrec.models.ctr_model import CTRModel
from queryrec.training.checkpoint import load_checkpoint

SHAPES = [(1, 1), (1, 100), (3, 7), (4, 500)]  # (user rows, pairs)


@pytest.fixture(scope="module")
def model(queryrec_run: Path, tiny_data: Path) -> CTRModel:
    loaded, _ = load_checkpoint(queryrec_run, PreparedDataset(tiny_data))
    return loaded.eval()


def hard_inputs(model: CTRModel, users: int, pairs: int, seed: int) -> ModelInputs[np.ndarray]:
    """Random inputs whose first user row has no click and no search, and whose every
    fourth candidate is the unknown item (index 1)."""
    inputs = draw_inputs(model, users, pairs, np.random.default_rng(seed))
    empty = {
        name: value.copy()
        for name, value in inputs.user_fields().items()
        if name.startswith(("click_", "query_"))
    }
    for value in empty.values():
        value[0] = 0
    item = inputs.item.copy()
    item[::4] = 1
    return inputs.replace(item=item, **empty)


def tensors(names: tuple[str, ...], feed: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(feed[name]) for name in names]


@pytest.mark.parametrize(("users", "pairs"), SHAPES)
def test_split_modules_score_as_the_single_graph_and_the_model(
    model: CTRModel, users: int, pairs: int
) -> None:
    assert splits(model)
    single, user, pair = CTRGraph(model), CTRUserGraph(model), CTRPairGraph(model)
    inputs = hard_inputs(model, users, pairs, seed=users * 1000 + pairs)
    with torch.no_grad():
        torch_inputs = inputs.map(torch.from_numpy)
        encoded = encoder_reference(model, torch_inputs)
        want = torch.sigmoid(model.score(torch_inputs)).numpy()
        whole = single(*tensors(ctr_inputs(model), graph_feed(ctr_inputs(model), inputs, encoded)))
        side = user(*tensors(user.names, graph_feed(user_graph_inputs(model), inputs, encoded)))
        computed = {**encoded, **{n: v.numpy() for n, v in zip(user.outputs, side, strict=True)}}
        split = pair(*tensors(pair.names, graph_feed(pair_graph_inputs(model), inputs, computed)))
    assert split.shape == (pairs,)
    np.testing.assert_allclose(split.numpy(), whole.numpy(), atol=1e-6)
    np.testing.assert_allclose(split.numpy(), want, atol=1e-6)


def test_the_user_side_does_not_depend_on_the_hour_or_the_candidates(model: CTRModel) -> None:
    """The hour is folded into the pair graph's table, so a cached user side stays valid
    across hours; the candidates are not among the user graph's inputs at all."""
    user = CTRUserGraph(model)
    assert "hour" not in user.names and "item" not in user.names
    assert "hour" in pair_graph_inputs(model)


@pytest.mark.parametrize(("users", "pairs"), SHAPES)
def test_the_exported_split_graphs_score_as_ctr_onnx(
    model: CTRModel, bundle: Path, users: int, pairs: int
) -> None:
    ctr = cpu_session(bundle / "ctr.onnx")
    user, pair = cpu_session(bundle / "ctr_user.onnx"), cpu_session(bundle / "ctr_pair.onnx")
    inputs = hard_inputs(model, users, pairs, seed=7 + users + pairs)
    with torch.no_grad():
        encoded = encoder_reference(model, inputs.map(torch.from_numpy))
    single = ctr.run(None, graph_feed(ctr_inputs(model), inputs, encoded))[0]
    split = run_split(model, user, pair, inputs, encoded)
    np.testing.assert_allclose(split, single, atol=1e-6)
