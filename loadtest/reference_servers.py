"""Comparison servers for the side-by-side benchmark, on the service's own gRPC API.

Each one is a `grpc.aio` server speaking `queryrec.v1.Scorer` (Score, RecordQuery,
RecordClicks, RecordSearchClicks; the committed stubs in `service/api`) and
`grpc.health.v1`, so that the same load generator, request stream and client code drive
them and `queryrec serve`:

- `echo`: the bare transport. Score answers a constant score per candidate without
  touching Redis or a model; the writes answer without storing anything. No model
  server on the same transport can be faster: this is the ceiling, and its CPU
  per call is the transport's share of the floor (`loadtest.bench`).
- `naive-onnx`: what a team writes first. One request at a time, inline on the event
  loop: the Redis read (`service.state.store.StateStore.read`, no query-vector cache), the
  service's feature path (`service.inference.features.FeatureBuilder` and `inline_feeds`: reused,
  so the inputs are exactly the service's), then one ONNX Runtime call per graph
  (encoder, then CTR) with one intra-op thread; no batching, no cache, no budget, no
  degraded answers.
- `naive-torch`: the same with the PyTorch eager model instead of ONNX Runtime: the
  run's checkpoint (`queryrec.training.checkpoint.load_checkpoint`) wrapped in the export's
  serving modules (`export.graphs.QueryEncoderGraph`, `CTRGraph`), fed the same feeds
  as the ONNX graphs (positional, in the graphs' input order), so only the runtime
  differs; `torch.set_num_threads(1)`, `torch.inference_mode`.

The naive servers always run the encoder, also for a user without queries: the encoder
of an empty history is exactly the service's learned "no query" vector (the service
computes it the same way at start), so the scores are the service's scores. Their writes
go through `RedisState.append_query` / `append_clicks` / `record_search_clicks`, the
service's own idempotent, capped writes, so every server leaves the same state behind.

    python -m loadtest.reference_servers --kind naive-onnx --bundle BUNDLE \
        --redis redis://127.0.0.1:6379/0 --port 50061

prints `reference server KIND listening on HOST:PORT` once it serves, and stops on
SIGTERM / SIGINT. `ReferenceServerProcess` runs one as a subprocess (tests, the bench).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import numpy as np
from grpc_health.v1 import health_pb2_grpc

from clients.launcher import ListeningProcess
from service.api import scorer_pb2 as pb
from service.api import scorer_pb2_grpc
from service.errors import SearchNotFound, StateUnavailable
from service.inference.bundle import Bundle
from service.inference.bundle_loader import load_bundle
from service.inference.features import FeatureBuilder, UserRow, inline_feeds, split_encoded
from service.state.by_url import open_state
from service.state.store import HistoryCaps, StateStore
from service.transport.health import SERVING, Health

if TYPE_CHECKING:
    import torch

KINDS = ("echo", "naive-onnx", "naive-torch")
ECHO_SCORE = 0.5
"""What `echo` answers for every candidate."""
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Scorer"].full_name
STATE_TTL_S = 30 * 24 * 3600
"""TTL of the keys the naive servers write: the service's default (`state_ttl_s`)."""
LISTENING = re.compile(r"reference server (\S+) listening on (\S+):(?P<port>\d+)")
"""The line a server prints once it serves (groups: kind, host, port)."""
STOP_GRACE_S = 1.0
REPO_ROOT = Path(__file__).resolve().parents[1]


class Model(Protocol):
    """One request's scores from its user row and candidate item indices."""

    def scores(self, row: UserRow, items: np.ndarray) -> np.ndarray: ...


def encoder_output_names(bundle: Bundle) -> list[str]:
    """The encoder graph's outputs, in order ([]: a bundle without an encoder)."""
    graphs = bundle.manifest["graphs"]
    return list(graphs["query_encoder"]["outputs"]) if "query_encoder" in graphs else []


class OnnxModel:
    """The bundle's ONNX graphs, one ONNX Runtime call per graph per request."""

    def __init__(self, bundle: Bundle, features: FeatureBuilder) -> None:
        self.features = features
        self.encoder = bundle.encoder
        self.encoder_outputs = encoder_output_names(bundle)
        self.ctr = bundle.ctr

    def scores(self, row: UserRow, items: np.ndarray) -> np.ndarray:
        _, feed = inline_feeds(self.features, self.encoder, self.encoder_outputs, [row], [items])
        return np.asarray(self.ctr.run(None, feed)[0])


