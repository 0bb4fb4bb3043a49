"""Query slots with their clicked results: the SAS encoder's input for the served QueryRec.

The paper's query vector e_q reads a search's words only. A search's clicked results say
what the user wanted from it more directly than its words do (SESRec and UniSAR read them
too), and they live in the same item tables the candidate is scored with. So each slot of
the query history becomes

    x_i = e_{q_i} (words) + age_i + mean_k e_{c_ik} (its clicked results, 0 if none) + kind_i

where kind_i embeds where the slot's results come from: none, clicked by the user, or
(`slot_positives`) the diffusion job's pseudo-positives for a search without clicks
(`queryrec.features.query_positives`). A slot is valid when it holds a
search that has words or clicked results: a search without words but with clicks is
information, not padding.
"""

from __future__ import annotations

from torch import Tensor, nn

from queryrec.models.layers import masked_mean

SOURCES = 3  # `query_click_source`: none, clicked, pseudo-positives


def slot_valid(has_words: Tensor, clicked_mask: Tensor) -> Tensor:
    """has_words (U, L), clicked_mask (U, L, K) -> (U, L): the slot holds a search with
    words or clicked results (the rule, for the encoder and the CTR graph alike)."""
    return has_words | clicked_mask.any(dim=-1)


class QuerySlots(nn.Module):
    """Slot vectors (U, L, d) and validity (U, L) from words, ages and clicked results."""

    def __init__(self, dim: int):
        super().__init__()
        self.kind = nn.Embedding(SOURCES, dim)  # by query_click_source

    def forward(
        self,
        word_vectors: Tensor,
        has_words: Tensor,
        clicked: Tensor,
        clicked_mask: Tensor,
        source: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """word_vectors (U, L, d) e_q + age, has_words (U, L) bool, clicked (U, L, K, d)
        item vectors of the slot's results, clicked_mask (U, L, K) bool, source (U, L)
        int64 (`query_click_source`) -> (slot vectors (U, L, d), valid (U, L))."""
        vectors = word_vectors + masked_mean(clicked, clicked_mask) + self.kind(source)
        return vectors, slot_valid(has_words, clicked_mask)
