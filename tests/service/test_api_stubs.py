"""The committed gRPC stubs in service/api/ match proto/queryrec/v1/scorer.proto."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from service.api import generate as gen
from service.api import scorer_pb2, scorer_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    written = gen.generate(tmp_path)
    assert sorted(p.name for p in written) == [
        "scorer_pb2.py",
        "scorer_pb2.pyi",
        "scorer_pb2_grpc.py",
    ]
    for fresh in written:
        committed = gen.API_DIR / fresh.name
        assert committed.is_file(), (
            f"{committed} missing: service/api is stale: run python -m service.api.generate"
        )
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{fresh.name} differs: service/api is stale: run python -m service.api.generate"
        )


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in gen.generate(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in gen.generate(tmp_path / "b")}
    assert first == second


def test_descriptor_has_the_contract() -> None:
    fd = scorer_pb2.DESCRIPTOR
    assert fd.name == "queryrec/v1/scorer.proto"
    assert fd.package == "queryrec.v1"
    service = fd.services_by_name["Scorer"]
    assert service.full_name == "queryrec.v1.Scorer"
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert methods == {
        "Score": ("ScoreRequest", "ScoreResponse"),
        "RecordQuery": ("RecordQueryRequest", "RecordQueryResponse"),
        "RecordClicks": ("RecordClicksRequest", "RecordClicksResponse"),
        "RecordSearchClicks": ("RecordSearchClicksRequest", "RecordSearchClicksResponse"),
    }

    def fields(message: str) -> dict[str, int]:
        return {f.name: f.number for f in fd.message_types_by_name[message].fields}

    assert fields("ScoreRequest") == {"user_id": 1, "item_ids": 2, "request_time_ms": 3}
    assert fields("ScoreResponse") == {
        "scores": 1,
        "model_version": 2,
        "degraded": 3,
        "degraded_reasons": 4,
    }
    assert fields("RecordQueryRequest") == {"user_id": 1, "token_ids": 2, "timestamp_ms": 3}
    assert fields("RecordQueryResponse") == {"history_length": 1}
    assert fields("RecordClicksRequest") == {"user_id": 1, "item_ids": 2, "timestamp_ms": 3}
    assert fields("RecordClicksResponse") == {"history_length": 1}
    assert fields("RecordSearchClicksRequest") == {
        "user_id": 1,
        "search_timestamp_ms": 2,
        "item_ids": 3,
    }
    assert fields("RecordSearchClicksResponse") == {"clicks_in_search": 1}


@pytest.mark.parametrize("name", ["ScorerStub", "ScorerServicer", "add_ScorerServicer_to_server"])
def test_grpc_module_exports(name: str) -> None:
    assert hasattr(scorer_pb2_grpc, name)


def test_messages_live_under_service_api() -> None:
    # protoc would name them queryrec.v1.scorer_pb2; pickling imports __module__.
    request = scorer_pb2.ScoreRequest(user_id=7, item_ids=[1, 2, 3], request_time_ms=5)
    assert type(request).__module__ == "service.api.scorer_pb2"
    assert pickle.loads(pickle.dumps(request)) == request


def test_stubs_do_not_import_the_queryrec_package() -> None:
    code = "import service.api.scorer_pb2_grpc, sys; assert 'queryrec' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
