"""The replay against a real server and a real Redis: every served score equals the
offline score of the same impression, and the check fails when serving drifts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from clients.replay import TOLERANCE, build_events, run_replay
from export.bundle import ExportOptions, export_bundle
from queryrec.errors import QueryRecError
from queryrec.evaluation.bundle_scoring import open_bundle_graphs
from queryrec.features.bundle_format import IdMap, history_lengths
from queryrec.features.dataset import PreparedDataset
from queryrec.features.graph_feeds import graph_feed
from queryrec.features.model_inputs import EventTimelines, model_inputs
from service.api import scorer_pb2 as pb
from service.state.load import load_state
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


def serves_what_it_scores_offline(
    run: Path, data: Path, tmp_path: Path, redis_url: str
) -> dict[str, Any]:
    """Export `run`, serve the bundle through a real server and Redis, replay the test
    split: every served score must equal the offline score of the same impression, and
    the bundle's AUC the trained model's own (calibration is monotone). -> the manifest."""
    bundle = tmp_path / "bundle"
    manifest = export_bundle(run, bundle, ExportOptions())
    summary = replay_through(bundle, data, redis_url)
    assert summary["compared"] == summary["impressions"] > 0
    assert summary["above_tolerance"] == 0
    assert summary["max_abs_diff"] <= TOLERANCE
    trained = json.loads((run / "metrics.json").read_text())["test"]["auc"]
    assert summary["served_auc"] == pytest.approx(trained, abs=1e-4)
    return manifest


@pytest.mark.slow
def test_replay_of_tiny_matches_offline_per_impression(
    bundle: Path, tiny_data: Path, redis_client_url: str
) -> None:
    summary = replay_through(bundle, tiny_data, redis_client_url)
    assert summary["degraded"] == 0
    assert 0 < summary["search_click_calls"] <= summary["search_clicks"]  # all answered OK
    assert summary["compared"] == summary["impressions"] > 0
    assert summary["above_tolerance"] == 0
    assert summary["max_abs_diff"] <= TOLERANCE
    # Scores equal to float32 rounding can still swap tied pairs (1e-6 AUC was exceeded
    # with every score within 1.2e-7); the per-impression bound above is the proof.
    assert abs(summary["served_auc"] - summary["offline_auc"]) <= 1e-4


@pytest.mark.slow
def test_replay_fails_when_served_features_drift(
    bundle: Path, tiny_data: Path, redis_client_url: str
) -> None:
    """A server that keeps only one query per user computes other inputs than training
    for most impressions: the replay must say so and fail."""
    with pytest.raises(QueryRecError, match=r"served scores differ from the offline score"):
        replay_through(bundle, tiny_data, redis_client_url, query_history_cap=1)


def test_each_search_of_the_replay_carries_its_clicked_results(tiny_data: Path) -> None:
    """Sent right after its RecordQuery: raw ids, display order, distinct, capped."""
    dataset = PreparedDataset(tiny_data)
    streams, _, _ = build_events(dataset, max_search_clicks=2)
    t0 = int(dataset.schema["split"]["test_start_ms"])
    user_raw, item_raw = dataset.raw_ids("users"), dataset.raw_ids("items")
    expected: dict[int, list[tuple[int, list[int]]]] = {}
    for row in np.flatnonzero(dataset.search_ts >= t0):  # per user, in time order
        c, d = dataset.clicked_offsets[row], dataset.clicked_offsets[row + 1]
        clicked = list(dict.fromkeys(item_raw[dataset.clicked_items[c:d]].tolist()))[:2]
        user = int(user_raw[dataset.search_user[row]])
        expected.setdefault(user, []).append((int(dataset.search_ts[row]), clicked))
    sent = {
        user: [(event.ts, event.clicked) for event in events if event.kind == 2]
        for user, events in streams.items()
    }
    assert {user: searches for user, searches in sent.items() if searches} == expected
    lengths = [len(clicked) for searches in expected.values() for _, clicked in searches]
    assert 0 in lengths and 2 in lengths  # searches without clicks, and capped ones
    for events in streams.values():  # only searches carry clicks
        assert all(not event.clicked for event in events if event.kind != 2)


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
    manifest = graphs.manifest
    unknown_user = np.array([1])  # not in the maps: the unknown index, as the server maps it
    inputs = model_inputs(
        events,
        np.array([0]),
        np.array([T]),
        lengths,
        IdMap.read(bundle / "maps/items.parquet")(np.array(items)),
        pair_user=np.zeros(len(items), np.int64),
        reads=frozenset(manifest["reads"]),
        user_index=unknown_user,
    )
    assert (inputs.query_age[0] > 0).sum() == 2 and (inputs.query_tokens[0, -1] == 0).all()
    assert graphs.encoder is not None
    encoder = manifest["graphs"]["query_encoder"]
    values = graphs.encoder.run(None, graph_feed(encoder["inputs"], inputs))
    encoded = dict(zip(encoder["outputs"], values, strict=True))
    feed = graph_feed(manifest["graphs"]["ctr"]["inputs"], inputs, encoded)
    expected = graphs.ctr.run(None, feed)[0]
    np.testing.assert_allclose(served.scores, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_a_target_attention_bundle_serves_what_it_scores_offline(
    tiny_data: Path, tmp_path: Path, redis_client_url: str
) -> None:
    """The option the served model leaves off keeps its serving path: the encoder also
    outputs the SAS states, the service caches them, and every impression scores as
    offline."""
    from queryrec.training.config import TrainConfig
    from queryrec.training.loop import train

    run = tmp_path / "run"
    train(
        tiny_data,
        run,
        TrainConfig(
            model="queryrec-with-target-attention", epochs=1, batch_size=512, progress=False
        ),
    )
    manifest = serves_what_it_scores_offline(run, tiny_data, tmp_path, redis_client_url)
    assert list(manifest["graphs"]["query_encoder"]["outputs"]) == ["query_repr", "query_states"]
    assert "query_states" in manifest["graphs"]["ctr"]["inputs"]