class TorchModel:
    """The run's PyTorch model in eager mode, in the export's serving modules, fed the
    service's feeds (`FeatureBuilder.encoder_feed` / `ctr_feed`) as positional tensors
    in the graphs' input order (`export.graphs.encoder_inputs` / `ctr_inputs`), so only
    the runtime differs from the ONNX graphs."""

    def __init__(
        self,
        run_dir: Path,
        data_dir: Path | None,
        features: FeatureBuilder,
        platt: tuple[float, float] | None = None,
    ) -> None:
        import torch

        from export.graphs import (
            CTRGraph,
            QueryEncoderGraph,
            ctr_inputs,
            encoder_inputs,
            encoder_outputs,
        )
        from queryrec.features.dataset import PreparedDataset
        from queryrec.training.checkpoint import load_checkpoint, read_checkpoint

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        payload = read_checkpoint(run_dir)
        recorded = payload.get("data_dir")
        data = data_dir if data_dir is not None else (Path(recorded) if recorded else None)
        if data is None:
            raise SystemExit(f"{run_dir}: the checkpoint does not record its dataset; pass --data")
        model, _ = load_checkpoint(run_dir, PreparedDataset(data), payload)
        self.torch = torch
        self.features = features
        self.encoder_outputs = list(encoder_outputs(model))
        self.encoder_names = encoder_inputs(model)
        self.ctr_names = ctr_inputs(model)
        self.encoder = QueryEncoderGraph(model).eval() if self.encoder_outputs else None
        self.ctr = CTRGraph(model, platt=platt).eval()

    def scores(self, row: UserRow, items: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            encoded = None
            if self.encoder is not None:
                feed = self.features.encoder_feed([row])
                out = self.encoder(*_tensors(self.torch, feed, self.encoder_names))
                outputs = [out] if isinstance(out, self.torch.Tensor) else list(out)
                values = [value.numpy() for value in outputs]
                encoded = split_encoded(values, self.encoder_outputs, [row])
            feed = self.features.ctr_feed([row], encoded, [items])
            return np.asarray(self.ctr(*_tensors(self.torch, feed, self.ctr_names)).numpy())


def _tensors(
    torch_module: Any, feed: dict[str, np.ndarray], names: tuple[str, ...]
) -> list[torch.Tensor]:
    """numpy feed -> torch tensors in the order of `names` (copies: the feed's arrays may
    be read-only views)."""
    return [torch_module.from_numpy(np.array(feed[name])) for name in names]


def now_ms() -> int:
    return int(time.time() * 1000)


class EchoScorer(scorer_pb2_grpc.ScorerServicer):
    """The transport alone: a constant score per candidate, writes not stored."""

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ScoreResponse(scores=[ECHO_SCORE] * len(request.item_ids), model_version="echo")

    async def RecordQuery(
        self, request: pb.RecordQueryRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return pb.RecordQueryResponse(history_length=0)

    async def RecordClicks(
        self, request: pb.RecordClicksRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return pb.RecordClicksResponse(history_length=0)

    async def RecordSearchClicks(
        self, request: pb.RecordSearchClicksRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return pb.RecordSearchClicksResponse(clicks_in_search=0)


class NaiveScorer(scorer_pb2_grpc.ScorerServicer):
    """Redis read, features, model, one request at a time on the event loop."""

    def __init__(
        self, bundle: Bundle, state: StateStore, model: Model, features: FeatureBuilder
    ) -> None:
        self.features = features
        self.model_version = bundle.model_version
        self.state = state
        self.model = model

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> Any:
        raw_items = np.asarray(request.item_ids, dtype=np.int64)
        if len(raw_items) == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "item_ids is empty")
        try:
            (state,) = await self.state.read([request.user_id], None)
        except StateUnavailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        at = request.request_time_ms or now_ms()
        row = self.features.user_row(request.user_id, state, at)
        scores = self.model.scores(row, self.features.maps.items(raw_items))
        return pb.ScoreResponse(scores=scores.tolist(), model_version=self.model_version)

    async def RecordQuery(
        self, request: pb.RecordQueryRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            kept = await self.state.append_query(
                request.user_id, request.timestamp_ms or now_ms(), list(request.token_ids)
            )
        except StateUnavailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        return pb.RecordQueryResponse(history_length=kept)

    async def RecordClicks(
        self, request: pb.RecordClicksRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            kept = await self.state.append_clicks(
                request.user_id, request.timestamp_ms or now_ms(), list(request.item_ids)
            )
        except StateUnavailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        return pb.RecordClicksResponse(history_length=kept)

    async def RecordSearchClicks(
        self, request: pb.RecordSearchClicksRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            clicks = await self.state.record_search_clicks(
                request.user_id, request.search_timestamp_ms, list(request.item_ids)
            )
        except SearchNotFound as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except StateUnavailable as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        return pb.RecordSearchClicksResponse(clicks_in_search=clicks)


def platt(bundle: Bundle) -> tuple[float, float] | None:
    """The bundle's Platt scaling (a, b), which its ctr.onnx applies (export.calibration);
    the eager model applies the same so that it scores what the service scores."""
    calibration = bundle.manifest.get("calibration", {})
    return (calibration["a"], calibration["b"]) if "a" in calibration else None


def history_caps(bundle: Bundle) -> HistoryCaps:
    """The service's default caps: the bundle's history lengths L and H."""
    lengths = bundle.manifest["max_lengths"]
    return HistoryCaps(
        queries=int(lengths["query_history"]),
        clicks=int(lengths["click_history"]),
        ttl_s=STATE_TTL_S,
    )


async def serve(
    kind: str,
    bundle_dir: Path | None,
    redis_url: str | None,
    host: str,
    port: int,
    run_dir: Path | None = None,
    data_dir: Path | None = None,
) -> None:
    """Build the server of `kind`, serve until SIGTERM / SIGINT, then stop."""
    state: StateStore | None = None
    servicer: scorer_pb2_grpc.ScorerServicer
    if kind == "echo":
        servicer = EchoScorer()
    else:
        if bundle_dir is None or redis_url is None:
            raise SystemExit(f"--kind {kind} needs --bundle and --redis")
        bundle = load_bundle(bundle_dir, device="cpu", threads=1)
        features = FeatureBuilder.for_bundle(bundle)
        model: Model
        if kind == "naive-onnx":
            model = OnnxModel(bundle, features)
        else:
            if run_dir is None:
                raise SystemExit("--kind naive-torch needs --run RUN_DIR (the trained run)")
            model = TorchModel(run_dir, data_dir, features, platt(bundle))
        state = open_state(redis_url, history_caps(bundle))
        await state.ping()
        servicer = NaiveScorer(bundle, state, model, features)
    server = grpc.aio.server()
    scorer_pb2_grpc.add_ScorerServicer_to_server(servicer, server)
    health = Health(("", SERVICE_NAME))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"cannot bind {host}:{port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        await health.set_all(SERVING)
        print(f"reference server {kind} listening on {host}:{bound}", flush=True)
        await stop.wait()
    finally:
        await health.close()
        await server.stop(STOP_GRACE_S)
        if state is not None:
            await state.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.reference_servers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--bundle", type=Path, help="model bundle (not read by echo)")
    parser.add_argument("--run", type=Path, help="trained run folder (naive-torch)")
    parser.add_argument(
        "--data", type=Path, help="prepared dataset of the run (naive-torch; default: recorded)"
    )
    parser.add_argument("--redis", help="Redis URL (not used by echo)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    asyncio.run(
        serve(args.kind, args.bundle, args.redis, args.host, args.port, args.run, args.data)
    )


class ReferenceServerProcess(ListeningProcess):
    """A reference server as a subprocess (`app.demo.ListeningProcess`, as
    `ServerProcess` is for `queryrec serve`): `launch` + `wait`, or `start`, -> its port."""

    listening = LISTENING

    def __init__(
        self,
        kind: str,
        log_path: Path,
        *,
        bundle_dir: Path | None = None,
        redis_url: str | None = None,
        run_dir: Path | None = None,
        data_dir: Path | None = None,
        port: int = 0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        super().__init__(log_path)
        self.kind = kind
        self.name = f"reference server {kind}"
        self.args = ["--kind", kind, "--port", str(port)]
        for flag, value in (
            ("--bundle", bundle_dir),
            ("--redis", redis_url),
            ("--run", run_dir),
            ("--data", data_dir),
        ):
            if value is not None:
                resolved = value if isinstance(value, str) else str(Path(value).resolve())
                self.args += [flag, resolved]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "loadtest.reference_servers", *self.args]

    def environment(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        return {**super().environment(), "PYTHONPATH": path}

    def __enter__(self) -> ReferenceServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
