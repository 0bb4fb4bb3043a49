"""Operating the service: admin API, metrics, zero-downtime reload (real gRPC, real Redis)."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from queryrec.features.bundle_manifest import write_sealed
from service.api import scorer_pb2 as pb
from service.transport.admin import build_admin_app
from tests.service.harness import ServerThread

TOKEN = "s3cret-token"
T = 1_700_000_000_000


@pytest.fixture
def served(bundle: Path, redis_client_url: str) -> Iterator[ServerThread]:
    with ServerThread(
        bundle, redis_client_url, budget_ms=10_000, admin_port=0, admin_token=TOKEN
    ) as harness:
        yield harness


def admin(harness: ServerThread) -> httpx.Client:
    assert harness.server is not None and harness.server.admin is not None
    return httpx.Client(base_url=f"http://127.0.0.1:{harness.server.admin.port}", timeout=60)


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def score(harness: ServerThread, user: int, items: list[int]) -> pb.ScoreResponse:
    return harness.score(user, items, request_time_ms=T, timeout=30)


def version_copy(bundle: Path, where: Path, suffix: str) -> Path:
    """The bundle with another model version (same graphs: same encoder version),
    resealed as an export would seal it (`write_sealed`)."""
    copy = where / f"bundle-{suffix}"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model_version"] = f"{manifest['model_version']}-{suffix}"
    write_sealed(copy, manifest)
    return copy


def test_health_readiness_and_model(served: ServerThread) -> None:
    with admin(served) as client:
        assert client.get("/healthz").json() == {"alive": True}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        model = client.get("/v1/model").json()
        assert served.server is not None
        assert model["model_version"] == served.server.scorer.model_version
        assert "files" in model


def test_readyz_is_503_with_the_reason_until_warmed(bundle: Path, redis_url: str) -> None:
    harness = ServerThread(bundle, redis_url, admin_port=0)
    try:
        server = harness.create()
        harness.run(server.listen())
        with admin(harness) as client:
            waiting = client.get("/readyz")
            assert waiting.status_code == 503 and waiting.json()["reasons"] == ["warming_up"]
            harness.run(server.warm_up_and_serve())
            assert client.get("/readyz").status_code == 200
    finally:
        harness.close()


def test_metrics_move_when_traffic_flows(served: ServerThread, raw: dict[str, list[int]]) -> None:
    user = 770_000_001
    served.stub.RecordQuery(
        pb.RecordQueryRequest(user_id=user, token_ids=raw["words"][:3], timestamp_ms=T - 1000)
    )
    with admin(served) as client:
        before = metric_samples(client.get("/metrics").text)
        score(served, user, raw["items"][:4])
        after = metric_samples(client.get("/metrics").text)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("queryrec_grpc_requests_total", method="Score", code="OK") == 1
    assert moved("queryrec_grpc_request_duration_seconds_count", method="Score", code="OK") == 1
    for stage in ("redis", "encoder_queue", "encoder_compute", "ctr_queue", "ctr_compute"):
        assert moved("queryrec_stage_duration_seconds_count", stage=stage) >= 1, stage
    assert moved("queryrec_encoder_batch_users_count") >= 1
    assert moved("queryrec_ctr_batch_pairs_sum") >= 4
    assert moved("queryrec_query_vector_cache_misses_total") == 1
    assert served.server is not None
    info = [k for k in after if k[0] == "queryrec_model_info"]
    assert dict(info[0][1])["model_version"] == served.server.scorer.model_version
    assert after[("queryrec_redis_up", ())] == 1


def test_json_score_mirrors_the_rpc(served: ServerThread, raw: dict[str, list[int]]) -> None:
    items = raw["items"][:5]
    expected = score(served, raw["users"][0], items)
    with admin(served) as client:
        answer = client.post(
            "/v1/score",
            json={"user_id": raw["users"][0], "item_ids": items, "request_time_ms": T},
        )
        assert answer.status_code == 200
        assert answer.json()["scores"] == pytest.approx(list(expected.scores), abs=1e-6)
        bad = client.post("/v1/score", json={"user_id": 5, "item_ids": []})
        assert bad.status_code == 400 and "item_ids" in bad.json()["error"]


def test_reload_needs_the_token(served: ServerThread) -> None:
    with admin(served) as client:
        assert client.post("/v1/model/reload").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/v1/model/reload", headers=wrong).status_code == 401


def test_reload_is_off_without_a_token_on_a_public_bind(served: ServerThread) -> None:
    assert served.server is not None
    public = TestClient(build_admin_app(served.server, None, "0.0.0.0"))
    assert public.post("/v1/model/reload").status_code == 403
    assert public.get("/healthz").status_code == 200


def test_a_failed_reload_keeps_the_old_model(
    served: ServerThread, raw: dict[str, list[int]], tmp_path: Path
) -> None:
    assert served.server is not None
    version = served.server.scorer.model_version
    with admin(served) as client:
        answer = client.post(
            "/v1/model/reload",
            json={"bundle": str(tmp_path / "missing")},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert answer.status_code == 422
        assert answer.json()["ok"] is False and "missing" in answer.json()["error"]
        failures = metric_samples(client.get("/metrics").text)
    assert failures[("queryrec_model_reloads_total", (("result", "failure"),))] == 1
    assert score(served, raw["users"][0], raw["items"][:2]).model_version == version


def test_reload_under_load_fails_nothing_and_switches_versions(
    served: ServerThread, raw: dict[str, list[int]], bundle: Path, tmp_path: Path
) -> None:
    """Hundreds of Score calls in flight while the model is swapped: all OK, and every
    call made after the reload answered is served by the new version."""
    assert served.server is not None
    old = served.server.scorer.model_version
    new_bundle = version_copy(bundle, tmp_path, "v2")
    user = 770_000_002
    served.stub.RecordQuery(
        pb.RecordQueryRequest(user_id=user, token_ids=raw["words"][:2], timestamp_ms=T - 1000)
    )
    score(served, user, raw["items"][:3])  # encodes and caches the user's query vector
    served.run(_background_writes(served))
    request = pb.ScoreRequest(user_id=user, item_ids=raw["items"][:8], request_time_ms=T)
    reloaded = threading.Event()
    calls: list[Future[pb.ScoreResponse]] = []

    def keep_calling() -> None:
        while not reloaded.is_set():
            wave = [served.stub.Score.future(request, timeout=60) for _ in range(100)]
            calls.extend(wave)
            wave[-1].exception()  # let the wave drain a little before the next one

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        with admin(served) as client:
            answer = client.post(
                "/v1/model/reload",
                json={"bundle": str(new_bundle)},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
    finally:
        reloaded.set()
        caller.join(120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == f"{old}-v2"
    after = [score(served, user, raw["items"][:8]) for _ in range(3)]
    failures = [f.exception() for f in calls if f.exception() is not None]
    assert len(calls) >= 100 and failures == []
    versions = Counter(f.result().model_version for f in calls)
    assert set(versions) <= {old, f"{old}-v2"}
    assert {a.model_version for a in after} == {f"{old}-v2"}
    # Same encoder graph and word map: the cached query vector survives the reload.
    assert served.server.scorer.counts.cache_hits >= 1


async def _background_writes(harness: ServerThread) -> None:
    import asyncio

    assert harness.server is not None
    await asyncio.gather(*harness.server.scorer._background)


def test_reload_on_the_server_follows_health_and_responses(
    served: ServerThread, raw: dict[str, list[int]], bundle: Path, tmp_path: Path
) -> None:
    assert served.server is not None
    old = served.server.scorer.model_version
    result = served.run(served.server.reload(version_copy(bundle, tmp_path, "v3")))
    assert result.ok and result.previous_version == old
    assert score(served, raw["users"][0], raw["items"][:2]).model_version == f"{old}-v3"
    with admin(served) as client:
        assert client.get("/v1/model").json()["model_version"] == f"{old}-v3"
        assert client.get("/readyz").json()["model_version"] == f"{old}-v3"


def test_unparsable_bytes_are_invalid_argument(served: ServerThread) -> None:
    assert served.channel is not None
    raw_score = served.channel.unary_unary(
        "/queryrec.v1.Scorer/Score",
        request_serializer=lambda data: data,
        response_deserializer=lambda data: data,
    )
    with pytest.raises(grpc.RpcError) as caught:
        raw_score(b"\xff\xff\xff\xff", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ScoreRequest" in (caught.value.details() or "")
