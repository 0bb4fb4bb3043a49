"""L_next: next-item prediction from the query representation (handles interest shift).

For user u at time t, with e_q the query representation at t:

    L_next = -(1/n_pos) sum_{j in r+} log sigma(<e_q, e_j>)
             -(1/n_neg) sum_{k in r-} log(1 - sigma(<e_q, e_k>))

r+ (P items) are draws from u's feed clicks in the window after t; r- (N items) are
draws from the window's feed impressions of every user (or u's own non-clicked ones),
with every item of u's r+ of that window removed, as the paper's r- = shown and not
clicked by u asks. The sampling, stated exactly, is in `queryrec.training.batches`
("L_next sampling").

The seed writes log <e, e>; a dot product is not a probability, so sigma is applied.
Samples with no positive (no negative) in the window contribute no positive (negative)
term; the loss is the mean over samples of the terms they have.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def next_item_loss(
    query: Tensor,
    positives: Tensor,
    positive_mask: Tensor,
    negatives: Tensor,
    negative_mask: Tensor,
) -> Tensor:
    """query (B, d); positives (B, P, d) + mask (B, P); negatives (B, N, d) + mask (B, N)."""
    pos_scores = (positives * query.unsqueeze(1)).sum(-1)  # (B, P)
    neg_scores = (negatives * query.unsqueeze(1)).sum(-1)  # (B, N)
    pos_mask, neg_mask = positive_mask.to(query.dtype), negative_mask.to(query.dtype)
    # -log sigma(s) = softplus(-s); -log(1 - sigma(s)) = softplus(s)
    pos_term = (F.softplus(-pos_scores) * pos_mask).sum(1) / pos_mask.sum(1).clamp(min=1)
    neg_term = (F.softplus(neg_scores) * neg_mask).sum(1) / neg_mask.sum(1).clamp(min=1)
    has_any = ((pos_mask.sum(1) + neg_mask.sum(1)) > 0).to(query.dtype)  # (B,)
    return ((pos_term + neg_term) * has_any).sum() / has_any.sum().clamp(min=1)
