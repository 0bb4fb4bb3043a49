"""SESRec: the similar / dissimilar split, its two losses by hand, a run, and its export
(served scores equal the offline ones)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor

from queryrec.features.model_inputs import ModelInputs
from queryrec.models.baselines.sesrec import (
    CoAttention,
    SESRecModel,
    alignment_loss,
    split_interest,
    triplet_loss,
)
from queryrec.models.config import ModelConfig, SESRecConfig, Vocab


def _lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


def test_split_interest_by_the_one_over_n_gate() -> None:
    weights = torch.tensor(
        [
            [0.0, 0.5, 0.3, 0.2],  # n = 3: 0.5 >= 1/3 similar; 0.3 and 0.2 dissimilar
            [0.0, 0.0, 0.0, 1.0],  # n = 1: nothing below 1/1 -> dissimilar = the whole row
            [0.0, 0.0, 0.0, 0.0],  # no valid position
        ]
    )
    valid = torch.tensor(
        [[False, True, True, True], [False, False, False, True], [False, False, False, False]]
    )
    similar, dissimilar = split_interest(weights, valid)
    assert similar.tolist() == [
        [False, True, False, False],
        [False, False, False, True],
        [False, False, False, False],
    ]
    assert dissimilar.tolist() == [
        [False, False, True, True],
        [False, False, False, True],
        [False, False, False, False],
    ]


def test_co_attention_finds_the_search_entries_that_match_the_rec_interest() -> None:
    """Rec history about direction e0 (plus one off-topic item along e3); search history:
    two queries about e0, one about e2 and a padded slot. With W = I and both gates = e0,
    the e0 entries of each side are the similar part, the rest the dissimilar part."""
    e = torch.eye(4)
    rec = torch.stack([e[0] * 0, e[0], e[3], 0.9 * e[0]]).unsqueeze(0)  # slot 0 padded
    rec_valid = torch.tensor([[False, True, True, True]])
    search = torch.stack([e[1] * 5, e[0], e[2], 0.8 * e[0]]).unsqueeze(0)  # slot 0 padded
    search_valid = torch.tensor([[False, True, True, True]])
    co = CoAttention(4)
    with torch.no_grad():
        co.affinity.weight.copy_(torch.eye(4))
        co.rec_gate.weight.copy_(e[0:1])
        co.search_gate.weight.copy_(e[0:1])
    rec_weights, search_weights = co(rec, search, rec_valid, search_valid)
    assert rec_weights[0, 0] == 0 and search_weights[0, 0] == 0  # padding
    torch.testing.assert_close(rec_weights.sum(), torch.tensor(1.0))
    torch.testing.assert_close(search_weights.sum(), torch.tensor(1.0))
    # Search slot j scores sum_i (e0 . r_i) tanh(r_i . s_j): 1 * tanh(1) + 0.9 * tanh(0.9)
    # for s = e0, 0 for s = e2; the padded rec slot and the e3 item add nothing.
    t = math.tanh
    scores = [1 * t(1) + 0.9 * t(0.9), 0.0, 1 * t(0.8) + 0.9 * t(0.72)]
    total = sum(math.exp(s) for s in scores)
    torch.testing.assert_close(
        search_weights[0, 1:], torch.tensor([math.exp(s) / total for s in scores])
    )
    rec_similar, rec_dissimilar = split_interest(rec_weights, rec_valid)
    search_similar, search_dissimilar = split_interest(search_weights, search_valid)
    assert rec_similar.tolist() == [[False, True, False, True]]
    assert rec_dissimilar.tolist() == [[False, False, True, False]]
    assert search_similar.tolist() == [[False, True, False, True]]
    assert search_dissimilar.tolist() == [[False, False, True, False]]


def test_alignment_loss_by_hand() -> None:
    """Three pairs, W = I, temperature 0.5; pairs 0 and 2 share their item (excluded as
    each other's negatives)."""
    tau = 0.5
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.0]])
    excluded = torch.tensor([[True, False, True], [False, True, False], [True, False, True]])
    # q_i . v_j: row 0 -> 1, 0, 0.5; row 1 -> 0, 2, 0; row 2 -> 1, 2, 0.5.
    s = [[math.tanh(x) / tau for x in row] for row in ([1, 0, 0.5], [0, 2, 0], [1, 2, 0.5])]
    to_items = [
        _lse(s[0][0], s[0][1]) - s[0][0],  # j = 2 excluded
        _lse(s[1][0], s[1][1], s[1][2]) - s[1][1],
        _lse(s[2][1], s[2][2]) - s[2][2],  # j = 0 excluded
    ]
    to_queries = [
        _lse(s[0][0], s[1][0]) - s[0][0],  # i = 2 excluded
        _lse(s[0][1], s[1][1], s[2][1]) - s[1][1],
        _lse(s[1][2], s[2][2]) - s[2][2],  # i = 0 excluded
    ]
    expected = 0.5 * (sum(to_items) / 3 + sum(to_queries) / 3)
    loss = alignment_loss(queries, items, torch.eye(2), excluded, tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_triplet_loss_by_hand() -> None:
    anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0], [9.0, 9.0]])
    positive = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    negative = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    rows = torch.tensor([True, True, False])  # row 2 has no proper split: left out
    # Row 0: 5 - 1 + 0.1 = 4.1; row 1: 1 - 2 + 0.1 < 0 -> 0.
    loss = triplet_loss(anchor, positive, negative, rows, margin=0.1)
    assert loss.item() == pytest.approx((4.1 + 0.0) / 2, rel=1e-6)
    assert triplet_loss(anchor, positive, negative, rows & False, 0.1).item() == 0.0


