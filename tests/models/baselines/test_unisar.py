"""UniSAR: the merge by time, the transition masks, the two alignment losses by hand, the
model on padded batches, one CLI epoch and its export (served scores equal the offline
ones)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from app.cli import main
from queryrec.features.model_inputs import ModelInputs
from queryrec.models.baselines.unisar import (
    PAD,
    REC,
    SEARCH,
    MaskedBlock,
    UniSARModel,
    merge_by_time,
    query_item_alignment_loss,
    transition_alignment_loss,
    transition_masks,
)
from queryrec.models.config import ModelConfig, UniSARConfig, Vocab
from queryrec.models.ctr_model import CTROutput

VOCAB = Vocab(
    users=5, items=9, words=12, authors=3, categories=(3, 3, 3, 3), item_types=3, profile=(3,)
)


def _cross_entropy(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target], in plain floats."""
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def _allowed(mask: torch.Tensor) -> dict[int, set[int]]:
    """(N, N) bool -> {row: the columns it may attend to} for rows with any."""
    return {i: set(mask[i].nonzero().flatten().tolist()) for i in range(len(mask)) if mask[i].any()}


# --- merge by time and masks ---------------------------------------------------------


def test_merge_orders_both_sequences_by_time_padding_first() -> None:
    # Feed clicks (left-padded): pad, 300, 100, 20 minutes before t.
    click_minutes = torch.tensor([[0, 300, 100, 20]])
    click_valid = torch.tensor([[False, True, True, True]])
    # Queries: pad, 200, 20 and one issued within the last minute (0 minutes, still valid).
    query_minutes = torch.tensor([[0, 200, 20, 0]])
    query_valid = torch.tensor([[False, True, True, True]])
    merged = merge_by_time(click_minutes, click_valid, query_minutes, query_valid)
    # Concatenated indices: clicks 0..3, queries 4..7. Oldest first; the two paddings in
    # front (in concatenation order); the click and the query 20 minutes ago: click first.
    assert merged.order.tolist() == [[0, 4, 1, 5, 2, 3, 6, 7]]
    assert merged.types.tolist() == [[PAD, PAD, REC, SEARCH, REC, REC, SEARCH, SEARCH]]


def test_merge_keeps_the_order_of_events_of_one_type_in_the_same_minute() -> None:
    merged = merge_by_time(
        torch.tensor([[5, 5, 5]]),
        torch.tensor([[True, True, True]]),
        torch.tensor([[9, 5]]),
        torch.tensor([[True, True]]),
    )
    assert merged.order.tolist() == [[3, 0, 1, 2, 4]]


def test_transition_masks_say_who_attends_to_whom() -> None:
    #          0    1    2       3    4       5
    types = torch.tensor([[PAD, REC, SEARCH, REC, SEARCH, REC]])
    masks = {name: mask[0] for name, mask in transition_masks(types).items()}
    # Within a type: earlier or same position of that type.
    assert _allowed(masks["r2r"]) == {1: {1}, 3: {1, 3}, 5: {1, 3, 5}}
    assert _allowed(masks["s2s"]) == {2: {2}, 4: {2, 4}}
    # Across types: strictly earlier behaviours of the other type; the first click has
    # no search before it, so its s2r row is empty.
    assert _allowed(masks["s2r"]) == {3: {2}, 5: {2, 4}}
    assert _allowed(masks["r2s"]) == {2: {1}, 4: {1, 3}}
    for mask in masks.values():  # padding neither attends nor is attended to
        assert not mask[0].any() and not mask[:, 0].any()


def test_within_type_masks_are_the_causal_masks_of_each_sequence() -> None:
    """What lets the model run r2r / s2s on each type's own sequence (cheaper)."""
    merged = merge_by_time(
        torch.tensor([[0, 50, 40, 10, 5]]),
        torch.tensor([[False, True, True, True, True]]),
        torch.tensor([[45, 30, 1]]),
        torch.tensor([[True, True, True]]),
    )
    masks = transition_masks(merged.types)
    for name, kind in (("r2r", REC), ("s2s", SEARCH)):
        where = (merged.types[0] == kind).nonzero().flatten()
        own = masks[name][0][where][:, where]
        assert torch.equal(own, torch.ones(len(where), len(where), dtype=torch.bool).tril())


