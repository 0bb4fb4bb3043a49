"""The CTR graph alone under ONNX Runtime's profiler: p50 and kernel time by op type.

    python benchmarks/ctr_graph_profile.py --bundle BUNDLE_DIR [--candidates 100,500]

One user row with a full click history, 1 intra-op thread (as the service runs it),
20 warm-up calls, then 200 timed and profiled calls per candidate count. Prints one line
per count and writes them to `--out` (default bench-work/ctr_graph_profile.json). docs/BENCHMARKS.md quotes it.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from queryrec.features.model_inputs import ModelInputs
from service.inference.bundle import session_options
from service.inference.bundle_loader import load_bundle
from service.inference.features import FeatureBuilder, UserRow


def full_row(builder: FeatureBuilder) -> UserRow:
    """One user row with every click and query slot filled (and each search's clicked
    results, for a bundle that reads them)."""
    lengths = builder.lengths
    slots = lengths.queries
    inputs = ModelInputs(
        user=np.array([5]),
        hour=np.array([3]),
        profile=np.ones((1, len(builder.profile_fields)), np.int64),
        click_history=np.arange(2, 2 + lengths.clicks, dtype=np.int64)[None, :],
        query_tokens=np.ones((1, slots, lengths.tokens), np.int64),
        query_age=np.ones((1, slots), np.int64),
        item=np.zeros(0, np.int64),
        query_clicks=(
            np.full((1, slots, lengths.clicks_per_query), 2, np.int64)
            if "query_clicks" in builder.reads
            else None
        ),
        query_click_source=(
            np.ones((1, slots), np.int64) if "query_click_source" in builder.reads else None
        ),
        query_minutes=np.ones((1, slots), np.int64) if "query_minutes" in builder.reads else None,
        click_minutes=(
            np.ones((1, lengths.clicks), np.int64) if "click_minutes" in builder.reads else None
        ),
    )
    return UserRow(inputs, query_count=slots, history_version=b"")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--candidates", default="100,500")
    parser.add_argument("--out", type=Path, default=Path("bench-work/ctr_graph_profile.json"))
    args = parser.parse_args()
    bundle = load_bundle(args.bundle, device="cpu")
    builder = FeatureBuilder.for_bundle(bundle)
    row = full_row(builder)
    # The encoder's outputs stood in by zeros of their shapes (the CTR graph alone here).
    graphs = bundle.manifest["graphs"]
    encoded = None
    if "query_encoder" in graphs:
        d = int(bundle.manifest["model_config"]["dim"])
        encoded = [
            {
                name: np.zeros((row.query_count, d) if name == "query_states" else (d,), np.float32)
                for name in graphs["query_encoder"]["outputs"]
            }
        ]
    results: dict[int, dict[str, Any]] = {}
    for n in (int(c) for c in args.candidates.split(",")):
        feed = builder.ctr_feed([row], encoded, [np.arange(3, 3 + n, dtype=np.int64)])
        options = session_options(1)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ctr")
        session = ort.InferenceSession(str(bundle.root / "ctr.onnx"), options)
        for _ in range(20):
            session.run(None, feed)
        times = []
        for _ in range(200):
            began = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - began)
        events = json.loads(Path(session.end_profiling()).read_text())
        per_op: collections.Counter[str] = collections.Counter()
        for entry in events:
            if entry.get("cat") == "Node" and entry["name"].endswith("_kernel_time"):
                per_op[entry["args"]["op_name"]] += entry["dur"]
        total = sum(per_op.values())
        shares = {op: round(us / total, 3) for op, us in per_op.most_common()}
        results[n] = {"p50_ms": round(float(np.median(times)) * 1e3, 3), "op_share": shares}
        print(n, results[n]["p50_ms"], "ms", dict(list(shares.items())[:8]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bundle": str(args.bundle), "results": results}, indent=2))


if __name__ == "__main__":
    main()
