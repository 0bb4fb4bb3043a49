"""The candidate's target attention over every SAS output position (served QueryRec).

The paper squeezes the query history into one candidate-independent vector, the SAS
output at the last position, so a user with several live intents is one point. Here the
candidate also attends over all positions (the SAS outputs h_1..h_L, each already
contextualised by the searches before it):

    a(c) = sum_i softmax_i(<W h_i, c> / sqrt(d)) h_i     over the valid slots

a scaled bilinear attention (DIN's activation unit per pair would cost an MLP per
(candidate, slot); this is one dot product). A user without a valid slot gets zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MASKED = -1e4  # a masked score: finite, so an all-masked row stays finite


class SearchAttention(nn.Module):
    """states (U, L, d), valid (U, L), candidates (N, d), pair_user (N,) or None -> (N, d)."""

    def __init__(self, dim: int):
        super().__init__()
        self.key = nn.Linear(dim, dim, bias=False)  # W
        self.scale = dim**-0.5

    def keys(self, states: Tensor) -> Tensor:
        """W h_i for every slot: (U, L, d) -> (U, L, d); candidate-independent, so the
        serving graph computes it once per user row."""
        return self.key(states)

    def forward(
        self,
        states: Tensor,
        valid: Tensor,
        candidate: Tensor,
        pair_user: Tensor | None = None,
    ) -> Tensor:
        keys = self.keys(states)
        if pair_user is not None:  # serving: one user row per request, many candidates
            keys, states, valid = keys[pair_user], states[pair_user], valid[pair_user]
        scores = (keys * candidate.unsqueeze(1)).sum(dim=-1) * self.scale  # (N, L)
        scores = scores.masked_fill(~valid, MASKED)
        weights = torch.softmax(scores, dim=-1) * valid.to(scores.dtype)  # (N, L)
        return (weights.unsqueeze(-1) * states).sum(dim=1)  # (N, d)