def test_a_row_without_keys_gets_no_attention_update() -> None:
    torch.manual_seed(0)
    block = MaskedBlock(8, 2, 0.0).eval()
    x = torch.randn(1, 3, 8)
    allowed = torch.tensor([[[False, False, False], [True, True, False], [True, True, True]]])
    before = block(x, allowed)
    changed = x.clone()
    changed[0, 1:] += 3 * torch.randn(2, 8)  # other positions change; row 0 reads none
    after = block(changed, allowed)
    assert torch.isfinite(before).all()
    torch.testing.assert_close(before[0, 0], after[0, 0])
    assert not torch.allclose(before[0, 2], after[0, 2])


# --- the alignment losses by hand ----------------------------------------------------


def test_transition_alignment_loss_by_hand() -> None:
    a = torch.tensor([[1.0], [0.5]])  # user 0 and 1, view 1 (e.g. mean s2r)
    b = torch.tensor([[2.0], [-1.0]])  # view 2 (e.g. mean r2r)
    weight, tau = torch.tensor([[1.0]]), 0.5
    z = [1.0, 0.5, 2.0, -1.0]

    def sim(i: int, j: int) -> float:
        return math.tanh(z[i] * z[j]) / tau

    # Each view against the three others (itself excluded); its partner is k +- 2.
    expected = 0.0
    for k, partner in ((0, 2), (1, 3), (2, 0), (3, 1)):
        others = [j for j in range(4) if j != k]
        expected += _cross_entropy([sim(k, j) for j in others], others.index(partner))
    expected /= 4
    got = transition_alignment_loss(a, b, weight, tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_query_item_alignment_loss_by_hand() -> None:
    queries = torch.tensor([[1.0], [0.0], [-1.0]])
    items = torch.tensor([[0.5], [1.0], [0.5]])
    weight, tau = torch.tensor([[2.0]]), 1.0
    item_ids = torch.tensor([7, 8, 7])  # pairs 0 and 2: the same item
    query_ids = torch.tensor([0, 0, 1])  # pairs 0 and 1: the same query slot
    t = math.tanh
    # query -> items, 2 q i: row 0 drops item 2 (same id), row 2 drops item 0.
    to_items = [
        _cross_entropy([t(2 * 1.0 * 0.5), t(2 * 1.0 * 1.0)], 0),
        _cross_entropy([0.0, 0.0, 0.0], 1),
        _cross_entropy([t(2 * -1.0 * 1.0), t(2 * -1.0 * 0.5)], 1),
    ]
    # item -> queries, 2 i q: rows 0 and 1 drop each other (same query slot).
    to_queries = [
        _cross_entropy([t(2 * 0.5 * 1.0), t(2 * 0.5 * -1.0)], 0),
        _cross_entropy([t(0.0), t(2 * 1.0 * -1.0)], 0),
        _cross_entropy([t(2 * 0.5 * 1.0), t(0.0), t(2 * 0.5 * -1.0)], 2),
    ]
    expected = 0.5 * (sum(to_items) / 3 + sum(to_queries) / 3)
    got = query_item_alignment_loss(queries, items, weight, tau, query_ids, item_ids)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_losses_without_two_views_are_zero_and_keep_the_graph() -> None:
    weight = torch.eye(2, requires_grad=True)
    one = torch.ones(1, 2, requires_grad=True)
    loss = transition_alignment_loss(one, one, weight, 0.1)
    assert loss.item() == 0.0
    loss.backward()  # type: ignore[no-untyped-call]
    assert weight.grad is not None
    ids = torch.tensor([1])
    assert query_item_alignment_loss(one, one, weight, 0.5, ids, ids).item() == 0.0


# --- the model on a hand-made batch --------------------------------------------------


def _model(**settings: float) -> UniSARModel:
    cfg = ModelConfig(
        vocab=VOCAB,
        dim=8,
        click_history=5,
        query_history=4,
        query_tokens=3,
        caption_tokens=2,
        mlp=(16,),
        attention_mlp=(8,),
        sas_heads=2,
        unisar=UniSARConfig(**{"feed_length": 4, "search_length": 4, **settings}),
    )
    side = {
        "author": torch.tensor([0, 1, 1, 2, 2, 1, 2, 1, 2]),
        "item_type": torch.tensor([0, 1, 2, 1, 2, 1, 2, 1, 2]),
        "categories": torch.tensor([[0] * 4] + [[1, 2, 1, 2]] * 8),
        "caption": torch.tensor([[0, 0]] + [[i % 11 + 1, 0] for i in range(8)]),
    }
    torch.manual_seed(0)
    return UniSARModel(cfg, side)


def _batch(extra_query_padding: int = 0) -> ModelInputs[torch.Tensor]:
    """User 1 has clicks and searches, user 2 clicks only, user 3 nothing at all."""
    queries = torch.tensor(
        [
            [[0, 0, 0], [3, 4, 0], [5, 0, 0]],
            [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
            [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
        ]
    )
    clicks = torch.tensor([[[0, 0], [2, 3], [4, 0]], [[0, 0]] * 3, [[0, 0]] * 3])
    minutes = torch.tensor([[0, 90, 5], [0, 0, 0], [0, 0, 0]])
    pad = extra_query_padding
    return ModelInputs(
        user=torch.tensor([1, 2, 3]),
        hour=torch.tensor([3, 4, 5]),
        profile=torch.tensor([[1], [2], [1]]),
        click_history=torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 6, 7], [0, 0, 0, 0, 0]]),
        query_tokens=torch.cat([torch.zeros(3, pad, 3, dtype=torch.long), queries], 1),
        query_age=torch.zeros(3, 3 + pad, dtype=torch.long),
        item=torch.tensor([5, 6, 7]),
        query_clicks=torch.cat([torch.zeros(3, pad, 2, dtype=torch.long), clicks], 1),
        query_minutes=torch.cat([torch.zeros(3, pad, dtype=torch.long), minutes], 1),
        click_minutes=torch.tensor([[0, 200, 100, 50, 1], [0, 0, 0, 30, 2], [0] * 5]),
    )


