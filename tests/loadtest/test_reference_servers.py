"""The reference servers as real subprocesses over a real Redis, beside a real `queryrec serve`.

All four start side by side once for the module (state of `tiny_data` loaded first); each
test sends the same requests to them over gRPC. The naive servers implement the
service's model: naive-onnx runs the same ONNX graphs on the same features (one request
per call, as the service does for a lone request), so its scores equal the service's to
float32 rounding; naive-torch runs the PyTorch modules the graphs were exported from,
to about 1e-7 (measured; the export checks the same pair to 1e-5).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from clients.launcher import ServerProcess
from loadtest.reference_servers import ECHO_SCORE, KINDS, ReferenceServerProcess
from queryrec.features.dataset import PreparedDataset
from service.api import scorer_pb2 as pb
from service.api import scorer_pb2_grpc
from service.state.load import load_state

pytestmark = pytest.mark.slow  # four servers start (about 10 s on 2 cores)

ONNX_TOLERANCE = 1e-6  # same graphs, same feeds, batch of one on both sides (0.0 measured)
TORCH_TOLERANCE = 1e-6  # torch eager vs ONNX Runtime: 6e-8 measured here, 1.2e-7 on the demo bundle
UNKNOWN_ITEM = 10**15  # not in any map: scored as a cold-start item


@pytest.fixture(scope="module")
def dataset(tiny_data: Path) -> PreparedDataset:
    return PreparedDataset(tiny_data)


@pytest.fixture(scope="module")
def servers(
    bundle: Path,
    queryrec_run: Path,
    tiny_data: Path,
    redis_url: str,
    dataset: PreparedDataset,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, scorer_pb2_grpc.ScorerStub]]:
    """name -> stub of echo, naive-onnx, naive-torch and `queryrec serve`, all on the
    same Redis with the state of `tiny_data` as of the test split."""
    lengths = json.loads((bundle / "manifest.json").read_text())["max_lengths"]
    with redis.Redis.from_url(redis_url) as client:
        client.flushall()
    load_state(
        dataset,
        redis_url,
        query_cap=int(lengths["query_history"]),
        click_cap=int(lengths["click_history"]),
        progress=False,
    )
    logs = tmp_path_factory.mktemp("reference-servers")
    references = {
        kind: ReferenceServerProcess(
            kind, logs / f"{kind}.log", bundle_dir=bundle, redis_url=redis_url, run_dir=queryrec_run
        )
        for kind in KINDS
    }
    # ServerProcess's budget (1 s) keeps every answer whole on a busy machine.
    service = ServerProcess(bundle, redis_url, logs / "serve.log")
    channels: list[grpc.Channel] = []
    try:
        for process in references.values():
            process.launch()  # they load while the service starts
        ports = {"service": service.start()}
        ports |= {kind: process.wait() for kind, process in references.items()}
        stubs = {}
        for name, port in ports.items():
            channels.append(grpc.insecure_channel(f"127.0.0.1:{port}"))
            stubs[name] = scorer_pb2_grpc.ScorerStub(channels[-1])
        yield stubs
    finally:
        for channel in channels:
            channel.close()
        for process in references.values():
            process.terminate()  # all at once, then each is waited for
        service.stop()
        for process in references.values():
            process.stop()


@pytest.fixture(scope="module")
def requests(dataset: PreparedDataset) -> list[pb.ScoreRequest]:
    """Users of the loaded state (and one unknown user), 20 candidates each, one of them
    an unknown item, at a time just after the state's end."""
    users = dataset.raw_ids("users")
    items = dataset.raw_ids("items")
    users, items = users[users >= 0], items[items >= 0]
    at = int(dataset.schema["split"]["test_start_ms"]) + 60_000
    rng = np.random.default_rng(0)
    chosen = [*rng.choice(users, size=8, replace=False).tolist(), int(users.max()) + 12345]
    return [
        pb.ScoreRequest(
            user_id=int(user),
            item_ids=[*rng.choice(items, size=19, replace=False).tolist(), UNKNOWN_ITEM],
            request_time_ms=at,
        )
        for user in chosen
    ]


