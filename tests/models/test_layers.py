"""Shared layers: the item tower's one-pass lookup and the written-out PReLU of DIN's unit."""

from __future__ import annotations

import torch
from torch import nn

from queryrec.models.config import ModelConfig, Vocab
from queryrec.models.layers import ItemTower


def test_lookup_matches_separate_calls() -> None:
    torch.manual_seed(0)
    vocab = Vocab(
        users=3, items=30, words=20, authors=6, categories=(4, 4, 4, 4), item_types=3, profile=()
    )
    side = {
        "author": torch.randint(0, 6, (30,)),
        "item_type": torch.randint(0, 3, (30,)),
        "categories": torch.randint(0, 4, (30, 4)),
        "caption": torch.randint(0, 20, (30, 5)) * (torch.rand(30, 5) > 0.3),
    }
    tower = ItemTower(ModelConfig(vocab=vocab, dim=8), nn.Embedding(20, 8, padding_idx=0), side)
    full_ids = torch.randint(0, 30, (4, 3))
    history = torch.randint(0, 30, (4, 7))
    base, caption, history_base = tower.lookup(full_ids, history)
    torch.testing.assert_close(base, tower.base(full_ids))
    torch.testing.assert_close(caption, tower.caption(full_ids))
    torch.testing.assert_close(base + caption, tower(full_ids))
    torch.testing.assert_close(history_base, tower.base(history))


def test_attention_unit_prelu_matches_the_module() -> None:
    from queryrec.models.layers import TargetAttention

    torch.manual_seed(0)
    unit = TargetAttention(8, (6,), 0.0)
    with torch.no_grad():
        unit.act.weight.uniform_(-1, 1)
    x = torch.randn(5, 7, 6)
    written_out = x.clamp(min=0) + unit.act.weight * x.clamp(max=0)
    torch.testing.assert_close(written_out, unit.act(x.transpose(1, 2)).transpose(1, 2))
