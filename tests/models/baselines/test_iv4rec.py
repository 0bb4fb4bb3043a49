"""IV4REC+: the item instruments, the stage-one losses, the decomposition and recombination."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from queryrec.features.dataset import PreparedDataset
from queryrec.features.item_queries import item_query_table
from queryrec.features.model_inputs import ModelInputs
from queryrec.features.query_identity import normalised_query_ids
from queryrec.models.baselines.iv4rec import (
    IV4RecModel,
    IVItemTower,
    IVUserNet,
    gated_mix,
    stage_one_loss,
)
from queryrec.models.registry import build_model, model_config


def test_stage_one_loss_by_hand() -> None:
    fitted = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    treatment = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]], requires_grad=True)
    valid = torch.tensor([True, False, True])
    # rows 0 and 2: ((1 + 4) / 2 + (0 + 1) / 2) / 2 = (2.5 + 0.5) / 2
    loss = stage_one_loss(fitted, treatment, valid)
    assert float(loss.detach()) == pytest.approx(1.5)
    loss.backward()  # type: ignore[no-untyped-call]
    assert treatment.grad is None  # the treatment is detached: stage one fits the instrument
    assert fitted.grad is not None
    assert (
        float(stage_one_loss(fitted, treatment, torch.zeros(3, dtype=torch.bool)).detach()) == 0.0
    )


def test_recombination_is_the_gated_mix_of_fitted_and_treatment() -> None:
    gate = nn.Linear(4, 2)
    nn.init.zeros_(gate.weight)
    nn.init.zeros_(gate.bias)  # g = 0.5 everywhere
    fitted, treatment = torch.tensor([[2.0, 4.0]]), torch.tensor([[0.0, -2.0]])
    torch.testing.assert_close(gated_mix(gate, fitted, treatment), torch.tensor([[1.0, 1.0]]))
    nn.init.constant_(gate.bias, 50.0)  # g -> 1: the causal (fitted) part only
    torch.testing.assert_close(gated_mix(gate, fitted, treatment), fitted)


@pytest.fixture(scope="module")
def dataset(tiny_data: Path) -> PreparedDataset:
    return PreparedDataset(tiny_data)


def test_item_queries_are_the_training_clicks_queries_ranked_by_count(
    dataset: PreparedDataset,
) -> None:
    table = item_query_table(dataset, queries=3, tokens=4)
    query_id = normalised_query_ids(dataset.query_offsets, dataset.query_words)
    train_end = dataset.schema["split"]["valid_start_ms"]
    counts: dict[int, Counter[int]] = {}
    first_session: dict[tuple[int, int], int] = {}
    for s in range(len(dataset.search_ts)):
        if dataset.search_ts[s] >= train_end:
            continue
        for item in dataset.clicked_items[
            dataset.clicked_offsets[s] : dataset.clicked_offsets[s + 1]
        ]:
            counts.setdefault(int(item), Counter())[int(query_id[s])] += 1
            first_session.setdefault((int(item), int(query_id[s])), s)
    checked = 0
    for item in range(table.shape[0]):
        ranked = sorted(counts.get(item, Counter()).items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        for rank in range(3):
            if rank < len(ranked):
                s = first_session[(item, ranked[rank][0])]
                words = dataset.query_words[
                    dataset.query_offsets[s] : dataset.query_offsets[s + 1]
                ][:4]
                expected = list(words) + [0] * (4 - len(words))
                checked += 1
            else:
                expected = [0, 0, 0, 0]
            assert table[item, rank].tolist() == expected, (item, rank)
    assert checked > 0


def test_the_item_decomposition_on_a_constructed_table() -> None:
    """Item 2 has two queries (words 3 and 4, 5), item 3 none: item 3 keeps its plain
    vector; item 2's fitted part is the fit MLP of the mean of its query vectors, and
    its vector the gated mix of fitted and plain."""
    from queryrec.models.config import ModelConfig, Vocab

    vocab = Vocab(
        users=3, items=4, words=6, authors=2, categories=(2, 2, 2, 2), item_types=2, profile=(2,)
    )
    cfg = ModelConfig(vocab=vocab, dim=4)
    words = nn.Embedding(6, 4, padding_idx=0)
    side = {
        "author": torch.zeros(4, dtype=torch.long),
        "item_type": torch.zeros(4, dtype=torch.long),
        "categories": torch.zeros(4, 4, dtype=torch.long),
        "caption": torch.zeros(4, 2, dtype=torch.long),
    }
    queries = torch.zeros(4, 2, 2, dtype=torch.long)
    queries[2, 0] = torch.tensor([3, 0])
    queries[2, 1] = torch.tensor([4, 5])
    tower = IVItemTower(cfg, words, side, queries)
    items = torch.tensor([2, 3])
    plain = tower.treatment(items)
    got = tower.base(items)
    torch.testing.assert_close(got[1], plain[1])
    query_mean = (words.weight[3] + (words.weight[4] + words.weight[5]) / 2) / 2
    fitted = tower.fit(query_mean)
    torch.testing.assert_close(tower.fitted(items)[0][0], fitted)
    torch.testing.assert_close(got[0], gated_mix(tower.gate, fitted, plain[0]))
    assert tower.fitted(items)[1].tolist() == [True, False]


def test_user_instrument_encoder_is_zero_without_queries_and_finite() -> None:
    from queryrec.models.config import ModelConfig, Vocab

    vocab = Vocab(
        users=3, items=4, words=6, authors=2, categories=(2, 2, 2, 2), item_types=2, profile=(2,)
    )
    net = IVUserNet(ModelConfig(vocab=vocab, dim=4))
    vectors = torch.randn(2, 3, 4)
    valid = torch.tensor([[False, True, True], [False, False, False]])
    with torch.no_grad():
        out = net(vectors, valid)
    assert torch.isfinite(out).all()
    assert float(out[1].abs().sum()) == 0.0
    assert float(out[0].abs().sum()) > 0.0


def test_the_model_reports_both_stage_one_losses_in_training_only(
    dataset: PreparedDataset,
) -> None:
    model = build_model("iv4rec", dataset, model_config("iv4rec", dataset.schema))
    assert isinstance(model, IV4RecModel)
    b = 6
    user = torch.arange(2, 2 + b)
    item = torch.arange(2, 2 + b)
    inputs = ModelInputs(
        user=user,
        hour=torch.zeros(b, dtype=torch.long),
        profile=torch.ones(b, len(model.cfg.vocab.profile), dtype=torch.long),
        click_history=torch.randint(2, 10, (b, 5)),
        query_tokens=torch.randint(2, 10, (b, 3, 4)),
        query_age=torch.ones(b, 3, dtype=torch.long),
        item=item,
    )
    model.train()
    losses = model.forward_with_query(inputs).losses
    assert set(losses) == {"L_iv_user", "L_iv_item"}
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    assert model.forward_with_query(inputs).losses == {}
