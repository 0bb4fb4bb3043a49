"""Counts of how much of a user's history matches the candidate, computed inside the graph.

Gradient-boosted trees on this data put most of their split gain on one count: how many
of the user's feed clicks share the candidate's category. A DIN can only approximate it
(a sum of attention scores is not a count, and a few epochs do not get it there), so the
served QueryRec reads such counts as fields, computed from inputs it already has (the
click history, the query slots with their clicked results, and the candidate's own
category and caption columns). Every count is how often one of the candidate's properties
occurs in one multiset of the user's history:

| field | the candidate's | occurrences among |
|---|---|---|
| history, level 1 | first-level category | the feed clicks' first-level categories |
| history, level 2 | second-level category | the feed clicks' second-level categories |
| history share, level 2 | | the same count over the number of feed clicks (10 bins) |
| search clicks | second-level category | the clicked results of the recent searches |
| search words | caption words | the words of the recent searches |
| newest search | caption words and category | the newest search's words and clicked results (a flag: any) |
| history caption words | caption words | the words of the feed clicks' captions |
| history caption share | | the same count over the number of feed clicks (10 bins) |

Occurrences count with multiplicity (a caption word found twice in the searches counts
twice); words are compared by `word_key` (index mod 2^16, the width of the serving
graph's per-user tables). Being sums over the history, every count factorises into a
per-user table and a lookup per candidate, which is how the serving graph computes them
(`export.match_counts_serving`: once per user row instead of once per candidate). The
caption-word counts are the lexical twin of the category counts: where categories are a
coarse read-out of what an item is about (on the latent generator's data they are),
shared caption words still say it. A missing category (index 0) and a padding word (0)
match nothing. Counts are bucketed (0, 1, 2, 3-4, 5-8, 9-16, 17+) and each field
embedded: a learned value per bucket, so the head needs no assumption about how a count
relates to a click.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

FIELDS = 8
BUCKETS = 12  # codes below: counts 1..7, shares 1..10, a flag 1..2 (0 unused)
LEVEL_1, LEVEL_2 = 0, 1  # columns of the item category table
WORD_KEYS = 1 << 16  # words are compared by index mod this


def word_key(words: Tensor) -> Tensor:
    """Word indices -> the keys they are compared by (index mod WORD_KEYS)."""
    return torch.remainder(words, WORD_KEYS)


def count_code(count: Tensor) -> Tensor:
    """(...) counts >= 0 -> codes 1..7 for 0, 1, 2, 3-4, 5-8, 9-16, 17+."""
    code = 1 + (count >= 1).long() + (count >= 2).long() + (count >= 3).long()
    return code + (count >= 5).long() + (count >= 9).long() + (count >= 17).long()


def share_tenth(count: Tensor, total: Tensor) -> Tensor:
    """(...) count of total -> the share in tenths 0..9 (1.0 and more: 9), computed as
    floor(10 * count / total) in float32 (the serving graph computes the same)."""
    tenth = count.to(torch.float32) * 10 / total.to(torch.float32).clamp(min=1.0)
    return tenth.floor().long().clamp(0, 9)


def share_code(count: Tensor, total: Tensor) -> Tensor:
    """(...) count of total -> codes 1..10, the share in tenths."""
    return 1 + share_tenth(count, total)


class Matches(NamedTuple):
    """The raw counts of N candidates (module table), each (N,)."""

    in_level_1: Tensor
    in_level_2: Tensor
    clicks: Tensor  # feed clicks in the history
    search_clicks: Tensor
    search_words: Tensor
    newest: Tensor  # matches in the newest search (the field is whether there is one)
    history_words: Tensor


def occurrences(values: Tensor, valid: Tensor, wanted: Tensor) -> Tensor:
    """How often each row's wanted values occur among its values: values (N, M),
    valid (N, M) bool, wanted (N, J) (0: nothing wanted) -> (N,) sum over j of the
    valid values equal to wanted[:, j]."""
    equal = values.unsqueeze(-1) == wanted.unsqueeze(1)  # (N, M, J)
    equal = equal & valid.unsqueeze(-1) & (wanted > 0).unsqueeze(1)
    return equal.flatten(1).sum(dim=-1)


def pair_matches(
    candidate_categories: Tensor,
    candidate_caption: Tensor,
    history_categories: Tensor,
    history_valid: Tensor,
    history_captions: Tensor,
    query_tokens: Tensor,
    clicked_categories: Tensor,
    clicked_mask: Tensor,
    valid: Tensor,
) -> Matches:
    """The counts, candidate by candidate (row i of every input; user rows gathered per
    pair): candidate_categories (N, 4), candidate_caption (N, Tc) words (0 = padding),
    history_categories (N, H, 4) of the feed clicks, history_valid (N, H) bool,
    history_captions (N, H, Tc) their caption words, query_tokens (N, L, T),
    clicked_categories (N, L, K, 4) of each slot's clicked results, clicked_mask (N, L, K),
    valid (N, L) slots that hold a search (slot L - 1 is the newest)."""
    n = candidate_categories.shape[0]
    level_1 = candidate_categories[:, LEVEL_1 : LEVEL_1 + 1]  # (N, 1)
    level_2 = candidate_categories[:, LEVEL_2 : LEVEL_2 + 1]
    caption = word_key(candidate_caption) * (candidate_caption > 0)  # (N, Tc), 0: none
    clicked = clicked_categories[..., LEVEL_2]  # (N, L, K)
    clicked_ok = clicked_mask & valid.unsqueeze(-1)
    words = word_key(query_tokens)  # (N, L, T)
    words_ok = (query_tokens > 0) & valid.unsqueeze(-1)
    history_words_ok = (history_captions > 0) & history_valid.unsqueeze(-1)
    newest = occurrences(words[:, -1], words_ok[:, -1], caption)
    newest = newest + occurrences(clicked[:, -1], clicked_ok[:, -1], level_2)
    return Matches(
        in_level_1=occurrences(history_categories[..., LEVEL_1], history_valid, level_1),
        in_level_2=occurrences(history_categories[..., LEVEL_2], history_valid, level_2),
        clicks=history_valid.sum(dim=-1),
        search_clicks=occurrences(clicked.reshape(n, -1), clicked_ok.reshape(n, -1), level_2),
        search_words=occurrences(words.reshape(n, -1), words_ok.reshape(n, -1), caption),
        newest=newest,
        history_words=occurrences(
            word_key(history_captions).reshape(n, -1), history_words_ok.reshape(n, -1), caption
        ),
    )


class MatchCounts(nn.Module):
    """The counts (module docstring) of N candidates -> FIELDS embedded fields (N, d)."""

    def __init__(self, dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(BUCKETS, dim) for _ in range(FIELDS))

    def forward(self, matches: Matches) -> list[Tensor]:
        codes = [
            count_code(matches.in_level_1),
            count_code(matches.in_level_2),
            share_code(matches.in_level_2, matches.clicks),
            count_code(matches.search_clicks),
            count_code(matches.search_words),
            1 + (matches.newest > 0).long(),
            count_code(matches.history_words),
            share_code(matches.history_words, matches.clicks),
        ]
        return [table(code) for table, code in zip(self.tables, codes, strict=True)]