def scores(stub: scorer_pb2_grpc.ScorerStub, requests: list[pb.ScoreRequest]) -> np.ndarray:
    """(requests, candidates) scores; every answer has one score per item, in [0, 1]."""
    out = []
    for request in requests:
        response = stub.Score(request, timeout=30)
        assert len(response.scores) == len(request.item_ids)
        assert not response.degraded
        out.append(np.array(response.scores))
    values = np.stack(out)
    assert np.isfinite(values).all()
    assert values.min() >= 0.0
    assert values.max() <= 1.0
    return values


def test_echo_answers_a_constant_score_per_candidate(
    servers: dict[str, scorer_pb2_grpc.ScorerStub], requests: list[pb.ScoreRequest]
) -> None:
    assert (scores(servers["echo"], requests) == ECHO_SCORE).all()
    echo = servers["echo"]
    assert echo.RecordQuery(pb.RecordQueryRequest(user_id=1, token_ids=[1])).history_length == 0
    assert echo.RecordClicks(pb.RecordClicksRequest(user_id=1, item_ids=[1])).history_length == 0
    searched = pb.RecordSearchClicksRequest(user_id=1, search_timestamp_ms=1, item_ids=[1])
    assert echo.RecordSearchClicks(searched).clicks_in_search == 0


def test_naive_servers_score_what_the_service_scores(
    servers: dict[str, scorer_pb2_grpc.ScorerStub], requests: list[pb.ScoreRequest]
) -> None:
    served = scores(servers["service"], requests)
    onnx = scores(servers["naive-onnx"], requests)
    torch = scores(servers["naive-torch"], requests)
    assert np.abs(onnx - served).max() <= ONNX_TOLERANCE
    assert np.abs(torch - served).max() <= TORCH_TOLERANCE
    # not a constant: the model tells candidates apart
    assert served.std() > 0


def test_naive_writes_are_the_state_every_server_reads(
    servers: dict[str, scorer_pb2_grpc.ScorerStub],
    requests: list[pb.ScoreRequest],
    dataset: PreparedDataset,
) -> None:
    request = requests[0]
    before = scores(servers["service"], [request])
    words = dataset.raw_ids("words")
    words = words[words >= 0][:3].tolist()
    at = request.request_time_ms - 1000
    kept = servers["naive-onnx"].RecordQuery(
        pb.RecordQueryRequest(user_id=request.user_id, token_ids=words, timestamp_ms=at)
    )
    assert kept.history_length >= 1
    clicked = servers["naive-torch"].RecordClicks(
        pb.RecordClicksRequest(
            user_id=request.user_id, item_ids=list(request.item_ids[:2]), timestamp_ms=at
        )
    )
    assert clicked.history_length >= 2
    search_clicks = pb.RecordSearchClicksRequest(
        user_id=request.user_id, search_timestamp_ms=at, item_ids=list(request.item_ids[:1])
    )
    assert servers["naive-onnx"].RecordSearchClicks(search_clicks).clicks_in_search == 1
    with pytest.raises(grpc.RpcError) as raised:
        servers["naive-torch"].RecordSearchClicks(
            pb.RecordSearchClicksRequest(
                user_id=request.user_id, search_timestamp_ms=at - 1, item_ids=[1]
            )
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    after = {name: scores(servers[name], [request]) for name in ("service", "naive-onnx")}
    assert np.abs(after["service"] - before).max() > 0  # the new history changed the scores
    assert np.abs(after["naive-onnx"] - after["service"]).max() <= ONNX_TOLERANCE


def test_naive_server_refuses_a_request_without_items(
    servers: dict[str, scorer_pb2_grpc.ScorerStub],
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        servers["naive-onnx"].Score(pb.ScoreRequest(user_id=1, item_ids=[]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
