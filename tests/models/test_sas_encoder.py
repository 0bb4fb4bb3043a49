"""SAS encoder masks: padding never matters, the future never leaks into the past."""

from __future__ import annotations

import torch

from queryrec.models.config import ModelConfig, Vocab
from queryrec.models.sas_encoder import SASEncoder

VOCAB = Vocab(
    users=5, items=5, words=5, authors=3, categories=(3, 3, 3, 3), item_types=3, profile=(3,)
)


def _encoder(length: int = 8) -> SASEncoder:
    torch.manual_seed(0)
    encoder = SASEncoder(ModelConfig(vocab=VOCAB, dim=16, query_history=length, sas_heads=2))
    return encoder.eval()


def test_amount_and_content_of_padding_do_not_change_the_output() -> None:
    encoder = _encoder(length=8)
    queries = torch.randn(3, 4, 16)  # three users, four real queries each
    outputs = []
    for pad in (0, 2, 4):
        filler = torch.randn(3, pad, 16) * 100  # garbage in padded slots
        vectors = torch.cat([filler, queries], dim=1)
        valid = torch.cat(
            [torch.zeros(3, pad, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool)], 1
        )
        outputs.append(encoder(vectors, valid))
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.testing.assert_close(outputs[0], outputs[2])


def test_a_later_query_never_changes_an_earlier_position() -> None:
    encoder = _encoder(length=6)
    vectors = torch.randn(2, 6, 16)
    valid = torch.ones(2, 6, dtype=torch.bool)
    before = encoder.encode_positions(vectors, valid)
    changed = vectors.clone()
    changed[:, 4:] = torch.randn(2, 2, 16)  # a different future
    after = encoder.encode_positions(changed, valid)
    torch.testing.assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_users_without_queries_get_the_learned_no_query_vector() -> None:
    encoder = _encoder(length=4)
    vectors = torch.randn(2, 4, 16)
    valid = torch.tensor([[False] * 4, [False, False, True, True]])
    out = encoder(vectors, valid)
    torch.testing.assert_close(out[0], encoder.no_query.detach())
    assert not torch.allclose(out[1], encoder.no_query.detach())
