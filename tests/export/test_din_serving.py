"""The DIN serving rewrite computes what the trained backbone computes, in torch."""

from __future__ import annotations

import pytest
import torch

from export.din_serving import DINServingHead, supports
from queryrec.models.config import ModelConfig, Vocab
from queryrec.models.dcn import DCNBackbone
from queryrec.models.din import DINBackbone

VOCAB = Vocab(
    users=3, items=9, words=5, authors=3, categories=(2, 2, 2, 2), item_types=2, profile=()
)


@pytest.mark.parametrize("pair_counts", [(7,), (3, 1, 5), (1, 1)])
def test_serving_head_matches_the_backbone(pair_counts: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    d, length, n_fields = 8, 6, 4  # fields: 2 per user, 2 per pair (slots 0, 1 | 2, 3)
    backbone = DINBackbone(ModelConfig(vocab=VOCAB, dim=d, attention_mlp=(5,)), n_fields, 0)
    with torch.no_grad():  # slopes of both signs and sizes, unlike a fresh PReLU's 0.25
        backbone.attention.act.weight.uniform_(-1.5, 1.5)
    users = len(pair_counts)
    pair_user = torch.repeat_interleave(torch.arange(users), torch.tensor(pair_counts))
    n = int(pair_user.shape[0])
    user_fields = torch.randn(users, 2, d)
    pair_fields = torch.randn(n, 2, d)
    candidate = torch.randn(n, d)
    history = torch.randn(users, length, d)
    mask = torch.rand(users, length) > 0.3
    mask[:, 0] = False  # a padded slot in every row
    history = history * mask.unsqueeze(-1)  # the serving graph zeroes padded rows

    # Trained layout: [fields..., candidate, interest]; slots 0, 1 per user, 2, 3 per pair.
    fields = [user_fields[pair_user, 0], user_fields[pair_user, 1]]
    fields += [pair_fields[:, 0], pair_fields[:, 1]]
    want = backbone(fields, candidate, history, mask, [], pair_user)
    head = DINServingHead(backbone, user_slots=[0, 1], pair_slots=[2, 3, 4, 5])
    got = head(
        user_fields,
        torch.cat([pair_fields, candidate.unsqueeze(1)], 1),
        candidate,
        history,
        pair_user,
    )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_only_one_layer_din_units_are_rewritten() -> None:
    cfg = ModelConfig(vocab=VOCAB, dim=8)
    assert supports(DINBackbone(cfg, 3, 0))
    assert not supports(DINBackbone(ModelConfig(vocab=VOCAB, dim=8, attention_mlp=(6, 4)), 3, 0))
    assert not supports(DCNBackbone(cfg, 3, 0))
