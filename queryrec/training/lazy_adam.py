"""Lazy Adam for the large id tables: Adam's update on the rows a sparse gradient holds.

The math is `torch.optim.SparseAdam`'s (lazy Adam: the moments of a row move only when
a batch touches it; bias correction by the table's step count; `sqrt(v) + eps`), plus
coupled L2 on the touched rows (`g + wd * w`, what dense Adam's `weight_decay` does to
every row; SparseAdam has none). A test pins it to SparseAdam to float precision.

Why not SparseAdam itself, a choice measured on `kuaisar-small` (docs/BENCHMARKS.md
"Scale"): SparseAdam composes `sparse_mask` and sparse-into-dense `add_` calls, three
sparse tensors a step, and with the lazy L2 before it (a second coalesce-and-rebuild)
the sparse update took about 50 ms of a 150 ms training step; the same update as
`index_select` of the touched rows, dense math on (n, d), and `index_copy_` back takes
a fraction of that. It stays an `Optimizer` (state dict, `zero_grad`, param groups).

`decay` (off by default) adds AdamW's decoupled weight decay, `w <- w * (1 - lr * decay)`
every step for every row, applied lazily but exactly: a row's missed steps are caught up
in closed form when a batch touches it, and `settle()` brings every row up to date (call
it before the weights are read: validation, checkpoints). Dense Adam with L2 shrinks the
rows no batch touches every step; lazy updates alone never do (docs/BENCHMARKS.md
"Scale").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class LazyAdam(torch.optim.Optimizer):
    """Adam with lazy L2 for parameters whose gradients are sparse (row-sparse COO)."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay: float = 0.0,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0 or decay < 0:
            raise ValueError("lr, eps, weight_decay and decay must not be negative")
        if lr * decay >= 1:
            raise ValueError(f"lr * decay must be below 1, not {lr * decay}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas must be in [0, 1), not {betas}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "decay": decay,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    @torch.no_grad()
    def settle(self) -> None:
        """Apply every row's pending decoupled decay (a no-op without `decay`)."""
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state[param]
                if group["decay"] and state:
                    every_row = torch.arange(param.shape[0], device=param.device)
                    param.mul_(self._catch_up(state, every_row, group).unsqueeze(1))

    @staticmethod
    def _catch_up(state: dict[str, Any], rows: Tensor, group: dict[str, Any]) -> Tensor:
        """(n,) factors that bring `rows` up to the table's step, (1 - lr * decay) per
        missed step; marks them up to date."""
        missed = state["step"] - state["decayed_to"][rows]  # (n,) steps
        state["decayed_to"][rows] = state["step"]
        return torch.pow(1.0 - group["lr"] * group["decay"], missed.to(torch.float64)).float()

    def _update(self, param: Tensor, group: dict[str, Any]) -> None:
        """One lazy Adam step of `param` (V, d) on the rows its sparse gradient holds."""
        grad = param.grad
        assert grad is not None
        if not grad.is_sparse:
            raise RuntimeError("LazyAdam takes sparse gradients (nn.Embedding(sparse=True))")
        grad = grad.coalesce()  # unique rows: the update is not linear in the gradient
        rows = grad.indices()[0]  # (n,)
        if rows.numel() == 0:
            return
        values = grad.values()  # (n, d)
        beta1, beta2 = group["betas"]
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if group["decay"]:  # per row: the step its decoupled decay has been applied to
                state["decayed_to"] = torch.zeros(
                    param.shape[0], dtype=torch.int64, device=param.device
                )
        state["step"] += 1
        weight = param.index_select(0, rows)  # (n, d)
        if group["decay"]:
            weight.mul_(self._catch_up(state, rows, group).unsqueeze(1))  # AdamW, caught up
        if group["weight_decay"]:
            values = values.add(weight, alpha=group["weight_decay"])  # lazy L2
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)  # (n, d)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows)  # (n, d)
        exp_avg_sq.mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        step = state["step"]
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        denom = exp_avg_sq.sqrt_().add_(group["eps"])
        param.index_copy_(0, rows, weight.addcdiv_(exp_avg, denom, value=-step_size))
