"""The CTR stage per request: the single graph against the split graphs, CPU per call.

    python -m benchmarks.split_graph_timing --bundle BUNDLE_DIR [--candidates 100,500]
        [--clicks 50,33] [--rounds 7] [--out bench-work/split_graph_timing.json]

One ONNX Runtime session per graph with the service's options (1 intra-op thread, not
spinning), one user built by the server's feature path with every query slot filled
(`loadtest.bench.full_history_feeds`) and only its newest `--clicks` feed clicks (50: a
full history; 33: the demo data's mean at the test split), the split graphs fed as the
load test feeds them (`loadtest.graph_throughput.split_feeds`) with the history's left
padding cut as the service cuts it (`cut_history_padding`). Per round and graph: 20
warm-up calls, then
300 timed calls, CPU time of this process (`time.process_time`), graphs in turn so that
the machine's clock drifts alike for all; the medians over `--rounds` rounds are
printed and written. What a Score pays: `ctr.onnx` without the split; `ctr_pair.onnx`
on a cache hit with it, plus `ctr_user.onnx` on a miss.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bench import full_history_feeds
from loadtest.graph_throughput import split_feeds
from queryrec.features.graph_feeds import cut_history_padding
from service.inference.bundle_loader import load_bundle

CALLS = 300
WARM_UP = 20


def with_clicks(ctr_feed: dict[str, np.ndarray], clicks: int) -> dict[str, np.ndarray]:
    """The one-user CTR feed with only its newest `clicks` feed clicks (the rest left
    padding)."""
    history = ctr_feed["click_history"].copy()
    history[:, : history.shape[1] - clicks] = 0
    return {**ctr_feed, "click_history": history}


def cpu_ms_per_call(session: Any, feed: dict[str, np.ndarray]) -> float:
    for _ in range(WARM_UP):
        session.run(None, feed)
    began = time.process_time()
    for _ in range(CALLS):
        session.run(None, feed)
    return (time.process_time() - began) / CALLS * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--candidates", default="100,500")
    parser.add_argument("--clicks", default="50,33")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("bench-work/split_graph_timing.json"))
    args = parser.parse_args()
    bundle = load_bundle(args.bundle, device="cpu")
    if bundle.ctr_user is None or bundle.ctr_pair is None:
        raise SystemExit(f"{args.bundle}: no split CTR graph (ctr_user.onnx, ctr_pair.onnx)")
    graphs = bundle.manifest["graphs"]
    results: list[dict[str, Any]] = []
    for clicks in (int(c) for c in args.clicks.split(",")):
        for n in (int(c) for c in args.candidates.split(",")):
            _, full = full_history_feeds(args.bundle, n)
            ctr_feed = with_clicks(full, clicks)
            user_feed, pair_feed = split_feeds(graphs, bundle.ctr_user, ctr_feed)
            pair_feed["history_rows"] = cut_history_padding(
                pair_feed["history_rows"], ctr_feed["click_history"]
            )
            sessions = {
                "ctr.onnx": (bundle.ctr, ctr_feed),
                "ctr_pair.onnx": (bundle.ctr_pair, pair_feed),
                "ctr_user.onnx": (bundle.ctr_user, user_feed),
            }
            single = bundle.ctr.run(None, ctr_feed)[0]
            split = bundle.ctr_pair.run(None, pair_feed)[0]
            times: dict[str, list[float]] = {name: [] for name in sessions}
            for _ in range(args.rounds):
                for name, (session, feed) in sessions.items():
                    times[name].append(cpu_ms_per_call(session, feed))
            medians = {name: round(float(np.median(t)), 3) for name, t in times.items()}
            result = {
                "clicks": clicks,
                "candidates": n,
                "cpu_ms": medians,
                "hit_vs_single": round(medians["ctr.onnx"] / medians["ctr_pair.onnx"], 2),
                "max_abs_diff": float(np.max(np.abs(single - split))),
            }
            results.append(result)
            print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bundle": str(args.bundle), "results": results}, indent=2))


if __name__ == "__main__":
    main()
