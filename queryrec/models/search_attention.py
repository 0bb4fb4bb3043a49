"""The candidate's target attention over every SAS output position (an option of QueryRec).

Off in the served model: it paid on none of the datasets of docs/RESULTS.md
(`queryrec-with-target-attention` reproduces that). The paper squeezes the query history
into one candidate-independent vector, the SAS output at the last position, so a user with
several live intents is one point. Here the candidate also attends over all positions (the SAS outputs h_1..h_L, each already
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
        if pair_user is not None:  # serving: one user row per request, many candidates
            return self._per_user_rows(states, valid, candidate, pair_user)
        scores = (self.keys(states) * candidate.unsqueeze(1)).sum(dim=-1) * self.scale  # (N, L)
        weights = self._weights(scores, valid)
        return (weights.unsqueeze(-1) * states).sum(dim=1)  # (N, d)

    def _weights(self, scores: Tensor, valid: Tensor) -> Tensor:
        """(N, L) scores, valid -> softmax over the valid slots (zeros on a row without)."""
        scores = scores.masked_fill(~valid, MASKED)
        return torch.softmax(scores, dim=-1) * valid.to(scores.dtype)

    def _per_user_rows(
        self, states: Tensor, valid: Tensor, candidate: Tensor, pair_user: Tensor
    ) -> Tensor:
        """The same function as `forward` on states gathered per pair, without gathering
        them: <W h, c> = <h, c W>, so each candidate's scores against every user row's
        slots are one (N, d) x (d, U L) product, of which each keeps its own user's L
        columns; the pooling is one (N, U L) x (U L, d) product with the weights placed in
        the pair's own columns. U is a handful of requests, L tens of slots, so this is
        far less work than copying (N, L, d) states per candidate."""
        users, length, dim = states.shape
        flat = states.reshape(users * length, dim)  # (U L, d)
        all_scores = (candidate @ self.key.weight) @ flat.t()  # (N, U L)
        columns = pair_user.unsqueeze(1) * length + torch.arange(length, device=states.device)
        scores = all_scores.gather(1, columns) * self.scale  # (N, L)
        weights = self._weights(scores, valid.index_select(0, pair_user))
        placed = torch.zeros_like(all_scores).scatter(1, columns, weights)  # (N, U L)
        return placed @ flat  # (N, d)
