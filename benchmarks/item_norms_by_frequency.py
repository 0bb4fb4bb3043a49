"""Diagnostic: the item-id embedding's row norms by how often an item is a training candidate.

    python benchmarks/item_norms_by_frequency.py RUN_DIR [RUN_DIR ...]
        [--workdir bench-work] [--out bench-work/item_norms_by_frequency.json]

Why (issue 19): the sparse and dense embedding updates differ most on the rows a batch
rarely touches. Dense Adam with coupled L2 moves every row each step and pulls a row that
no batch touches to about zero; lazy Adam leaves such a row at its initial value. Items
of the test split that were rarely or never training candidates are then scored from
near-zero rows (dense) or from initial noise (sparse). This script reads each run's
`checkpoint.pt` (the runs of `benchmarks/train_kuaisar_small.py`), counts how often every
item is a candidate in the training split, and prints, per frequency bucket, the mean L2
norm of the item-id rows in each run and the share of test impressions whose candidate
falls in the bucket.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from queryrec.features.dataset import PreparedDataset

BUCKETS = ((0, 0), (1, 2), (3, 9), (10, 99), (100, None))
ITEM_TABLE = "items.item_id.weight"


def _bucket_name(low: int, high: int | None) -> str:
    if high is None:
        return f">={low}"
    return str(low) if low == high else f"{low}-{high}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run directories with checkpoint.pt")
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    data = PreparedDataset(args.workdir / "data-kuaisar-small")
    train_items = data.samples("train")["item"].to_numpy().astype(np.int64)
    test_items = data.samples("test")["item"].to_numpy().astype(np.int64)
    norms: dict[str, np.ndarray] = {}
    for run in args.runs:
        checkpoint = run / "checkpoint.pt"
        if not checkpoint.exists():
            print(f"{checkpoint}: missing (run benchmarks/train_kuaisar_small.py)", file=sys.stderr)
            return 2
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        table = state[ITEM_TABLE]  # (n_items, d)
        norms[run.name] = table.norm(dim=1).numpy()  # (n_items,)
    n_items = len(next(iter(norms.values())))
    counts = np.bincount(train_items, minlength=n_items)  # (n_items,) candidate count
    rows: list[dict[str, object]] = []
    for low, high in BUCKETS:
        in_bucket = (counts >= low) & (counts <= (high if high is not None else counts.max()))
        in_bucket[0] = False  # padding row
        name, share = _bucket_name(low, high), float(in_bucket[test_items].mean())
        means = {run: round(float(norm[in_bucket].mean()), 4) for run, norm in norms.items()}
        rows.append(
            {
                "train_candidate_count": name,
                "items": int(in_bucket.sum()),
                "test_impression_share": round(share, 4),
                "mean_item_id_norm": means,
            }
        )
        print(
            f"{name:>6}: {int(in_bucket.sum()):>9,} items, {share:.1%} of test impressions, "
            "norms " + ", ".join(f"{run} {mean:.3f}" for run, mean in means.items())
        )
    target = args.out or args.workdir / "item_norms_by_frequency.json"
    target.write_text(json.dumps({"table": ITEM_TABLE, "buckets": rows}, indent=2) + "\n")
    print(f"written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
