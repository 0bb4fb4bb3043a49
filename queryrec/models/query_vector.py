"""The query vector e_q: masked mean of a query's word embeddings, optionally projected."""

from __future__ import annotations

from torch import Tensor, nn

from queryrec.models.layers import masked_mean


class QueryVector(nn.Module):
    """Word tokens of one or many queries -> one d-dim vector per query.

    The word table is passed in, so it can be shared with item captions.
    """

    def __init__(self, words: nn.Embedding, project: bool):
        super().__init__()
        self.words = words
        dim = words.embedding_dim
        self.projection: nn.Module = nn.Linear(dim, dim) if project else nn.Identity()

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (..., T) int64, 0 = padding -> (..., d); an all-padding query gives proj(0)."""
        return self.projection(masked_mean(self.words(tokens), tokens > 0))
