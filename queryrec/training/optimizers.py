"""The training optimizer: dense Adam, or sparse row updates for the large id tables.

At the real release's scale (`kuaisar-small`: 2.03 M items, 120 k authors) the item-id
table dominates the step when it is updated densely: `loss.backward()` makes a (2 M, d)
gradient and Adam reads and writes every row of its weights and two moment buffers each
step, although a batch touches a few thousand rows. With sparse updates
(`embedding_updates = "sparse"` in `[train]` of an experiment file) every `nn.Embedding`
of at least `SPARSE_MIN_ROWS` rows is switched to `sparse=True`, so backward makes a
sparse gradient of the touched rows only, and those tables are stepped by lazy Adam
(`queryrec.training.lazy_adam.LazyAdam`: `torch.optim.SparseAdam`'s math on the touched
rows, in fewer passes), the rest by the usual dense Adam. This is the CTR field's
standard (sparse embedding tables with a lazy / row-wise optimizer, dense optimizer for
the network).

Weight decay, a choice (docs/RESULTS.md, the deviations table): dense Adam here uses
coupled L2 (`weight_decay` adds `wd * w` to every row's gradient, touched or not; Adam's
normalisation turns that into a step of about `lr` towards zero for a row no batch
touches, so rare items end near zero). The sparse path adds `wd * w` to the gradient of
the rows the batch touched (lazy L2, as lazy Adam does for the moments) and, by default,
AdamW's decoupled decay of every row (`TrainConfig.sparse_decay`, applied lazily), which
plays the part of the shrinking dense Adam gives rare rows. The AUC of both paths on the
same data is in docs/BENCHMARKS.md "Scale".

`auto` chooses sparse on the CPU and dense on CUDA: on a GPU the dense update of a 2 M
row table is cheap, and NCCL, the GPU backend of DDP, cannot all-reduce sparse gradients
(gloo, the CPU backend, can).
"""

from __future__ import annotations

import torch
from torch import nn

from queryrec.errors import QueryRecError
from queryrec.training.lazy_adam import LazyAdam

EMBEDDING_UPDATES = ("auto", "dense", "sparse")
SPARSE_MIN_ROWS = 100_000
"""Tables with at least this many rows get sparse updates: at the real release's scale the
items (2.03 M rows) and authors (120 k). Words (33 k) and users (26 k) stay dense with the
small tables: a batch of 1,024 makes about 250 k word lookups, so the sparse gradient
would be larger than the table, and coalescing it costs more than a dense update
(measured on `kuaisar-small`, paired in one process: 104.2 ms a step with this threshold,
1.038x that with 10,000; docs/BENCHMARKS.md "Scale")."""


def check_embedding_updates(choice: str) -> None:
    """A clear error for an unknown `embedding_updates` choice (`[train]` key)."""
    if choice not in EMBEDDING_UPDATES:
        raise QueryRecError(
            f"embedding_updates ([train] key) must be auto, dense or sparse, not '{choice}'"
        )


def resolve_embedding_updates(choice: str, device: torch.device, distributed: bool) -> str:
    """`dense` or `sparse` for an `embedding_updates` choice (see the module docstring)."""
    check_embedding_updates(choice)
    if choice == "auto":
        return "dense" if device.type == "cuda" else "sparse"
    if choice == "sparse" and distributed and device.type == "cuda":
        raise QueryRecError(
            'embedding_updates = "sparse" ([train] key) cannot run under DDP on CUDA: NCCL '
            'does not all-reduce sparse gradients; set embedding_updates = "dense" (or "auto") '
            "for GPUs"
        )
    return choice


def make_tables_sparse(model: nn.Module, min_rows: int = SPARSE_MIN_ROWS) -> list[str]:
    """Switch every `nn.Embedding` of at least `min_rows` rows to sparse gradients; ->
    the names of their weight parameters. A table shared by several modules (the word
    table of captions and queries) is one parameter and is switched once."""
    names: list[str] = []
    for name, module in model.named_modules(remove_duplicate=True):
        if isinstance(module, nn.Embedding) and module.num_embeddings >= min_rows:
            if module.max_norm is not None:
                raise QueryRecError(f"embedding '{name}' has max_norm, which sparse updates lack")
            module.sparse = True
            names.append(f"{name}.weight" if name else "weight")
    return names


class TrainingOptimizer:
    """Dense Adam for every parameter, or (sparse) lazy Adam for the sparse tables and
    dense Adam for the rest; `zero_grad` and `step` as one optimizer."""

    def __init__(
        self,
        model: nn.Module,
        learning_rate: float,
        weight_decay: float,
        updates: str,
        min_rows: int = SPARSE_MIN_ROWS,
        sparse_decay: float = 0.0,
        momentum_catch_up: bool = False,
    ) -> None:
        if updates not in ("dense", "sparse"):
            raise QueryRecError(f"embedding updates must be dense or sparse, not '{updates}'")
        self.updates = updates
        sparse_names = set(make_tables_sparse(model, min_rows)) if updates == "sparse" else set()
        named = dict(model.named_parameters())
        self.sparse_names = sorted(sparse_names)
        sparse_params = [named[name] for name in self.sparse_names]
        dense_params = [p for n, p in named.items() if n not in sparse_names]
        self.dense = torch.optim.Adam(dense_params, lr=learning_rate, weight_decay=weight_decay)
        self.sparse = (
            LazyAdam(
                sparse_params,
                lr=learning_rate,
                weight_decay=weight_decay,
                decay=sparse_decay,
                momentum_catch_up=momentum_catch_up,
            )
            if sparse_params
            else None
        )

    def zero_grad(self) -> None:
        self.dense.zero_grad(set_to_none=True)
        if self.sparse is not None:
            self.sparse.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.dense.step()
        if self.sparse is not None:
            self.sparse.step()

    def settle(self) -> None:
        """Bring lazily updated rows up to date before the weights are read."""
        if self.sparse is not None:
            self.sparse.settle()
