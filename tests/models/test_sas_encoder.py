"""SAS encoder masks: padding never matters, the future never leaks into the past, and a
search without words (not a valid query) hides no history."""

from __future__ import annotations

import torch

from queryrec.features.model_inputs import ModelInputs
from queryrec.models.config import ModelConfig, Vocab
from queryrec.models.ctr_model import CTRModel
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


def test_a_wordless_newest_search_keeps_the_history_for_the_papers_model() -> None:
    """`queryrec-paper` (CTRModel with the query tower): a search without words is not a
    valid query, so a history whose newest slot is one represents the user as the same
    history without that slot (the state of the newest worded query, at the same
    position), not as the "no query" vector of a user without searches."""
    torch.manual_seed(0)
    side = {
        "author": torch.randint(0, 3, (5,)),
        "item_type": torch.randint(0, 3, (5,)),
        "categories": torch.randint(0, 3, (5, 4)),
        "caption": torch.randint(0, 5, (5, 2)),
    }
    cfg = ModelConfig(vocab=VOCAB, dim=16, query_history=4, query_tokens=2, use_query=True)
    model = CTRModel(cfg, "din", side).eval()

    def inputs(tokens: list[list[int]], ages: list[int]) -> ModelInputs[torch.Tensor]:
        return ModelInputs(
            user=torch.tensor([1]),
            hour=torch.tensor([3]),
            profile=torch.tensor([[1]]),
            click_history=torch.tensor([[0, 2]]),
            query_tokens=torch.tensor([tokens]),
            query_age=torch.tensor([ages]),
            item=torch.tensor([3]),
        )

    worded = [[1, 2], [3, 0], [4, 1]]
    without = inputs([[0, 0], *worded], [0, 4, 3, 2])  # three searches, left-padded
    wordless_newest = inputs([*worded, [0, 0]], [4, 3, 2, 1])  # ... then one without words
    assert model.sas is not None
    with torch.no_grad():
        kept = model.query_representation(wordless_newest)
        torch.testing.assert_close(kept, model.query_representation(without))
        assert not torch.allclose(kept[0], model.sas.no_query, atol=1e-3)
        # The history still matters: other words in the older slots give another vector.
        other = inputs([[2, 2], [4, 4], [3, 3], [0, 0]], [4, 3, 2, 1])
        assert not torch.allclose(model.query_representation(other), kept, atol=1e-3)
        # ... and so the model's score is the one of the history without that slot.
        torch.testing.assert_close(model.score(wordless_newest), model.score(without))
    # A user whose only search has no words has no query: the learned "no query" vector.
    only_wordless = inputs([[0, 0], [0, 0], [0, 0], [0, 0]], [0, 0, 0, 1])
    with torch.no_grad():
        torch.testing.assert_close(model.query_representation(only_wordless)[0], model.sas.no_query)
