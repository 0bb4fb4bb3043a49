"""The served QueryRec's parts on constructed inputs: match counts by hand, the serving
rewrites (per-user tables, target attention without per-pair copies) against the training
forms, and the query slots' validity rule."""

from __future__ import annotations

import torch

from export.match_counts_serving import ServingCounts
from queryrec.models.match_counts import (
    WORD_KEYS,
    MatchCounts,
    count_code,
    pair_matches,
    share_code,
)
from queryrec.models.query_slots import slot_valid
from queryrec.models.search_attention import SearchAttention

# Items 0..6: (level 1, level 2) categories and captions (0 = padding / missing).
CATEGORIES = torch.tensor(
    [
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [1, 3, 0, 0],
        [1, 4, 0, 0],
        [2, 5, 0, 0],
        [1, 3, 0, 0],
        [0, 0, 0, 0],
    ]
)
CAPTIONS = torch.tensor(
    [[0, 0, 0], [0, 0, 0], [7, 8, 0], [8, 9, 0], [10, 0, 0], [7, 7, 11], [7 + WORD_KEYS, 0, 0]]
)


def matches_of(item: int, history: list[int], queries: list[list[int]], clicks: list[list[int]]):
    """pair_matches for one candidate and one user (history of feed clicks, L query slots
    with their words and clicked results; every slot valid)."""
    h = torch.tensor([history])
    q = torch.tensor([queries])
    c = torch.tensor([clicks])
    return pair_matches(
        candidate_categories=CATEGORIES[torch.tensor([item])],
        candidate_caption=CAPTIONS[torch.tensor([item])],
        history_categories=CATEGORIES[h],
        history_valid=h > 0,
        history_captions=CAPTIONS[h],
        query_tokens=q,
        clicked_categories=CATEGORIES[c],
        clicked_mask=c > 0,
        valid=torch.ones(q.shape[:2], dtype=torch.bool),
    )


def test_counts_by_hand() -> None:
    # Candidate 5: level 1 = 1, level 2 = 3, caption words 7, 7, 11.
    m = matches_of(5, history=[0, 2, 3, 4], queries=[[7, 12], [11, 0]], clicks=[[2, 0], [4, 3]])
    assert m.in_level_1.tolist() == [2]  # items 2 and 3 are in level 1 category 1
    assert m.in_level_2.tolist() == [1]  # only item 2 is in category 3
    assert m.clicks.tolist() == [3]
    assert m.search_clicks.tolist() == [1]  # item 2 clicked after the first search
    # caption words 7, 7, 11 against the searches' words 7, 12, 11: 7 twice + 11 once
    assert m.search_words.tolist() == [3]
    # the newest search (slot L-1): word 11 (1) + clicked results 4, 3 (level 2: 5, 4): 0
    assert m.newest.tolist() == [1]
    # history captions 7 8 | 8 9 | 10: word 7 once, wanted twice
    assert m.history_words.tolist() == [2]


def test_missing_categories_padding_and_word_keys() -> None:
    # Candidate 6: no category; caption word 7 + 2^16, whose key equals word 7's.
    m = matches_of(6, history=[0, 2], queries=[[7]], clicks=[[0]])
    assert m.in_level_1.tolist() == [0] and m.in_level_2.tolist() == [0]
    assert m.search_words.tolist() == [1]  # compared by key: index mod 2^16
    assert m.history_words.tolist() == [1]
    # A missing category in the history matches nothing either.
    m = matches_of(2, history=[6, 6], queries=[[0]], clicks=[[0]])
    assert m.in_level_1.tolist() == [0] and m.newest.tolist() == [0]


def test_codes() -> None:
    counts = torch.tensor([0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 40])
    assert count_code(counts).tolist() == [1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    assert share_code(torch.tensor([0, 7, 10, 12]), torch.tensor([10, 10, 10, 10])).tolist() == [
        1,
        8,
        10,
        10,
    ]
    # 7 of 10 is 7 tenths exactly (float32 7 / 10 * 10 would floor to 6)
    assert share_code(torch.tensor([7]), torch.tensor([10])).tolist() == [8]


def test_serving_tables_give_the_training_embeddings() -> None:
    """ServingCounts (per user row, one table) selects exactly the embedding rows that
    MatchCounts computes candidate by candidate, for several users and candidates."""
    torch.manual_seed(0)
    counts = MatchCounts(dim=4)
    for table in counts.tables:
        torch.nn.init.normal_(table.weight)
    serving = ServingCounts(counts, CATEGORIES, CAPTIONS, (3, 6, 1, 1))
    gen = torch.Generator().manual_seed(1)
    users, pairs, length = 3, 11, 4
    history = torch.randint(0, 7, (users, 6), generator=gen)
    tokens = torch.randint(0, 13, (users, length, 3), generator=gen)
    clicks = torch.randint(0, 7, (users, length, 2), generator=gen)
    valid = torch.rand((users, length), generator=gen) > 0.3
    pair_user = torch.randint(0, users, (pairs,), generator=gen)
    item = torch.randint(1, 7, (pairs,), generator=gen)
    want = torch.stack(
        counts(
            pair_matches(
                candidate_categories=CATEGORIES[item],
                candidate_caption=CAPTIONS[item],
                history_categories=CATEGORIES[history][pair_user],
                history_valid=(history > 0)[pair_user],
                history_captions=CAPTIONS[history][pair_user],
                query_tokens=tokens[pair_user],
                clicked_categories=CATEGORIES[clicks][pair_user],
                clicked_mask=(clicks > 0)[pair_user],
                valid=valid[pair_user],
            )
        ),
        dim=1,
    )  # (N, FIELDS, d)
    rows = serving(history, tokens, clicks, valid, pair_user, item)  # (N, FIELDS)
    got = serving.fields[rows]  # (N, FIELDS, d) in serving.order
    back = [serving.order.index(field) for field in range(len(serving.order))]
    assert torch.equal(got[:, back], want)


def test_target_attention_per_user_rows_equals_the_gathered_form() -> None:
    torch.manual_seed(0)
    attention = SearchAttention(dim=8)
    states = torch.randn(3, 5, 8)
    valid = torch.rand(3, 5) > 0.4
    valid[1] = False  # a user without a valid slot: zeros
    pair_user = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    candidate = torch.randn(7, 8)
    gathered = attention(states[pair_user], valid[pair_user], candidate)
    served = attention(states, valid, candidate, pair_user)
    torch.testing.assert_close(served, gathered, rtol=1e-5, atol=1e-6)
    assert torch.equal(served[2], torch.zeros(8))


def test_a_slot_is_a_search_with_words_or_clicked_results() -> None:
    has_words = torch.tensor([[True, False, False]])
    clicked = torch.tensor([[[False], [True], [False]]])
    assert slot_valid(has_words, clicked).tolist() == [[True, True, False]]
