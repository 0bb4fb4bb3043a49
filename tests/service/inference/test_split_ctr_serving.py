"""The split CTR graph served: the user side computed once per history version, cached
beside the query vector, invalidated by a new history or another user graph (real gRPC,
real Redis, the tiny QueryRec bundle, which has the split)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import redis

from queryrec.features.bundle_format import CTR_USER_FILE
from queryrec.features.bundle_manifest import write_sealed
from queryrec.features.schema import sha256_file
from service.api import scorer_pb2 as pb
from service.inference.scoring import Scorer
from service.state.keys import query_repr_key, unpack_query_repr
from tests.service.harness import ServerThread

T = 1_700_000_000_000  # a fixed request time


@pytest.fixture(scope="module")
def served(bundle: Path, redis_url: str) -> Iterator[ServerThread]:
    with ServerThread(bundle, redis_url, budget_ms=5000, max_candidates=50) as harness:
        yield harness


def scorer_of(harness: ServerThread) -> Scorer:
    assert harness.server is not None
    return harness.server.scorer


def score(harness: ServerThread, user: int, items: list[int]) -> list[float]:
    return list(harness.score(user, items, request_time_ms=T, timeout=30).scores)


def record_clicks(harness: ServerThread, user: int, items: list[int], at: int) -> None:
    harness.stub.RecordClicks(pb.RecordClicksRequest(user_id=user, item_ids=items, timestamp_ms=at))


def record_search(harness: ServerThread, user: int, words: list[int], at: int) -> None:
    harness.stub.RecordQuery(pb.RecordQueryRequest(user_id=user, token_ids=words, timestamp_ms=at))


def drain(harness: ServerThread) -> None:
    """Wait, in the server's loop, for the scorer's fire-and-forget cache writes."""

    async def background() -> None:
        await asyncio.gather(*scorer_of(harness)._background)

    harness.run(background())


def cached_floats(harness: ServerThread, redis_url: str, user: int) -> int:
    """How many float32 the user's cached value holds (0: none)."""
    scorer = scorer_of(harness)
    assert scorer._cache_version is not None
    value = redis.Redis.from_url(redis_url).get(query_repr_key(user, scorer._cache_version))
    return 0 if value is None else len(unpack_query_repr(value)[1])


def single_graph_scores(harness: ServerThread, user: int, items: list[int]) -> np.ndarray:
    """The same request through ctr.onnx, the unsplit graph (the encoder run inline)."""
    scorer = scorer_of(harness)

    async def read() -> np.ndarray:
        (state,) = await scorer.state.read([user], None)
        row = scorer.features.user_row(user, state, T)
        encoded = scorer._encode_batch([row])[0] if row.query_count else scorer.no_query
        assert encoded is not None
        feed = scorer.features.ctr_feed([row], [encoded], [scorer.bundle.items(np.array(items))])
        return np.asarray(scorer.bundle.ctr.run(None, feed)[0])

    return harness.run(read())


def test_the_tiny_bundle_is_served_split(served: ServerThread) -> None:
    scorer = scorer_of(served)
    assert scorer.split and scorer.side_names[0] == "user_first"


def test_the_user_side_is_cached_with_the_query_vector_and_reused(
    served: ServerThread, raw: dict[str, list[int]], redis_url: str
) -> None:
    counts = scorer_of(served).counts
    user, items = 660_000_001, raw["items"][:7]
    record_search(served, user, raw["words"][:3], T - 60_000)
    record_clicks(served, user, raw["items"][10:14], T - 5_000)
    sides, hits = counts.user_sides, counts.cache_hits
    first = score(served, user, items)
    assert counts.user_sides == sides + 1
    drain(served)
    scorer = scorer_of(served)
    side_width = sum(int(np.prod(shape)) for shape in scorer._side_shapes.values())
    assert cached_floats(served, redis_url, user) == scorer._width + side_width
    second = score(served, user, items)
    assert (counts.user_sides, counts.cache_hits) == (sides + 1, hits + 1)
    assert second == first
    # The split scores are the single graph's.
    np.testing.assert_allclose(first, single_graph_scores(served, user, items), atol=1e-5)


def test_a_user_without_searches_has_the_user_side_cached_too(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    counts = scorer_of(served).counts
    user, items = 660_000_002, raw["items"][:5]
    record_clicks(served, user, raw["items"][20:23], T - 5_000)
    sides, hits = counts.user_sides, counts.cache_hits
    first = score(served, user, items)
    drain(served)
    assert score(served, user, items) == first
    assert (counts.user_sides, counts.cache_hits) == (sides + 1, hits + 1)
    np.testing.assert_allclose(first, single_graph_scores(served, user, items), atol=1e-5)


def test_a_user_without_any_history_is_scored_as_by_the_single_graph(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    """No click and no search: the pair graph gets one padding history row."""
    user, items = 660_000_009, raw["items"][:9]
    np.testing.assert_allclose(
        score(served, user, items), single_graph_scores(served, user, items), atol=1e-5
    )


def test_a_feed_click_or_a_search_invalidates_the_cached_user_side(
    served: ServerThread, raw: dict[str, list[int]]
) -> None:
    counts = scorer_of(served).counts
    user, items = 660_000_003, raw["items"][:6]
    record_search(served, user, raw["words"][4:6], T - 90_000)
    score(served, user, items)
    drain(served)
    sides = counts.user_sides
    record_clicks(served, user, raw["items"][30:32], T - 4_000)
    after_click = score(served, user, items)
    assert counts.user_sides == sides + 1  # the history changed: recomputed
    np.testing.assert_allclose(after_click, single_graph_scores(served, user, items), atol=1e-5)
    drain(served)
    record_search(served, user, raw["words"][6:8], T - 3_000)
    after_search = score(served, user, items)
    assert counts.user_sides == sides + 2
    np.testing.assert_allclose(after_search, single_graph_scores(served, user, items), atol=1e-5)


def another_user_graph(bundle: Path, where: Path) -> Path:
    """The bundle with a ctr_user.onnx of other bytes and the same function (a doc
    string added), resealed as an export would seal it."""
    copy = where / "bundle-other-user-graph"
    shutil.copytree(bundle, copy)
    graph = onnx.load(str(copy / CTR_USER_FILE))
    graph.doc_string = "re-exported"
    onnx.save(graph, str(copy / CTR_USER_FILE))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][CTR_USER_FILE] = sha256_file(copy / CTR_USER_FILE)
    manifest["model_version"] = f"{manifest['model_version']}-user"
    write_sealed(copy, manifest)
    return copy


def test_a_reload_with_another_user_graph_recomputes_the_user_side(
    bundle: Path, redis_url: str, raw: dict[str, list[int]], tmp_path: Path
) -> None:
    with ServerThread(bundle, redis_url, budget_ms=5000, max_candidates=50) as harness:
        user, items = 660_000_004, raw["items"][:4]
        record_search(harness, user, raw["words"][:2], T - 9_000)
        before = score(harness, user, items)
        drain(harness)
        old_version = scorer_of(harness)._cache_version
        assert harness.server is not None
        harness.run(harness.server.reload(another_user_graph(bundle, tmp_path)))
        counts = scorer_of(harness).counts
        assert scorer_of(harness)._cache_version != old_version
        hits, sides = counts.cache_hits, counts.user_sides  # (warm-up computes some)
        after = score(harness, user, items)
        # The history is unchanged, but the value was cached under the old user graph.
        assert (counts.cache_hits, counts.user_sides) == (hits, sides + 1)
        np.testing.assert_allclose(after, before, atol=1e-6)
