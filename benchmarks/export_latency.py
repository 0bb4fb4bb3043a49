"""Serving-graph latency: ONNX Runtime vs PyTorch eager, and the CTR graph's compute floor.

    python benchmarks/export_latency.py --run RUN_DIR [--bundle BUNDLE_DIR] [--out FILE]

For the shapes the service uses (encoder batches 1, 8, 32, 128 with full 20 x 8 query
histories; CTR 1 x 100, 1 x 500 and 32 requests x 100 flattened) it times the bundle's
ONNX Runtime sessions and the same computation in PyTorch eager (the export wrappers of
`export.graphs`), one intra-op thread each, and reports p50 / p99 in ms. FLOPs per call
are counted on the PyTorch graph (`torch.utils.flop_counter`: matmuls and attention),
and the compute floor is FLOPs / the fp32 matmul rate of numpy/OpenBLAS measured in the
same run on one thread (torch's MKL rate is recorded beside it). Results go to a JSON file; the
numbers in docs/BENCHMARKS.md come from it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from export.bundle import ExportOptions, export_bundle
from export.graphs import CTRGraph, QueryEncoderGraph, ctr_inputs, encoder_inputs, encoder_outputs
from export.parity import draw_inputs
from queryrec.features.dataset import PreparedDataset
from queryrec.features.graph_feeds import graph_feed
from queryrec.features.model_inputs import ModelInputs
from queryrec.models.ctr_model import CTRModel
from queryrec.training.checkpoint import load_checkpoint, read_checkpoint
from service.inference.bundle_loader import load_bundle

ENCODER_BATCHES = (1, 8, 32, 128)
CTR_SHAPES = ((1, 100), (1, 500), (32, 100))  # (requests, candidates each)


def timed(fn: object, repeats: int, warmup: int = 20) -> dict[str, float]:
    """p50 / p99 / mean in ms of calling fn() `repeats` times after a warm-up."""
    assert callable(fn)
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        fn()
        times[i] = (time.perf_counter() - start) * 1e3
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": float(times.mean()),
    }


def matmul_rate() -> dict[str, float]:
    """fp32 GFLOP/s of a 1024^3 matmul on one thread: numpy (OpenBLAS) and torch (MKL).

    threadpoolctl pins OpenBLAS to one thread whatever the environment says; torch runs
    under torch.set_num_threads(1). A rate above one core's peak (about 96 GFLOP/s at
    AVX2 + 2 FMA units, 3 GHz) would mean a second thread slipped in.
    """
    from threadpoolctl import threadpool_limits

    n = 1024
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    flops = 2 * n**3
    with threadpool_limits(limits=1):
        numpy_ms = timed(lambda: a @ b, 20, 3)["p50_ms"]
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    torch_ms = timed(lambda: ta @ tb, 20, 3)["p50_ms"]
    return {
        "numpy_gflops": flops / numpy_ms / 1e6,
        "torch_gflops": flops / torch_ms / 1e6,
    }


def count_flops(fn: object) -> int:
    assert callable(fn)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def full_histories(model: CTRModel, users: int) -> ModelInputs[np.ndarray]:
    """`users` rows whose every query slot holds a search of T words (and K clicked
    results, for a model that reads them)."""
    cfg = model.cfg
    rng = np.random.default_rng(users)
    length, tokens = cfg.query_history, cfg.query_tokens
    inputs = draw_inputs(model, users, 1, rng)
    full = inputs.replace(
        query_tokens=rng.integers(2, cfg.vocab.words, size=(users, length, tokens)),
        query_age=rng.integers(1, 10, size=(users, length)),
    )
    if inputs.query_clicks is not None:
        clicks = rng.integers(2, cfg.vocab.items, size=(users, length, cfg.query_clicks))
        full = full.replace(query_clicks=clicks)
    return full


def ctr_feed(
    model: CTRModel, requests: int, candidates: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The CTR graph's feed for `requests` user rows of `candidates` pairs each (random
    inputs and encoder outputs: the graph's cost does not depend on the values)."""
    inputs = draw_inputs(model, requests, requests * candidates, rng).replace(
        pair_user=np.repeat(np.arange(requests, dtype=np.int64), candidates)
    )
    slots, dim = inputs.query_age.shape[1], model.cfg.dim
    encoded = {
        name: rng.standard_normal(
            (requests, slots, dim) if name == "query_states" else (requests, dim)
        ).astype(np.float32)
        for name in encoder_outputs(model)
    }
    return graph_feed(ctr_inputs(model), inputs, encoded)


