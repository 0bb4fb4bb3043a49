"""Property: for any event history and request time, the training batch path and the
serving path give identical model inputs, search clicks and minutes included.

Training path: every user's events as one dataset-wide timeline (model indices, sorted
by user and time, each search with its clicked results), the window ends found once
(`history_ends`, as `BatchBuilder.split_arrays` does), then `history_windows`,
`inputs_from_windows` and `trim_query_columns` (as `BatchBuilder.build` does). Serving
path: the same user's events written the way the service stores them (raw ids,
`redis_keys` packing with the clicked results inside the query entry, newest first,
capped like `LTRIM`), decoded as a Redis read decodes them, mapped with the bundle's id
maps and built by `service.inference.features.FeatureBuilder` (+ its encoder feed). The real Redis
and gRPC round trip is covered by `tests/clients/test_replay.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from queryrec.features.bundle_format import IdMap
from queryrec.features.model_inputs import (
    OPTIONAL_INPUTS,
    EventTimelines,
    HistoryLengths,
    history_windows,
    inputs_from_windows,
    trim_query_columns,
)
from service.inference.features import FeatureBuilder, IdMaps
from service.state import keys
from service.state.store import UserState

T0 = 1_700_000_000_000
KNOWN_ITEMS, KNOWN_WORDS, USERS, PROFILE_FIELDS = 30, 20, 6, 2
# Raw ids: known ones map to indices 2.., the others are unknown (index 1).
ITEM_MAP = IdMap(np.arange(KNOWN_ITEMS) * 7 + 1000, np.arange(KNOWN_ITEMS) + 2)
WORD_MAP = IdMap(np.arange(KNOWN_WORDS) * 3 + 500, np.arange(KNOWN_WORDS) + 2)
USER_MAP = IdMap(np.arange(USERS) + 90_000, np.arange(USERS) + 2)


@dataclass
class UserEvents:
    clicks: list[tuple[int, int]]  # (ts, raw item), in log order
    queries: list[tuple[int, list[int], list[int]]]  # (ts, raw words, raw clicked items)


# Ten-minute steps from 50 h before T0 to 1 h after: equal times (between events, and with
# the request) are common, and ages span every bucket.
times = st.integers(min_value=-300, max_value=6).map(lambda k: T0 + k * 600_000)
raw_items = st.one_of(
    st.integers(0, KNOWN_ITEMS - 1).map(lambda i: 1000 + 7 * i), st.integers(1, 999)
)
raw_words = st.one_of(st.integers(0, KNOWN_WORDS - 1).map(lambda i: 500 + 3 * i), st.just(4))
user_events = st.builds(
    UserEvents,
    clicks=st.lists(st.tuples(times, raw_items), max_size=12),
    queries=st.lists(
        st.tuples(
            times,
            st.lists(raw_words, max_size=5),
            st.lists(raw_items, max_size=5, unique=True),  # a search's clicks: distinct items
        ),
        max_size=10,
    ),
)


def training_timelines(users: list[UserEvents], profile: np.ndarray) -> EventTimelines:
    """The dataset side: model indices, each user's events sorted by time (ties in log
    order, as `data prepare` sorts), users one after the other."""
    click_start, click_item, click_ts = [0], [], []
    query_start, query_ts, word_start, words = [0], [], [0], []
    clicked_start, clicked = [0], []
    for user in users:
        for ts, item in sorted(user.clicks, key=lambda c: c[0]):
            click_ts.append(ts)
            click_item.append(int(ITEM_MAP(np.array([item]))[0]))
        click_start.append(len(click_ts))
        for ts, query, items in sorted(user.queries, key=lambda q: q[0]):
            query_ts.append(ts)
            words.extend(WORD_MAP(np.array(query, dtype=np.int64)).tolist())
            word_start.append(len(words))
            clicked.extend(ITEM_MAP(np.array(items, dtype=np.int64)).tolist())
            clicked_start.append(len(clicked))
        query_start.append(len(query_ts))
    return EventTimelines(
        click_start=np.array(click_start),
        click_item=np.array(click_item, dtype=np.int64),
        click_ts=np.array(click_ts, dtype=np.int64),
        query_start=np.array(query_start),
        query_ts=np.array(query_ts, dtype=np.int64),
        word_start=np.array(word_start),
        words=np.array(words, dtype=np.int64),
        profile=profile,
        query_click_start=np.array(clicked_start),
        query_click_items=np.array(clicked, dtype=np.int64),
    )


def redis_state(
    user: UserEvents, request_ms: int, caps: HistoryLengths, profile: dict[str, int]
) -> UserState:
    """What Redis holds when the request arrives: the events logged up to then, each
    LPUSHed in log (= time) order and LTRIMmed to the cap, then read and decoded."""
    query_list: list[bytes] = []
    for ts, query, items in sorted(user.queries, key=lambda q: q[0]):
        if ts <= request_ms:
            query_list = [keys.pack_query(ts, query, items), *query_list][: caps.queries]
    click_list: list[bytes] = []
    for ts, item in sorted(user.clicks, key=lambda c: c[0]):
        if ts <= request_ms:
            click_list = [*keys.pack_clicks(ts, [item]), *click_list][: caps.clicks]
    query_ts, query_sizes, query_words, click_sizes, clicked = keys.unpack_queries(query_list)
    click_ts, click_items = keys.unpack_clicks(click_list)
    return UserState(
        query_ts=query_ts,
        query_sizes=query_sizes,
        query_words=query_words,
        query_click_sizes=click_sizes,
        query_click_items=clicked,
        click_ts=click_ts,
        click_items=click_items,
        profile=profile,
    )


@settings(max_examples=300, deadline=None)
@given(
    users=st.lists(user_events, min_size=1, max_size=USERS),
    which=st.integers(0, USERS - 1),
    request=times,
    clicks=st.integers(1, 6),
    queries=st.integers(1, 5),
    tokens=st.integers(1, 4),
    per_query=st.integers(1, 3),
    profile_in_redis=st.booleans(),
)
def test_training_and_serving_build_identical_inputs(
    users: list[UserEvents],
    which: int,
    request: int,
    clicks: int,
    queries: int,
    tokens: int,
    per_query: int,
    profile_in_redis: bool,
) -> None:
    which %= len(users)
    lengths = HistoryLengths(clicks, queries, tokens, per_query)
    profile = np.arange(len(users) * PROFILE_FIELDS, dtype=np.int64).reshape(-1, PROFILE_FIELDS)
    row = np.array([which])
    at = np.array([request])
    reads = frozenset(OPTIONAL_INPUTS)

    # Training: dataset-wide timeline, window ends once, then the gather and the trim.
    events = training_timelines(users, profile)
    windows = history_windows(events, row, at, lengths, events.history_ends(row, at))
    trained = inputs_from_windows(events, windows, lengths, np.array([7]), reads=reads)
    trained_trimmed = trim_query_columns(trained)

    # Serving: Redis's capped lists; room for the events logged at the request's own ms,
    # which the window leaves out (the service's cap is a setting, >= L and H).
    me = users[which]
    same_ms = HistoryLengths(
        clicks=clicks + sum(ts == request for ts, _ in me.clicks),
        queries=queries + sum(ts == request for ts, _, _ in me.queries),
        tokens=tokens,
    )
    fields = [f"f{i}" for i in range(PROFILE_FIELDS)]
    stored = dict(zip(fields, profile[which].tolist(), strict=True)) if profile_in_redis else {}
    table = np.concatenate([np.zeros((2, PROFILE_FIELDS), np.int64), profile])  # by user index
    names = ("query_tokens", "query_age", "query_clicks", "query_minutes")
    builder = FeatureBuilder(
        lengths,
        IdMaps(users=USER_MAP, items=ITEM_MAP, words=WORD_MAP),
        fields,
        table,
        reads=reads,
        encoder_names=names,
    )
    served = builder.user_row(90_000 + which, redis_state(me, request, same_ms, stored), request)
    served_feed = builder.encoder_feed([served])

    assert served.inputs.user.tolist() == [which + 2]
    for name, value in served.inputs.user_fields().items():
        expected = trained.user if name == "user" else getattr(trained, name)
        if name == "user":
            continue  # training rows are user indices - 2 here; checked above
        assert value.tolist() == expected.tolist(), name
    assert served.query_count == windows.query_count[0]
    for name in names:
        assert served_feed[name].tolist() == getattr(trained_trimmed, name).tolist(), name
