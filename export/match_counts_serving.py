"""The served QueryRec's match counts rewritten for serving: one per-user table, then lookups.

`queryrec.models.match_counts.pair_matches` counts, for every candidate, how often its
categories and caption words occur in the user's history: (N, H) category comparisons,
(N, L, T, Tc) search-word and (N, H, Tc, Tc) caption-word comparisons. At serving a
request is one user and many candidates, and those comparisons repeat the user's side for
every candidate (about 10 ms of ONNX Runtime for 100 candidates on one core). Each count
is a sum over a multiset of the user's history, so it factorises: per user row, one
table of how often each value occurs in each multiset (one `scatter_add`, the multisets
side by side at their own offsets); per candidate, one lookup of its own categories and
caption words in its user's table. Identical counts (integers held exactly in float32),
at O(U * history) + O(N * Tc) instead of O(N * history * Tc), in a few dozen operations
(ONNX Runtime's per-operation overhead, not arithmetic, is the cost at these sizes).

The embedding of the counts is rewritten too: each field's embedding is tabled at export
by the count itself (0..17: 17 and more share the last bucket) or by the share's tenth,
and the head folds those tables into its first layer (`export.graphs`), so that the
fields are one lookup. The parity check compares the whole graph with the trained model.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from queryrec.models.match_counts import (
    LEVEL_1,
    LEVEL_2,
    WORD_KEYS,
    MatchCounts,
    count_code,
    share_tenth,
    word_key,
)

LARGEST_COUNT = 17  # count_code gives every count from here on the same bucket
COUNT_ROWS = LARGEST_COUNT + 1
# MatchCounts' fields by kind: counts index their table by the count, shares by the
# tenth, the flag by 0 / 1.
_COUNTED = (
    0,
    1,
    3,
    4,
    6,
)  # in_level_1, in_level_2, searches_by_clicks, search_words, history_words
_SHARES = (2, 7)  # share of in_level_2, share of history_words
_FLAG = 5  # newest


class ServingCounts(nn.Module):
    """User rows and candidate pairs -> which row of `fields` embeds each count field,
    the embeddings being equal to `MatchCounts(pair_matches(...))` on the same inputs
    gathered per pair.

    The table's multisets lie side by side at `offsets`: [history level 1 | history level
    2 | search clicks' level 2 | newest search clicks' level 2 | search words | history
    caption words | newest search words]. What depends on the item alone (its keys in
    each multiset, and whether it is wanted at all) is tabled at export."""

    history_keys: Tensor  # (N_items, 2 + Tc) an item's keys as a feed click
    history_weights: Tensor  # (N_items, 2 + Tc) 1, or 0 for a padding caption word
    click_keys: Tensor  # (N_items, 2) an item's keys as a clicked result (any / newest search)
    candidate_keys: Tensor  # (N_items, 4 + 3 Tc) the keys a candidate looks up
    candidate_wanted: Tensor  # (N_items, 4 + 3 Tc) 1 where that key counts (not 0 / missing)
    fields: Tensor  # (5 * COUNT_ROWS + 2 * 10 + 2, d): every field's embedding by value
    row_field: Tensor  # (5 * COUNT_ROWS + 2 * 10 + 2,): the field each row of `fields` embeds

    def __init__(
        self,
        counts: MatchCounts,
        item_categories: Tensor,
        item_caption: Tensor,
        category_sizes: tuple[int, ...],
    ):
        super().__init__()
        n1, n2 = category_sizes[LEVEL_1], category_sizes[LEVEL_2]
        a, b, c, d = 0, n1, n1 + n2, n1 + 2 * n2
        self.words_at = n1 + 3 * n2  # search words; then history caption and newest words
        self.width = self.words_at + 3 * WORD_KEYS
        if self.width >= 1 << 24:  # user_multisets hands keys on as float32
            raise ValueError(f"{self.width} count keys: float32 holds keys below 2**24 exactly")
        level_1, level_2 = (
            item_categories[:, LEVEL_1 : LEVEL_1 + 1],
            item_categories[:, LEVEL_2 : LEVEL_2 + 1],
        )
        caption = word_key(item_caption)  # (N_items, Tc)
        word = self.words_at
        self.register_buffer(
            "history_keys", torch.cat([level_1 + a, level_2 + b, caption + word + WORD_KEYS], 1)
        )
        ok = torch.ones_like(level_1, dtype=torch.float32)
        self.register_buffer(
            "history_weights", torch.cat([ok, ok, (item_caption > 0).to(torch.float32)], 1)
        )
        self.register_buffer("click_keys", torch.cat([level_2 + c, level_2 + d], 1))
        self.register_buffer(
            "candidate_keys",
            torch.cat(
                [
                    level_1 + a,
                    level_2 + b,
                    level_2 + c,
                    level_2 + d,
                    caption + word,
                    caption + word + WORD_KEYS,
                    caption + word + 2 * WORD_KEYS,
                ],
                dim=1,
            ),
        )
        wanted = torch.cat([level_1, level_2, level_2, level_2, caption, caption, caption], 1)
        self.register_buffer("candidate_wanted", (wanted > 0).to(torch.float32))
        with torch.no_grad():
            tables = [cast(nn.Embedding, table).weight for table in counts.tables]
            every = count_code(torch.arange(COUNT_ROWS))  # (18,) the codes of 0..17
            tenths = 1 + torch.arange(10)
            blocks = [tables[i][every] for i in _COUNTED]
            blocks += [tables[i][tenths] for i in _SHARES]
            blocks.append(tables[_FLAG][1:3])
            self.register_buffer("fields", torch.cat(blocks).contiguous())
        self.order = [*_COUNTED, *_SHARES, _FLAG]  # the field of each column of `forward`
        sizes = [len(block) for block in blocks]
        self.register_buffer(
            "row_field", torch.repeat_interleave(torch.tensor(self.order), torch.tensor(sizes))
        )

    def forward(
        self,
        click_history: Tensor,
        query_tokens: Tensor,
        clicks: Tensor,
        valid: Tensor,
        pair_user: Tensor,
        item: Tensor,
    ) -> Tensor:
        """click_history (U, H), query_tokens (U, L, T), clicks (U, L, K) the clicked
        results the model reads, valid (U, L) slots, pair_user (N,), item (N,) -> the
        rows of `fields` (N, FIELDS) that embed each candidate's counts: column c is
        field `order[c]` (the head folds the embeddings into its first layer,
        `export.graphs`)."""
        keys, total = self.user_multisets(click_history, query_tokens, clicks, valid)
        return self.lookup(keys, total, pair_user, item)

    def user_multisets(
        self, click_history: Tensor, query_tokens: Tensor, clicks: Tensor, valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The user side (candidate-independent): the key (U, K) of every multiset entry
        at its table offset, `width` (a column nobody looks up) for padding and invalid
        entries (every weight is 0 or 1, so a key alone says it all), and the feed clicks
        counted (U,). float32 keys: exact, since the table is narrower than 2**24
        (checked at init), so that the split graphs' user side is one float32 vector per
        user (`export.graphs.CTRUserGraph`)."""
        users = click_history.shape[0]
        history_valid = (click_history > 0).to(torch.float32)  # (U, H)
        history = F.embedding(click_history, self.history_keys)  # (U, H, 2 + Tc)
        history_weight = F.embedding(click_history, self.history_weights)
        history_weight = history_weight * history_valid.unsqueeze(-1)
        clicked = F.embedding(clicks, self.click_keys)  # (U, L, K, 2)
        clicked_ok = ((clicks > 0) & valid.unsqueeze(-1)).to(torch.float32)  # (U, L, K)
        words = word_key(query_tokens) + self.words_at  # (U, L, T)
        words_ok = ((query_tokens > 0) & valid.unsqueeze(-1)).to(torch.float32)
        keys = torch.cat(
            [
                history.reshape(users, -1),
                clicked[..., 0].reshape(users, -1),
                clicked[:, -1, :, 1],
                words.reshape(users, -1),
                words[:, -1] + 2 * WORD_KEYS,
            ],
            dim=1,
        )
        weights = torch.cat(
            [
                history_weight.reshape(users, -1),
                clicked_ok.reshape(users, -1),
                clicked_ok[:, -1],
                words_ok.reshape(users, -1),
                words_ok[:, -1],
            ],
            dim=1,
        )
        keys = torch.where(weights > 0, keys, self.width)
        return keys.to(torch.float32), history_valid.sum(dim=1)

    def lookup(self, keys: Tensor, total: Tensor, pair_user: Tensor, item: Tensor) -> Tensor:
        """The per-pair side: the user multisets of `user_multisets` (U, K), (U,),
        pair_user (N,), item (N,) -> the rows of `fields` (N, FIELDS), as `forward`."""
        users, row = keys.shape[0], self.width + 1  # + the column of unused entries
        table = torch.zeros(users, row, dtype=torch.float32, device=keys.device)
        table = table.scatter_add(1, keys.long(), torch.ones_like(keys)).reshape(-1)
        # Per candidate: its keys, looked up in its user's table (index_select: one
        # Gather, where indexing exports as a much slower GatherND).
        looked = F.embedding(item, self.candidate_keys)  # (N, 4 + 3 Tc)
        flat = (pair_user.unsqueeze(1) * row + looked).reshape(-1)
        found = table.index_select(0, flat).reshape(looked.shape)
        found = found * F.embedding(item, self.candidate_wanted)
        words_found = found[:, 4:].reshape(found.shape[0], 3, -1).sum(dim=-1)  # (N, 3)
        total = total.index_select(0, pair_user)  # (N,) feed clicks
        in_level_2, history_words = found[:, 1], words_found[:, 1]
        counted = torch.cat([found[:, :3], words_found[:, :2]], dim=1)  # (N, 5): _COUNTED
        rows = counted.clamp(max=LARGEST_COUNT).long() + torch.arange(
            0, 5 * COUNT_ROWS, COUNT_ROWS, device=item.device
        )
        shares = torch.stack(
            [share_tenth(in_level_2, total), share_tenth(history_words, total)], dim=1
        ) + torch.tensor([5 * COUNT_ROWS, 5 * COUNT_ROWS + 10], device=item.device)
        newest = ((found[:, 3] + words_found[:, 2]) > 0).long() + (5 * COUNT_ROWS + 20)
        return torch.cat([rows, shares, newest.unsqueeze(1)], dim=1)  # (N, FIELDS)
