"""The replay against a real server and a real Redis: every served score equals the
offline score of the same impression, and the check fails when serving drifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clients.replay import TOLERANCE, run_replay
from queryrec.errors import QueryRecError
from queryrec.evaluation.bundle_scoring import open_bundle_graphs
from queryrec.features.bundle_format import IdMap, history_lengths
from queryrec.features.dataset import PreparedDataset
from queryrec.features.graph_feeds import ctr_feed, encoder_feed
from queryrec.features.model_inputs import EventTimelines, model_inputs
from service.api import scorer_pb2 as pb
from service.state_load import load_state
from tests.service.harness import ServerThread

T = 1_700_000_000_000
HOUR_MS = 3_600_000


def unknown_user_profile(bundle: Path, fields: list[str]) -> np.ndarray:
    """(1, P) the profile codes the bundle holds for the unknown user index (1)."""
    users = pl.read_parquet(bundle / "features/users.parquet").filter(pl.col("index") == 1)
    return users.select(fields).to_numpy().astype(np.int64)


def replay_through(
    bundle: Path, data: Path, redis_url: str, **settings: object
) -> dict[str, float]:
    load_state(PreparedDataset(data), redis_url, progress=False)
    harness = ServerThread(bundle, redis_url, budget_ms=10_000, **settings)
    try:
        harness.create()
        harness.start()
        return run_replay(data, harness.address, bundle, concurrency=4)
    finally:
        harness.close()


@pytest.mark.slow
def test_replay_of_tiny_matches_offline_per_impression(
    bundle: Path, tiny_data: Path, redis_client_url: str
) -> None:
    summary = replay_through(bundle, tiny_data, redis_client_url)
    assert summary["degraded"] == 0
    assert summary["compared"] == summary["impressions"] > 0
    assert summary["above_tolerance"] == 0
    assert summary["max_abs_diff"] <= TOLERANCE
    assert abs(summary["served_auc"] - summary["offline_auc"]) <= 1e-6


@pytest.mark.slow
def test_replay_fails_when_served_features_drift(
    bundle: Path, tiny_data: Path, redis_client_url: str
) -> None:
    """A server that keeps only one query per user computes other inputs than training
    for most impressions: the replay must say so and fail."""
    with pytest.raises(QueryRecError, match=r"served scores differ from the offline score"):
        replay_through(bundle, tiny_data, redis_client_url, query_history_cap=1)


def test_a_search_without_words_is_a_history_slot_through_the_api(
    bundle: Path, redis_client_url: str
) -> None:
    """RecordQuery accepts an empty token list, and the served score is the offline
    path's for the same events (the empty search displaces an older one)."""
    raw = {
        name: pl.read_parquet(bundle / f"maps/{name}.parquet")["raw_id"].to_list()
        for name in ("users", "items", "words")
    }
    user, items = 7_700_001, raw["items"][:5]
    queries = [(T - 5 * HOUR_MS + i * HOUR_MS, raw["words"][i : i + 2]) for i in range(4)]
    queries.append((T - 1_000, []))  # the newest search has no words
    graphs = open_bundle_graphs(bundle)
    lengths = history_lengths(graphs.manifest)
    harness = ServerThread(bundle, redis_client_url, budget_ms=10_000, query_history_cap=2)
    try:
        harness.create()
        harness.start()
        kept = [
            harness.stub.RecordQuery(
                pb.RecordQueryRequest(user_id=user, token_ids=words, timestamp_ms=ts), timeout=10
            ).history_length
            for ts, words in queries
        ]
        served = harness.stub.Score(
            pb.ScoreRequest(user_id=user, item_ids=items, request_time_ms=T), timeout=10
        )
    finally:
        harness.close()
    assert kept == [1, 2, 2, 2, 2]  # capped at 2: the empty search took a slot
    assert not served.degraded

    # Offline: the two newest searches (one worded, one empty) in a one-user timeline.
    words = IdMap.read(bundle / "maps/words.parquet")
    newest = queries[-2:]
    events = EventTimelines(
        click_start=np.array([0, 0]),
        click_item=np.zeros(0, np.int64),
        click_ts=np.zeros(0, np.int64),
        query_start=np.array([0, 2]),
        query_ts=np.array([ts for ts, _ in newest]),
        word_start=np.cumsum([0, *(len(w) for _, w in newest)]),
        words=words(np.array([w for _, ws in newest for w in ws], dtype=np.int64)),
        profile=unknown_user_profile(bundle, graphs.manifest["profile_fields"]),
    )
    inputs = model_inputs(events, np.array([0]), np.array([T]), lengths)
    assert inputs.query_count[0] == 2 and (inputs.query_tokens[0, -1] == 0).all()
    assert graphs.encoder is not None
    query_repr = graphs.encoder.run(None, encoder_feed(inputs.query_tokens, inputs.query_age))[0]
    unknown_user = np.array([1])  # not in the maps: the unknown index, as the server maps it
    feed = ctr_feed(
        unknown_user,
        inputs.hour,
        inputs.profile,
        inputs.click_history,
        np.zeros(len(items), np.int64),
        IdMap.read(bundle / "maps/items.parquet")(np.array(items)),
        query_repr,
    )
    expected = graphs.ctr.run(None, feed)[0]
    np.testing.assert_allclose(served.scores, expected, atol=TOLERANCE, rtol=0)
