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

from service.bundle import load_bundle, session_options
from service.features import FeatureBuilder, UserRow, ctr_inputs


def full_row(builder: FeatureBuilder) -> UserRow:
    lengths = builder.lengths
    return UserRow(
        user=5,
        hour=3,
        profile=np.ones(len(builder.profile_fields), np.int64),
        click_history=np.arange(2, 2 + lengths.clicks, dtype=np.int64),
        query_tokens=np.ones((lengths.queries, lengths.tokens), np.int64),
        query_age=np.ones(lengths.queries, np.int64),
        query_count=lengths.queries,
        history_version=b"",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--candidates", default="100,500")
    parser.add_argument("--out", type=Path, default=Path("bench-work/ctr_graph_profile.json"))
    args = parser.parse_args()
    bundle = load_bundle(args.bundle, device="cpu")
    row = full_row(FeatureBuilder.for_bundle(bundle))
    width = {i.name: i.shape for i in bundle.ctr.get_inputs()}.get("query_repr")
    reprs = None if width is None else np.zeros((1, int(width[1])), np.float32)
    results: dict[int, dict[str, Any]] = {}
    for n in (int(c) for c in args.candidates.split(",")):
        feed = ctr_inputs([row], reprs, [np.arange(3, 3 + n, dtype=np.int64)])
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
