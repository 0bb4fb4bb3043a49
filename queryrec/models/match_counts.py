"""Counts of how much of a user's history matches the candidate, computed inside the graph.

Gradient-boosted trees on this data put most of their split gain on one count: how many
of the user's feed clicks share the candidate's category. A DIN can only approximate it
(a sum of attention scores is not a count, and a few epochs do not get it there), so the
served QueryRec reads such counts as fields, computed from inputs it already has (the
click history, the query slots with their clicked results, and the candidate's own
category and caption columns):

| field | what |
|---|---|
| history, level 1 | feed clicks in the candidate's first-level category |
| history, level 2 | feed clicks in the candidate's second-level category |
| history share, level 2 | the same count over the number of feed clicks (10 bins) |
| searches by clicks | searches whose clicked results include the candidate's second-level category |
| searches by words | searches with a word of the candidate's caption |
| newest search | whether the most recent search matches by either rule |

A missing category (index 0) matches nothing. Counts are bucketed (0, 1, 2, 3-4, 5-8,
9-16, 17+) and each field embedded: a learned value per bucket, so the head needs no
assumption about how a count relates to a click.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FIELDS = 6
BUCKETS = 12  # codes below: counts 1..7, shares 1..10, a flag 1..2 (0 unused)
LEVEL_1, LEVEL_2 = 0, 1  # columns of the item category table


def count_code(count: Tensor) -> Tensor:
    """(...) counts >= 0 -> codes 1..7 for 0, 1, 2, 3-4, 5-8, 9-16, 17+."""
    code = 1 + (count >= 1).long() + (count >= 2).long() + (count >= 3).long()
    return code + (count >= 5).long() + (count >= 9).long() + (count >= 17).long()


def share_code(count: Tensor, total: Tensor) -> Tensor:
    """(...) count of total -> codes 1..10, the share in tenths (1.0 in the last bin)."""
    share = count.to(torch.float32) / total.to(torch.float32).clamp(min=1.0)
    return 1 + (share * 10).floor().long().clamp(0, 9)


class MatchCounts(nn.Module):
    """The count fields (module docstring) for N candidates of U user rows -> FIELDS of
    (N, d)."""

    def __init__(self, dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(BUCKETS, dim) for _ in range(FIELDS))

    def codes(
        self,
        candidate_categories: Tensor,
        candidate_caption: Tensor,
        history_categories: Tensor,
        history_valid: Tensor,
        query_tokens: Tensor,
        clicked_categories: Tensor,
        clicked_mask: Tensor,
        valid: Tensor,
    ) -> list[Tensor]:
        """Per candidate (row i of every input; user rows already gathered per pair):
        candidate_categories (N, 4), candidate_caption (N, Tc) words (0 = padding),
        history_categories (N, H, 4) of the feed clicks, history_valid (N, H) bool,
        query_tokens (N, L, T), clicked_categories (N, L, K, 4), clicked_mask (N, L, K),
        valid (N, L) slots that hold a search -> FIELDS codes (N,) each."""
        level_1 = candidate_categories[:, LEVEL_1]  # (N,)
        level_2 = candidate_categories[:, LEVEL_2]
        same_1 = history_categories[..., LEVEL_1] == level_1.unsqueeze(1)  # (N, H)
        same_2 = history_categories[..., LEVEL_2] == level_2.unsqueeze(1)
        in_level_1 = (same_1 & history_valid & (level_1 > 0).unsqueeze(1)).sum(dim=-1)  # (N,)
        in_level_2 = (same_2 & history_valid & (level_2 > 0).unsqueeze(1)).sum(dim=-1)
        by_clicks = (
            ((clicked_categories[..., LEVEL_2] == level_2.view(-1, 1, 1)) & clicked_mask).any(
                dim=-1
            )
            & valid
            & (level_2 > 0).unsqueeze(1)
        )  # (N, L)
        words = query_tokens.unsqueeze(-1) == candidate_caption.view(
            candidate_caption.shape[0], 1, 1, -1
        )  # (N, L, T, Tc)
        words = words & (query_tokens > 0).unsqueeze(-1)
        by_words = words.flatten(2).any(dim=-1) & valid  # (N, L)
        newest = (by_clicks | by_words)[:, -1]  # (N,): slot L-1 is the most recent
        return [
            count_code(in_level_1),
            count_code(in_level_2),
            share_code(in_level_2, history_valid.sum(dim=-1)),
            count_code(by_clicks.sum(dim=-1)),
            count_code(by_words.sum(dim=-1)),
            1 + newest.long(),
        ]

    def forward(self, codes: list[Tensor]) -> list[Tensor]:
        """FIELDS codes (N,) -> FIELDS embedded fields (N, d)."""
        return [table(code) for table, code in zip(self.tables, codes, strict=True)]
