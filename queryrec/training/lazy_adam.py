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

`momentum_catch_up` (off by default) gives a row, when it is next touched (or settled),
the steps dense Adam would have taken with its momentum in the steps it missed: dense
Adam keeps moving a row after the batch that touched it, `lr * m_j / sqrt(v_j)` with
`m_j = beta1^j m` and `v_j = beta2^j v`, which sums to about ten times the one step lazy
Adam takes (`1 / (1 - beta1 / sqrt(beta2))`); a rarely touched row learns about ten times
slower under lazy Adam. The sum over the missed steps is a geometric series, applied in
closed form, and the moments are decayed by `beta^missed` before the new gradient is
added, so a table stepped this way follows dense Adam (with AdamW's decay, when `decay`
is set) up to two approximations: the bias correction of the current step for the whole
series, and `eps` added to `sqrt(v)` rather than to `sqrt(beta2^j v)`; a test pins it to
`torch.optim.Adam` / `AdamW` once the bias corrections are near one. The coupled L2
(`weight_decay`) still acts on the touched rows only: in dense Adam it also enters the
moments of untouched rows, which has no closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class LazyAdam(torch.optim.Optimizer):
    """Adam with lazy L2 for parameters whose gradients are sparse (row-sparse COO), with
    optional lazily applied AdamW decay (`decay`) and momentum of the missed steps
    (`momentum_catch_up`)."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay: float = 0.0,
        momentum_catch_up: bool = False,
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
            "momentum_catch_up": momentum_catch_up,
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
        """Bring every row up to the table's step: its pending decoupled decay and, with
        `momentum_catch_up`, the momentum steps it missed (a no-op without either)."""
        for group in self.param_groups:
            if not self._catches_up(group):
                continue
            for param in group["params"]:
                state = self.state[param]
                if not state:
                    continue
                missed = state["step"] - state["caught_up_to"]  # (V,) steps
                self._catch_up(param, state["exp_avg"], state["exp_avg_sq"], missed, state, group)
                state["caught_up_to"].fill_(state["step"])

    @staticmethod
    def _catches_up(group: dict[str, Any]) -> bool:
        return bool(group["decay"] or group["momentum_catch_up"])

    @staticmethod
    def _catch_up(
        weight: Tensor,
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
        missed: Tensor,
        state: dict[str, Any],
        group: dict[str, Any],
    ) -> None:
        """Apply, in place, `missed` (n,) steps without a gradient to rows `weight`,
        `exp_avg`, `exp_avg_sq` (n, d) as dense AdamW would: the weight decayed by
        `f^k` (`f = 1 - lr * decay`) and, with `momentum_catch_up`, moved by the momentum
        steps `sum_j f^(k-j) * step_size * beta1^j m / sqrt(beta2^j v)` (a geometric
        series in `r = beta1 / sqrt(beta2)`), the moments decayed by `beta^k`."""
        beta1, beta2 = group["betas"]
        k = missed.to(torch.float64)  # (n,)
        f = 1.0 - group["lr"] * group["decay"]
        if group["momentum_catch_up"]:
            r = beta1 / math.sqrt(beta2)
            if abs(f - r) < 1e-12:  # sum_{j=1..k} r^j f^(k-j) = k r^k when f == r
                series = k * torch.pow(r, k)
            else:
                series = r * (torch.pow(f, k) - torch.pow(r, k)) / (f - r)  # (n,)
            step = state["step"]
            step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
            direction = exp_avg / exp_avg_sq.sqrt().add_(group["eps"])  # (n, d)
            weight.mul_(torch.pow(f, k).float().unsqueeze(1))
            weight.addcmul_(direction, series.float().unsqueeze(1), value=-step_size)
            exp_avg.mul_(torch.pow(beta1, k).float().unsqueeze(1))
            exp_avg_sq.mul_(torch.pow(beta2, k).float().unsqueeze(1))
        elif group["decay"]:
            weight.mul_(torch.pow(f, k).float().unsqueeze(1))

    def _update(self, param: Tensor, group: dict[str, Any]) -> None:
        """One lazy Adam step of `param` (V, d) on the rows its sparse gradient holds."""
        grad = param.grad
        assert grad is not None
        if not grad.is_sparse:
            raise RuntimeError("LazyAdam takes sparse gradients (nn.Embedding(sparse=True))")
        grad = grad.coalesce()  # unique rows: the update is not linear in the gradient
        rows = grad.indices()[0]  # (n,)
        values = grad.values()  # (n, d)
        beta1, beta2 = group["betas"]
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if self._catches_up(group):  # per row: the step its update is applied up to
                state["caught_up_to"] = torch.zeros(
                    param.shape[0], dtype=torch.int64, device=param.device
                )
        state["step"] += 1  # a step without rows still counts: the others missed it
        if rows.numel() == 0:
            return
        weight = param.index_select(0, rows)  # (n, d)
        exp_avg = state["exp_avg"].index_select(0, rows)  # (n, d)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows)  # (n, d)
        if self._catches_up(group):
            missed = state["step"] - 1 - state["caught_up_to"][rows]  # (n,) steps
            self._catch_up(weight, exp_avg, exp_avg_sq, missed, state, group)
            state["caught_up_to"][rows] = state["step"]
            if group["decay"]:
                weight.mul_(1.0 - group["lr"] * group["decay"])  # this step's AdamW decay
        if group["weight_decay"]:
            values = values.add(weight, alpha=group["weight_decay"])  # lazy L2
        exp_avg.lerp_(values, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        step = state["step"]
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        denom = exp_avg_sq.sqrt_().add_(group["eps"])
        param.index_copy_(0, rows, weight.addcdiv_(exp_avg, denom, value=-step_size))