def _tiny_model(**settings: float) -> SESRecModel:
    vocab = Vocab(
        users=5, items=30, words=20, authors=6, categories=(4, 4, 4, 4), item_types=3, profile=(3,)
    )
    side = {
        "author": torch.randint(0, 6, (30,)),
        "item_type": torch.randint(0, 3, (30,)),
        "categories": torch.randint(0, 4, (30, 4)),
        "caption": torch.randint(0, 20, (30, 5)) * (torch.rand(30, 5) > 0.3),
    }
    cfg = ModelConfig(
        vocab=vocab,
        dim=8,
        click_history=6,
        query_history=3,
        sesrec=SESRecConfig(**settings),
    )
    return SESRecModel(cfg, side)


def _tiny_batch() -> ModelInputs[Tensor]:
    """Four samples; sample 0 has no feed click and no query (all padding)."""
    click_history = torch.randint(2, 30, (4, 6))
    click_history[0] = 0
    click_history[1, :3] = 0
    query_tokens = torch.randint(2, 20, (4, 3, 4))
    query_tokens[0] = 0
    query_tokens[2, 0] = 0
    query_clicks = torch.randint(0, 30, (4, 3, 2))
    query_clicks[0] = 0
    return ModelInputs(
        user=torch.tensor([1, 2, 3, 4]),
        hour=torch.tensor([0, 5, 12, 23]),
        profile=torch.randint(0, 3, (4, 1)),
        click_history=click_history,
        query_tokens=query_tokens,
        query_age=(query_tokens > 0).any(-1).long(),
        item=torch.tensor([5, 6, 7, 8]),
        query_clicks=query_clicks,
    )


def _forward(model: SESRecModel, batch: ModelInputs[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    out = model.forward_with_query(batch)
    return out.logits, out.losses


def test_model_is_finite_on_empty_histories_and_weights_its_losses() -> None:
    torch.manual_seed(0)
    batch = _tiny_batch()
    torch.manual_seed(1)
    model = _tiny_model(cl_weight=1.0, triplet_weight=1.0)
    logits, losses = _forward(model, batch)
    assert logits.shape == (4,) and torch.isfinite(logits).all()
    assert set(losses) == {"L_sesrec_cl", "L_sesrec_triplet"}
    total = logits.sum() + losses["L_sesrec_cl"] + losses["L_sesrec_triplet"]
    torch.autograd.backward(total)
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name
    torch.manual_seed(1)
    halved = _tiny_model(cl_weight=0.5, triplet_weight=0.25)
    _, halved_losses = _forward(halved, batch)
    for name, factor in (("L_sesrec_cl", 0.5), ("L_sesrec_triplet", 0.25)):
        assert halved_losses[name].item() == pytest.approx(factor * losses[name].item())
    model.eval()
    with torch.no_grad():
        eval_logits, eval_losses = _forward(model, batch)
        # The score path (what offline prediction and the CTR graph call) reads the
        # search clicks from the inputs: they change the score.
        torch.testing.assert_close(model.score(batch), eval_logits)
        no_clicks = batch.replace(query_clicks=torch.zeros_like(batch.query_clicks))
        assert not torch.allclose(model.score(no_clicks), eval_logits)
    assert eval_losses == {} and torch.isfinite(eval_logits).all()


@pytest.fixture(scope="module")
def sesrec_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.cli import main

    run = tmp_path_factory.mktemp("runs") / "sesrec"
    args = ["train", "--data", str(tiny_data), "--model", "sesrec", "--out", str(run)]
    assert main([*args, "--epochs", "1"]) == 0
    return run


@pytest.mark.slow
def test_one_epoch_through_the_cli(sesrec_run: Path) -> None:
    metrics = json.loads((sesrec_run / "metrics.json").read_text())
    assert math.isfinite(metrics["valid"]["auc"]) and math.isfinite(metrics["test"]["auc"])
    history = metrics["history"][0]
    assert math.isfinite(history["train_L_sesrec_cl"])
    assert math.isfinite(history["train_L_sesrec_triplet"])


@pytest.mark.slow
def test_it_exports_and_serves_what_it_scores_offline(
    sesrec_run: Path, tiny_data: Path, tmp_path: Path, redis_client_url: str
) -> None:
    """Servable: the CTR graph is the model's own forward per pair (no encoder graph),
    fed the search clicks; every served score is the offline score of its impression."""
    from tests.clients.test_replay import serves_what_it_scores_offline

    manifest = serves_what_it_scores_offline(sesrec_run, tiny_data, tmp_path, redis_client_url)
    assert set(manifest["graphs"]) == {"ctr"}
    assert "query_clicks" in manifest["graphs"]["ctr"]["inputs"]
    assert manifest["reads"] == ["query_clicks"]