def tensors_of(feed: dict[str, np.ndarray], names: tuple[str, ...]) -> list[torch.Tensor]:
    """A feed as the export wrappers' positional inputs, in the graph's input order."""
    return [torch.from_numpy(feed[name]) for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a queryrec run folder")
    parser.add_argument("--bundle", type=Path, help="its bundle (exported here if absent)")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench-work/export_latency.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle_dir = args.bundle
    if bundle_dir is None:
        bundle_dir = Path(tempfile.mkdtemp()) / "bundle"
        export_bundle(args.run, bundle_dir, ExportOptions())
    bundle = load_bundle(bundle_dir, device="cpu", threads=1)
    payload = read_checkpoint(args.run)
    model, _ = load_checkpoint(args.run, PreparedDataset(Path(payload["data_dir"])), payload)
    cfg = model.cfg
    encoder_graph, ctr_graph = QueryEncoderGraph(model).eval(), CTRGraph(model).eval()
    rate = matmul_rate()
    floor_gflops = rate["numpy_gflops"]  # OpenBLAS, the faster library here (MEASURED.md)
    rows: list[dict[str, object]] = []

    assert bundle.encoder is not None
    encoder_session = bundle.encoder
    for users in ENCODER_BATCHES:
        feed = graph_feed(encoder_inputs(model), full_histories(model, users))
        encoder_tensors = tensors_of(feed, encoder_inputs(model))

        def eager(tensors: list[torch.Tensor] = encoder_tensors) -> None:
            with torch.no_grad():
                encoder_graph(*tensors)

        flops = count_flops(eager)
        rows.append(
            {
                "graph": "query_encoder",
                "shape": f"{users} users x {cfg.query_history} queries x {cfg.query_tokens} words",
                "flops": flops,
                "floor_ms": flops / floor_gflops / 1e6,
                "ort": timed(lambda feed=feed: encoder_session.run(None, feed), args.repeats),
                "torch": timed(eager, args.repeats),
            }
        )

    rng = np.random.default_rng(0)
    for requests, candidates in CTR_SHAPES:
        feed = ctr_feed(model, requests, candidates, rng)
        ctr_tensors = tensors_of(feed, ctr_inputs(model))

        def eager_ctr(tensors: list[torch.Tensor] = ctr_tensors) -> None:
            with torch.no_grad():
                ctr_graph(*tensors)

        flops = count_flops(eager_ctr)
        rows.append(
            {
                "graph": "ctr",
                "shape": f"{requests} x {candidates}",
                "flops": flops,
                "floor_ms": flops / floor_gflops / 1e6,
                "ort": timed(lambda feed=feed: bundle.ctr.run(None, feed), args.repeats),
                "torch": timed(eager_ctr, args.repeats),
            }
        )

    # The floor moves with the machine's clock between runs; time the 1 x 100 graph and
    # the reference matmul alternately so that each ratio compares like with like.
    one_by_100 = next(row for row in rows if row["shape"] == "1 x 100")
    feed = ctr_feed(model, 1, 100, rng)
    rounds = []
    for _ in range(7):
        rate_now = matmul_rate()["numpy_gflops"]
        graph_ms = timed(lambda feed=feed: bundle.ctr.run(None, feed), 200)["p50_ms"]
        flops_1x100 = one_by_100["flops"]
        assert isinstance(flops_1x100, int)
        rounds.append(
            {
                "gflops": rate_now,
                "ort_p50_ms": graph_ms,
                "ratio": graph_ms / (flops_1x100 / rate_now / 1e6),
            }
        )
    interleaved = {"rounds": rounds, "median_ratio": float(np.median([r["ratio"] for r in rounds]))}

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "threads": 1,
        "matmul_rate": rate,
        "floor_gflops": floor_gflops,
        "bundle": str(bundle_dir),
        "model_version": bundle.model_version,
        "rows": rows,
        "ctr_1x100_interleaved": interleaved,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"matmul rate, 1 thread: numpy {rate['numpy_gflops']:.0f}, torch {rate['torch_gflops']:.0f} GFLOP/s"
    )
    print(
        "| graph | shape | MFLOPs | floor ms | ORT p50 / p99 ms | torch p50 / p99 ms | ORT / floor | torch / ORT |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        ort_t, torch_t = row["ort"], row["torch"]
        assert isinstance(ort_t, dict) and isinstance(torch_t, dict)
        row_flops, floor = row["flops"], row["floor_ms"]
        assert isinstance(row_flops, int) and isinstance(floor, float)
        print(
            f"| {row['graph']} | {row['shape']} | {row_flops / 1e6:.1f} | {floor:.3f} | "
            f"{ort_t['p50_ms']:.3f} / {ort_t['p99_ms']:.3f} | "
            f"{torch_t['p50_ms']:.3f} / {torch_t['p99_ms']:.3f} | "
            f"{ort_t['p50_ms'] / floor:.1f}x | {torch_t['p50_ms'] / ort_t['p50_ms']:.1f}x |"
        )
    print(
        f"ctr 1 x 100, graph and matmul rate timed alternately (7 rounds): median "
        f"{interleaved['median_ratio']:.1f}x the floor"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
