"""L_cl: query-item contrastive loss (handles query-item alignment).

With e_{q^t} the vector of the user's last query before t, I+_q the items clicked after
that query (or, for a click-less query, pseudo-positives from the diffusion job), cosine
similarity s and temperature beta:

    L_cl = -(1/|I+_q|) sum_{i in I+_q} log [ exp(s(e_q, e_i)/beta) / sum_{j not in I+_q} exp(s(e_q, e_j)/beta) ]

as the paper writes it (the denominator runs over negatives only; cosine similarity keeps
the loss bounded). The sum over all non-positive items is replaced by **in-batch
negatives**: the first positive item of every other sample, unless it is also one of this
sample's positives (a popular item can be clicked by many). Samples whose query has no
positive contribute nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def contrastive_loss(
    query: Tensor, positives: Tensor, positive_ids: Tensor, temperature: float
) -> Tensor:
    """query (B, d); positives (B, K, d); positive_ids (B, K) int64, 0 = padding."""
    mask = positive_ids > 0  # (B, K)
    q = F.normalize(query, dim=-1)  # (B, d)
    items = F.normalize(positives, dim=-1)  # (B, K, d)
    own = (items * q.unsqueeze(1)).sum(-1) / temperature  # (B, K): s(e_q, e_i) / beta
    candidates = items[:, 0]  # (B, d): each sample's first positive, the negative pool
    candidate_ids = positive_ids[:, 0]  # (B,)
    sims = (q @ candidates.t()) / temperature  # (B, B)
    # Column j is a negative for row b if it is a real item that is not among b's positives.
    # shared[b, j]: candidate j is one of b's positives, one (B, B) comparison per slot k
    # (a (B, K, B) comparison reduced over K cost twice as much). A padding slot (id 0)
    # matches only padding candidates, which are no negatives anyway.
    shared = positive_ids[:, :1] == candidate_ids.unsqueeze(0)  # (B, B)
    for k in range(1, positive_ids.shape[1]):
        shared |= positive_ids[:, k : k + 1] == candidate_ids.unsqueeze(0)
    negative = (candidate_ids > 0).unsqueeze(0) & ~shared  # (B, B)
    has_negative = negative.any(dim=-1)  # (B,)
    masked = sims.masked_fill(~negative, float("-inf"))
    masked = torch.where(has_negative.unsqueeze(-1), masked, torch.zeros_like(masked))
    log_denominator = torch.logsumexp(masked, dim=-1)  # (B,), finite everywhere
    per_positive = log_denominator.unsqueeze(-1) - own  # -log(exp(s)/sum_neg exp) per positive
    valid = (mask & has_negative.unsqueeze(-1)).to(query.dtype)  # (B, K)
    per_row = (per_positive * valid).sum(-1) / valid.sum(-1).clamp(min=1)
    rows = (valid.sum(-1) > 0).to(query.dtype)
    return (per_row * rows).sum() / rows.sum().clamp(min=1)
