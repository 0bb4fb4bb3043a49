"""Lazy Adam (the large id tables' optimizer): SparseAdam's math on the touched rows,
plus coupled L2 on those rows only."""

from __future__ import annotations

import pytest
import torch

from queryrec.training.lazy_adam import LazyAdam


def _sparse_grads(rows: int, dim: int, steps: int) -> list[torch.Tensor]:
    """Uncoalesced row-sparse gradients (repeated rows, as an embedding lookup gives)."""
    generator = torch.Generator().manual_seed(1)
    grads = []
    for _ in range(steps):
        index = torch.randint(0, rows, (rows // 2,), generator=generator)
        values = torch.randn(rows // 2, dim, generator=generator)
        grads.append(torch.sparse_coo_tensor(index.unsqueeze(0), values, (rows, dim)))
    return grads


def test_without_decay_it_steps_as_torch_sparse_adam() -> None:
    start = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    ours = torch.nn.Parameter(start.clone())
    reference = torch.nn.Parameter(start.clone())
    lazy = LazyAdam([ours], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    sparse_adam = torch.optim.SparseAdam([reference], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    for grad in _sparse_grads(40, 6, steps=6):
        ours.grad, reference.grad = grad, grad.clone()
        lazy.step()
        sparse_adam.step()  # type: ignore[no-untyped-call]
        torch.testing.assert_close(ours.detach(), reference.detach(), rtol=1e-6, atol=1e-6)
    assert not torch.equal(ours.detach(), start)


def test_decay_is_coupled_l2_on_the_touched_rows_and_spares_the_others() -> None:
    start = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    sparse = torch.nn.Parameter(start.clone())
    dense = torch.nn.Parameter(start.clone())
    lazy = LazyAdam([sparse], lr=0.1, weight_decay=0.5)
    adam = torch.optim.Adam([dense], lr=0.1, weight_decay=0.5)
    touched = torch.tensor([2, 5, 5])
    for _ in range(3):
        values = torch.ones(3, 3)
        sparse.grad = torch.sparse_coo_tensor(touched.unsqueeze(0), values, (10, 3))
        dense.grad = sparse.grad.to_dense()
        lazy.step()
        adam.step()
    rows = torch.tensor([2, 5])
    torch.testing.assert_close(sparse.detach()[rows], dense.detach()[rows])
    others = torch.tensor([i for i in range(10) if i not in (2, 5)])
    assert torch.equal(sparse.detach()[others], start[others])  # dense Adam decays them


def test_a_dense_gradient_or_bad_settings_are_refused() -> None:
    param = torch.nn.Parameter(torch.zeros(4, 2))
    param.grad = torch.ones(4, 2)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        LazyAdam([param]).step()
    with pytest.raises(ValueError, match="betas"):
        LazyAdam([param], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="not be negative"):
        LazyAdam([param], weight_decay=-1.0)
    with pytest.raises(ValueError, match="lr \\* decay"):
        LazyAdam([param], lr=0.1, decay=10.0)


def test_lazy_decoupled_decay_is_adamw_for_rows_touched_every_step_or_never() -> None:
    """AdamW decays every row every step; the lazy form catches a row up when a batch
    touches it and `settle()` catches up the rest. Rows touched at every step and rows
    never touched (zero moments: AdamW's step moves them by the decay alone) match AdamW."""
    start = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    lazy_param = torch.nn.Parameter(start.clone())
    dense_param = torch.nn.Parameter(start.clone())
    lazy = LazyAdam([lazy_param], lr=0.05, decay=2.0)
    adamw = torch.optim.AdamW([dense_param], lr=0.05, weight_decay=2.0)
    touched = torch.tensor([1, 4, 4, 9])
    generator = torch.Generator().manual_seed(2)
    for _ in range(5):
        values = torch.randn(4, 3, generator=generator)
        lazy_param.grad = torch.sparse_coo_tensor(touched.unsqueeze(0), values, (12, 3))
        dense_param.grad = lazy_param.grad.to_dense()
        lazy.step()
        adamw.step()
    rows = torch.tensor([1, 4, 9])
    torch.testing.assert_close(lazy_param.detach()[rows], dense_param.detach()[rows])
    others = torch.tensor([i for i in range(12) if i not in (1, 4, 9)])
    assert torch.equal(lazy_param.detach()[others], start[others])  # pending until settled
    lazy.settle()
    torch.testing.assert_close(lazy_param.detach(), dense_param.detach())
    torch.testing.assert_close(lazy_param.detach()[others], start[others] * (1 - 0.05 * 2.0) ** 5)
    lazy.settle()  # idempotent: nothing is pending any more
    torch.testing.assert_close(lazy_param.detach(), dense_param.detach())


def _touched_now_and_then(rows: int, dim: int, warm_up: int, steps: int) -> list[torch.Tensor]:
    """Row-sparse gradients: every row at each of `warm_up` steps, then each row with
    probability 0.1 a step (some steps touch none)."""
    generator = torch.Generator().manual_seed(3)
    every_row = torch.arange(rows)
    grads = []
    for step in range(warm_up + steps):
        keep = torch.rand(rows, generator=generator) < 0.1
        touched = every_row if step < warm_up else every_row[keep]
        values = torch.randn(len(touched), dim, generator=generator)
        grads.append(torch.sparse_coo_tensor(touched.unsqueeze(0), values, (rows, dim)))
    return grads


@pytest.mark.parametrize("decay", [0.0, 1.5])
def test_momentum_catch_up_follows_dense_adam_and_adamw(decay: float) -> None:
    """With `momentum_catch_up` a row that batches touch now and then ends where dense
    Adam (AdamW with `decay`) puts it, which keeps moving it by its momentum in the steps
    between; without it, lazy Adam lags. The catch-up uses the current step's bias
    correction, so the comparison starts after a warm-up (every row touched) that brings
    the corrections near one."""
    rows, dim, lr, betas = 16, 3, 0.01, (0.8, 0.95)
    start = torch.randn(rows, dim, generator=torch.Generator().manual_seed(0))
    params = {name: torch.nn.Parameter(start.clone()) for name in ("dense", "caught", "lazy")}
    dense = torch.optim.AdamW([params["dense"]], lr=lr, betas=betas, weight_decay=decay)
    caught = LazyAdam([params["caught"]], lr=lr, betas=betas, decay=decay, momentum_catch_up=True)
    lazy = LazyAdam([params["lazy"]], lr=lr, betas=betas, decay=decay)
    for grad in _touched_now_and_then(rows, dim, warm_up=700, steps=300):
        params["dense"].grad = grad.to_dense()
        params["caught"].grad, params["lazy"].grad = grad, grad.clone()
        for optimizer in (dense, caught, lazy):
            optimizer.step()
    before_settle = params["caught"].detach().clone()
    caught.settle()
    lazy.settle()
    assert not torch.equal(params["caught"].detach(), before_settle)  # the pending tails
    torch.testing.assert_close(
        params["caught"].detach(), params["dense"].detach(), rtol=1e-4, atol=1e-5
    )
    assert not torch.allclose(
        params["lazy"].detach(), params["dense"].detach(), rtol=1e-3, atol=1e-3
    )
