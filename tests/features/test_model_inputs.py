"""The one feature path on hand-made timelines: exact windows, padding, ages, hour, trim."""

from __future__ import annotations

import numpy as np
import pytest

from queryrec.features.model_inputs import (
    EventTimelines,
    HistoryLengths,
    ModelInputs,
    history_windows,
    model_inputs,
    trim_query_columns,
)
from queryrec.features.time_features import HOUR_MS

T = 1_700_006_400_000  # 2023-11-15 00:00 UTC, 08:00 in Beijing


def two_users() -> EventTimelines:
    """User row 0: clicks 10, 11, 12 at T-3h, T-1h, T (the last one at the request's own
    ms); queries [5, 6, 7] at T-2h (clicked 30, 31), [] at T-30min (clicked 32), [8] at
    T+1h. User row 1: one click 20 at T-5h, no query."""
    return EventTimelines(
        click_start=np.array([0, 3, 4]),
        click_item=np.array([10, 11, 12, 20]),
        click_ts=np.array([T - 3 * HOUR_MS, T - HOUR_MS, T, T - 5 * HOUR_MS]),
        query_start=np.array([0, 3, 3]),
        query_ts=np.array([T - 2 * HOUR_MS, T - HOUR_MS // 2, T + HOUR_MS]),
        word_start=np.array([0, 3, 3, 4]),
        words=np.array([5, 6, 7, 8]),
        profile=np.array([[3, 4], [5, 6]]),
        query_click_start=np.array([0, 2, 3, 3]),
        query_click_items=np.array([30, 31, 32]),
    )


def test_windows_padding_ages_and_hour_exactly() -> None:
    lengths = HistoryLengths(clicks=3, queries=3, tokens=2, clicks_per_query=1)
    inputs = model_inputs(
        two_users(),
        np.array([0, 1]),
        np.array([T, T]),
        lengths,
        reads=("query_clicks", "query_minutes", "click_minutes"),
    )
    # Strictly before t: the click at T is out; the newest last, left-padded.
    assert inputs.click_history.tolist() == [[0, 10, 11], [0, 0, 20]]
    # The query after t is out; the empty search is a slot with an age and no words.
    assert inputs.query_tokens.tolist() == [
        [[0, 0], [5, 6], [0, 0]],
        [[0, 0], [0, 0], [0, 0]],
    ]
    assert inputs.query_age.tolist() == [[0, 2, 1], [0, 0, 0]]  # 2 h -> bucket 2, 30 min -> 1
    # The first K = 1 clicked results of each search; the wordless search's click too.
    assert inputs.query_clicks is not None
    assert inputs.query_clicks.tolist() == [[[0], [30], [32]], [[0], [0], [0]]]
    assert inputs.query_minutes is not None and inputs.click_minutes is not None
    assert inputs.query_minutes.tolist() == [[0, 120, 30], [0, 0, 0]]
    assert inputs.click_minutes.tolist() == [[0, 180, 60], [0, 0, 300]]
    windows = history_windows(two_users(), np.array([0, 1]), np.array([T, T]), lengths)
    assert windows.query_count.tolist() == [2, 0]
    assert windows.query_index.tolist() == [[-1, 0, 1], [-1, -1, -1]]
    assert inputs.hour.tolist() == [8, 8]
    assert inputs.profile.tolist() == [[3, 4], [5, 6]]
    assert inputs.user.tolist() == [0, 1] and inputs.item.tolist() == []


def test_a_request_before_or_after_every_event() -> None:
    early, late = model_inputs(
        two_users(),
        np.array([0, 0]),
        np.array([T - 100 * HOUR_MS, T + 100 * HOUR_MS]),
        HistoryLengths(clicks=4, queries=4, tokens=1),
    ).click_history.tolist()
    assert early == [0, 0, 0, 0]
    assert late == [0, 10, 11, 12]


def slots(tokens: list[list[list[int]]], ages: list[list[int]]) -> ModelInputs[np.ndarray]:
    """Inputs of len(tokens) user rows with these query slots (clicks: the tokens again)."""
    token_array = np.array(tokens, dtype=np.int64)
    users = len(tokens)
    return ModelInputs(
        user=np.zeros(users, np.int64),
        hour=np.zeros(users, np.int64),
        profile=np.zeros((users, 1), np.int64),
        click_history=np.zeros((users, 1), np.int64),
        query_tokens=token_array,
        query_age=np.array(ages, dtype=np.int64),
        item=np.zeros(0, np.int64),
        query_clicks=token_array + 100 * (token_array > 0),
    )


def test_trim_cuts_only_slots_without_a_search_in_the_whole_batch() -> None:
    """A slot with an age holds a search (with or without words); the slots before the
    oldest search of the whole batch go, from every per-slot input together."""
    cut = trim_query_columns(
        slots([[[0], [0], [4], [0]], [[0], [0], [0], [5]]], [[0, 0, 2, 1], [0, 0, 0, 3]])
    )
    assert cut.query_tokens.tolist() == [[[4], [0]], [[0], [5]]]
    assert cut.query_age.tolist() == [[2, 1], [0, 3]]
    assert cut.query_clicks is not None and cut.query_clicks.tolist() == [
        [[104], [0]],
        [[0], [105]],
    ]
    wordless = trim_query_columns(slots([[[0], [0], [4]]], [[0, 1, 2]]))
    assert wordless.query_age.tolist() == [[1, 2]]  # the wordless search stays a slot
    empty = trim_query_columns(slots([[[0, 0], [0, 0], [0, 0]]], [[0, 0, 0]]))
    assert empty.query_tokens.shape == (1, 1, 2) and empty.query_age.shape == (1, 1)


def test_newest_first_lists_become_a_time_ordered_timeline() -> None:
    """As Redis holds them: newest first. Equal times keep the stored order (the one
    stored first comes first), as the offline timeline keeps log order."""
    events = EventTimelines.from_newest_first(
        click_ts=np.array([30, 20, 20, 10]),
        click_item=np.array([4, 3, 2, 1]),  # 2 was stored before 3, both at 20
        query_ts=np.array([50, 50, 40]),
        query_sizes=np.array([1, 0, 2]),
        words=np.array([9, 7, 8]),  # newest: [9]; then []; oldest: [7, 8]
        profile=np.array([1, 2]),
        query_click_sizes=np.array([0, 2, 1]),
        query_click_items=np.array([5, 6, 4]),  # newest: none; then [5, 6]; oldest: [4]
    )
    assert events.click_item.tolist() == [1, 2, 3, 4]
    assert events.click_ts.tolist() == [10, 20, 20, 30]
    assert events.query_ts.tolist() == [40, 50, 50]
    assert events.word_start.tolist() == [0, 2, 2, 3]
    assert events.words.tolist() == [7, 8, 9]
    assert events.query_click_start is not None and events.query_click_items is not None
    assert events.query_click_start.tolist() == [0, 1, 3, 3]
    assert events.query_click_items.tolist() == [4, 5, 6]
    assert events.profile.tolist() == [[1, 2]]


def test_lengths_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        HistoryLengths(clicks=0, queries=1, tokens=1)
