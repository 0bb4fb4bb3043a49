"""Sparse embedding updates: which tables, what a step changes, and the device rule."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from queryrec.errors import QueryRecError
from queryrec.training.optimizers import (
    TrainingOptimizer,
    make_tables_sparse,
    resolve_embedding_updates,
)


class _Tables(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Embedding(50, 4, padding_idx=0)
        self.small = nn.Embedding(5, 4)
        self.shared = self.big  # one parameter reached by two names
        self.out = nn.Linear(4, 1)

    def forward(self, rows: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
        return self.out(self.big(rows) + self.small(small)).sum()


def test_only_tables_at_or_above_the_row_threshold_become_sparse() -> None:
    model = _Tables()
    assert make_tables_sparse(model, min_rows=50) == ["big.weight"]
    assert model.big.sparse and not model.small.sparse


def test_a_sparse_step_is_adam_with_l2_on_the_touched_rows_and_leaves_the_others() -> None:
    torch.manual_seed(0)
    sparse_model = _Tables()
    dense_model = copy.deepcopy(sparse_model)
    rows, small = torch.tensor([3, 7, 7, 0]), torch.tensor([1, 2, 1, 4])
    sparse = TrainingOptimizer(sparse_model, 0.01, 0.1, "sparse", min_rows=50)
    dense = TrainingOptimizer(dense_model, 0.01, 0.1, "dense", min_rows=50)
    assert sparse.sparse_names == ["big.weight"] and dense.sparse_names == []
    before = sparse_model.big.weight.detach().clone()
    for model, optimizer in ((sparse_model, sparse), (dense_model, dense)):
        for _ in range(3):  # beyond the first step, where Adam's update is sign(grad) * lr
            optimizer.zero_grad()
            model(rows, small).backward()
            optimizer.step()
    assert sparse_model.big.weight.grad is not None and sparse_model.big.weight.grad.is_sparse
    touched = torch.tensor([3, 7])
    # Adam with coupled L2 (grad + wd * w) on the rows the batch touched ...
    torch.testing.assert_close(sparse_model.big.weight[touched], dense_model.big.weight[touched])
    # ... and every other row unchanged (dense Adam's decay moves them all).
    untouched = torch.tensor([i for i in range(50) if i not in (0, 3, 7)])
    assert torch.equal(sparse_model.big.weight[untouched], before[untouched])
    assert not torch.equal(dense_model.big.weight[untouched], before[untouched])
    assert torch.equal(sparse_model.big.weight[0], torch.zeros(4))  # padding row stays zero
    # The dense rest of the network steps alike in both.
    torch.testing.assert_close(sparse_model.out.weight, dense_model.out.weight)
    torch.testing.assert_close(sparse_model.small.weight, dense_model.small.weight)


def test_auto_is_sparse_on_cpu_dense_on_cuda_and_nccl_refuses_sparse() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_embedding_updates("auto", cpu, distributed=True) == "sparse"
    assert resolve_embedding_updates("auto", cuda, distributed=True) == "dense"
    assert resolve_embedding_updates("sparse", cuda, distributed=False) == "sparse"
    with pytest.raises(QueryRecError, match="NCCL"):
        resolve_embedding_updates("sparse", cuda, distributed=True)
    with pytest.raises(QueryRecError, match=r"embedding_updates \(\[train\] key\) must be"):
        resolve_embedding_updates("lazy", cpu, distributed=False)
