"""Generated gRPC stubs of the scoring API, proto/queryrec/v1/scorer.proto.

`scorer_pb2.py` (messages), `scorer_pb2.pyi` (their types) and `scorer_pb2_grpc.py`
(`ScorerStub`, `ScorerServicer`, `add_ScorerServicer_to_server`) are generated and
committed: do not edit them. After changing the proto, regenerate them with the one step

    .venv/bin/python -m service.api.generate

(`generate.py` says what it rewrites). tests/service/test_api_stubs.py fails when the
committed files and the proto disagree.
"""