def _forward(model: UniSARModel, batch: ModelInputs[torch.Tensor]) -> CTROutput:
    return model.forward_with_query(batch)


def test_training_pass_is_finite_on_users_without_clicks_or_searches() -> None:
    model = _model().train()
    out = _forward(model, _batch())
    assert torch.isfinite(out.logits).all()
    assert set(out.losses) == {"L_unisar_align", "L_unisar_qi"}
    total = out.logits.sum() + torch.stack(list(out.losses.values())).sum()
    total.backward()  # type: ignore[no-untyped-call]
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name


def test_more_left_padding_changes_no_logit() -> None:
    model = _model().eval()
    with torch.no_grad():
        plain = _forward(model, _batch()).logits
        padded = _forward(model, _batch(extra_query_padding=1)).logits
    torch.testing.assert_close(plain, padded)
    assert _forward(model, _batch()).losses == {}  # the loss terms are training only


def test_loss_terms_are_weighted_by_the_config() -> None:
    base = _forward(_model().train(), _batch()).losses
    doubled = _forward(_model(align_weight=0.2, qi_weight=0.002).train(), _batch()).losses
    for name in base:
        assert doubled[name].item() == pytest.approx(2 * base[name].item(), rel=1e-5)
    assert _forward(_model(qi_weight=0.0).train(), _batch()).losses.keys() == {"L_unisar_align"}


def test_unknown_setting_and_missing_inputs_are_refused() -> None:
    with pytest.raises(TypeError, match="feed_lenght"):
        _model(feed_lenght=3)
    assert UniSARModel.reads == {"query_clicks", "query_minutes", "click_minutes"}
    for name in sorted(UniSARModel.reads):
        with pytest.raises(ValueError, match=rf"UniSAR needs the inputs \['{name}'\]"):
            _model()(_batch().replace(**{name: None}))


# --- CLI and export ------------------------------------------------------------------


@pytest.fixture(scope="module")
def unisar_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "unisar"
    code = main(
        ["train", "--data", str(tiny_data), "--out", str(run), "--model", "unisar",
         "--epochs", "1", "--seed", "0"]
    )  # fmt: skip
    assert code == 0
    return run


@pytest.mark.slow
def test_one_epoch_through_the_cli(unisar_run: Path) -> None:
    metrics = json.loads((unisar_run / "metrics.json").read_text())
    assert math.isfinite(metrics["valid"]["auc"]) and math.isfinite(metrics["test"]["auc"])
    assert metrics["valid"]["auc"] > 0.5 and metrics["test"]["auc"] > 0.5  # above chance
    assert metrics["history"][0]["train_L_unisar_align"] > 0


@pytest.mark.slow
def test_it_exports_and_serves_what_it_scores_offline(
    unisar_run: Path, tiny_data: Path, tmp_path: Path, redis_client_url: str
) -> None:
    """Servable: the CTR graph is the model's own forward per pair (no encoder graph),
    fed the search clicks and the minutes of every behaviour; every served score is the
    offline score of its impression."""
    from tests.clients.test_replay import serves_what_it_scores_offline

    manifest = serves_what_it_scores_offline(unisar_run, tiny_data, tmp_path, redis_client_url)
    assert set(manifest["graphs"]) == {"ctr"}
    assert manifest["reads"] == ["click_minutes", "query_clicks", "query_minutes"]
    assert set(manifest["reads"]) <= set(manifest["graphs"]["ctr"]["inputs"])
