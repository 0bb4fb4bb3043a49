"""Benchmark: one QueryRec training step on `kuaisar-small`, variants side by side.

    python benchmarks/train_step_ab.py [--workdir bench-work] [--rounds 20] [--steps 10]
        [--variants default,no-decay,sparse-adam,threshold-10k,dense]

Every variant is a model with the same initial weights and its own optimizer, in one
process; they step on the same pre-built batches (so batch building is not in the
number), the variants taking turns round by round in alternating order, which pairs them
against this box's drift. Per variant: the median ms per step (forward, backward,
optimizer) over the rounds, and the median over rounds of its time / the default's.

Variants:
- `default`: what `queryrec train` does on the CPU (lazy Adam with the lazy decoupled
  decay `TrainConfig.sparse_decay` on the tables of at least `SPARSE_MIN_ROWS` rows,
  dense Adam for the rest);
- `no-decay`: the same without the decoupled decay (`sparse_decay = 0` in `[train]`);
- `sparse-adam`: those tables stepped by `torch.optim.SparseAdam` with the lazy L2 added
  to the coalesced gradient first (the path before `LazyAdam`; no decoupled decay);
- `threshold-10k`: sparse updates for tables of at least 10,000 rows (words and users too);
- `dense`: dense Adam on every table (`embedding_updates = "dense"` in `[train]`).

Uses the dataset of `benchmarks/prepare_kuaisar_small.py`; writes
bench-work/train_step_ab.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from queryrec.features.dataset import PreparedDataset
from queryrec.models.registry import build_model, model_config, model_spec
from queryrec.training.batch_order import epoch_batches
from queryrec.training.batches import BatchBuilder
from queryrec.training.config import TrainConfig
from queryrec.training.objective import Objective, to_tensors
from queryrec.training.optimizers import SPARSE_MIN_ROWS, TrainingOptimizer

VARIANTS = ("default", "no-decay", "sparse-adam", "threshold-10k", "dense")


class _SparseAdamWithRowDecay:
    """The sparse tables' previous optimizer: lazy L2 on the coalesced gradient, then
    `torch.optim.SparseAdam` (for comparison only)."""

    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: float) -> None:
        self.params, self.weight_decay = params, weight_decay
        self.inner = torch.optim.SparseAdam(params, lr=lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for param in self.params:
            if param.grad is None:
                continue
            grad = param.grad.coalesce()
            rows = grad.indices()[0]  # (n,)
            values = grad.values() + self.weight_decay * param.detach()[rows]  # (n, d)
            param.grad = torch.sparse_coo_tensor(
                grad.indices(), values, grad.shape, is_coalesced=True, check_invariants=False
            )
        self.inner.step()  # type: ignore[no-untyped-call]


def _optimizer(model: torch.nn.Module, cfg: TrainConfig, variant: str) -> TrainingOptimizer:
    updates = "dense" if variant == "dense" else "sparse"
    min_rows = 10_000 if variant == "threshold-10k" else SPARSE_MIN_ROWS
    decay = 0.0 if variant in ("no-decay", "sparse-adam") else cfg.sparse_decay
    optimizer = TrainingOptimizer(
        model, cfg.learning_rate, cfg.weight_decay, updates, min_rows, decay
    )
    if variant == "sparse-adam" and optimizer.sparse is not None:
        params = list(optimizer.sparse.param_groups[0]["params"])
        optimizer.sparse = _SparseAdamWithRowDecay(params, cfg.learning_rate, cfg.weight_decay)  # type: ignore[assignment]
    return optimizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if "default" not in variants:
        variants.insert(0, "default")
    data = args.workdir / "data-kuaisar-small"
    if not (data / "schema.json").exists():
        print(f"{data} is missing: run benchmarks/prepare_kuaisar_small.py first", file=sys.stderr)
        return 2

    cfg = TrainConfig(model="queryrec", device="cpu", progress=False)
    dataset = PreparedDataset(data)
    spec = model_spec(cfg.model)
    model_cfg = model_config(cfg.model, dataset.schema)
    steps: dict[str, tuple[Objective, TrainingOptimizer]] = {}
    sparse_tables: dict[str, list[str]] = {}
    for variant in variants:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, dataset, model_cfg)
        optimizer = _optimizer(model, cfg, variant)
        sparse_tables[variant] = optimizer.sparse_names
        objective = Objective(
            model,
            spec,
            spec.next_weight if cfg.next_weight is None else cfg.next_weight,
            spec.cl_weight if cfg.cl_weight is None else cfg.cl_weight,
            cfg.temperature,
        )
        steps[variant] = (objective, optimizer)
    builder = BatchBuilder(
        dataset,
        model_cfg.history_lengths,
        aux=cfg.aux,
        reads=model.reads,
        training_inputs=model.wanted_training_inputs(),
    )
    arrays = builder.split_arrays("train", with_aux=True)
    order = epoch_batches(
        np.random.default_rng(cfg.seed), arrays.query_count, cfg.batch_size, 0, 1,
        4 * args.steps * cfg.batch_size,
    )  # fmt: skip
    aux_rng = np.random.default_rng(1)
    batches = [
        to_tensors(builder.build(arrays, rows, aux_rng), torch.device("cpu")) for rows in order
    ]
    print(f"{len(batches)} batches of {cfg.batch_size}; variants {', '.join(variants)}", flush=True)

    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for round_ in range(args.rounds):
        chunk = batches[(round_ % 4) * args.steps : (round_ % 4 + 1) * args.steps]
        for variant in variants if round_ % 2 == 0 else variants[::-1]:
            objective, optimizer = steps[variant]
            started = time.perf_counter()
            for batch in chunk:
                losses = objective(batch)
                optimizer.zero_grad()
                losses["total"].backward()
                optimizer.step()
            times[variant].append((time.perf_counter() - started) / len(chunk) * 1000)
        print(
            f"round {round_ + 1}: " + ", ".join(f"{v} {times[v][-1]:.1f}" for v in variants),
            flush=True,
        )

    result: dict[str, Any] = {
        "benchmark": "QueryRec training step (forward, backward, optimizer), kuaisar-small, CPU",
        "batch_size": cfg.batch_size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "torch_threads": torch.get_num_threads(),
        "variants": {
            variant: {
                "sparse_tables": sparse_tables[variant],
                "ms_per_step_median": round(statistics.median(times[variant]), 2),
                "ratio_to_default_median": round(
                    statistics.median(
                        t / d for t, d in zip(times[variant], times["default"], strict=True)
                    ),
                    3,
                ),
                "ms_per_step_rounds": [round(t, 2) for t in times[variant]],
            }
            for variant in variants
        },
    }
    for variant, row in result["variants"].items():
        print(
            f"{variant:14s} {row['ms_per_step_median']:8.1f} ms/step  x{row['ratio_to_default_median']}"
        )
    target = args.workdir / "train_step_ab.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
