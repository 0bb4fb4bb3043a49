"""torch -> ONNX for the two serving graphs.

Exporter: `torch.onnx.export(..., dynamo=True)` (the torch 2.13 default, through
onnxscript), opset 18, with a dynamic-shape spec for every batch-like axis (without one
it freezes the example's sizes, MEASURED.md), then `optimize=True` (constant folding and
onnxscript's graph rewrites). The example inputs are small odd sizes (3 users, 5
pairs) so that no axis is accidentally specialised to 1; the parity check then runs at
other sizes. Weights are stored inside the .onnx file (item tables included); at the
KuaiSAR item count that file gets large, and ONNX's 2 GB protobuf limit is the ceiling
(about 8M items at d = 32).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.export import Dim

from export.graphs import CTRGraph, QueryEncoderGraph

OPSET = 18


@dataclass(frozen=True)
class GraphSpec:
    """Names, dtypes and shapes of one graph's inputs and outputs (for the manifest)."""

    inputs: dict[str, dict[str, object]]
    outputs: dict[str, dict[str, object]]


def encoder_spec(query_history: int, query_tokens: int, dim: int) -> GraphSpec:
    return GraphSpec(
        inputs={
            "query_tokens": {"dtype": "int64", "shape": ["users", "L", query_tokens]},
            "query_age": {"dtype": "int64", "shape": ["users", "L"]},
        },
        outputs={"query_repr": {"dtype": "float32", "shape": ["users", dim]}},
    )


def ctr_spec(uses_query: bool, click_history: int, profile_fields: int, dim: int) -> GraphSpec:
    inputs: dict[str, dict[str, object]] = {}
    if uses_query:
        inputs["query_repr"] = {"dtype": "float32", "shape": ["users", dim]}
    inputs |= {
        "user": {"dtype": "int64", "shape": ["users"]},
        "hour": {"dtype": "int64", "shape": ["users"]},
        "profile": {"dtype": "int64", "shape": ["users", profile_fields]},
        "click_history": {"dtype": "int64", "shape": ["users", click_history]},
        "pair_user": {"dtype": "int64", "shape": ["pairs"]},
        "item": {"dtype": "int64", "shape": ["pairs"]},
    }
    return GraphSpec(
        inputs=inputs, outputs={"probability": {"dtype": "float32", "shape": ["pairs"]}}
    )


def export_encoder(graph: QueryEncoderGraph, path: Path) -> GraphSpec:
    """Write query_encoder.onnx; dynamic users and history-length axes."""
    cfg = graph.model.cfg
    users, length = Dim("users", min=1, max=1 << 20), Dim("L", min=1, max=cfg.query_history)
    gen = torch.Generator().manual_seed(0)
    example = (
        torch.randint(0, cfg.vocab.words, (3, cfg.query_history, cfg.query_tokens), generator=gen),
        torch.randint(0, 10, (3, cfg.query_history), generator=gen),
    )
    _export(
        graph,
        example,
        path,
        ["query_tokens", "query_age"],
        ["query_repr"],
        {"query_tokens": {0: users, 1: length}, "query_age": {0: users, 1: length}},
    )
    return encoder_spec(cfg.query_history, cfg.query_tokens, cfg.dim)


def export_ctr(graph: CTRGraph, path: Path) -> GraphSpec:
    """Write ctr.onnx; dynamic users and pairs axes."""
    cfg = graph.cfg
    n_users, n_pairs = 3, 5
    users, pairs = Dim("users", min=1, max=1 << 20), Dim("pairs", min=1, max=1 << 24)
    gen = torch.Generator().manual_seed(0)
    v = cfg.vocab
    inputs: dict[str, torch.Tensor] = {}
    if graph.uses_query:
        inputs["query_repr"] = torch.randn(n_users, cfg.dim, generator=gen)
    inputs |= {
        "user": torch.randint(0, v.users, (n_users,), generator=gen),
        "hour": torch.randint(0, 24, (n_users,), generator=gen),
        "profile": torch.stack(
            [torch.randint(0, size, (n_users,), generator=gen) for size in v.profile], dim=1
        ),
        "click_history": torch.randint(0, v.items, (n_users, cfg.click_history), generator=gen),
        "pair_user": torch.randint(0, n_users, (n_pairs,), generator=gen),
        "item": torch.randint(0, v.items, (n_pairs,), generator=gen),
    }
    user_axes = {0: users}
    dynamic = {
        name: ({0: pairs} if name in ("pair_user", "item") else user_axes) for name in inputs
    }
    wrapped = _CTRWithQuery(graph) if graph.uses_query else _CTRWithoutQuery(graph)
    _export(wrapped, tuple(inputs.values()), path, list(inputs), ["probability"], dynamic)
    return ctr_spec(graph.uses_query, cfg.click_history, len(v.profile), cfg.dim)


class _CTRWithQuery(torch.nn.Module):
    """CTRGraph with the query representation as its first input."""

    def __init__(self, graph: CTRGraph):
        super().__init__()
        self.ctr = graph

    def forward(
        self,
        query_repr: torch.Tensor,
        user: torch.Tensor,
        hour: torch.Tensor,
        profile: torch.Tensor,
        click_history: torch.Tensor,
        pair_user: torch.Tensor,
        item: torch.Tensor,
    ) -> torch.Tensor:
        return self.ctr(query_repr, user, hour, profile, click_history, pair_user, item)


class _CTRWithoutQuery(_CTRWithQuery):
    """CTRGraph of a model without a query tower (no query input)."""

    def forward(  # type: ignore[override]
        self,
        user: torch.Tensor,
        hour: torch.Tensor,
        profile: torch.Tensor,
        click_history: torch.Tensor,
        pair_user: torch.Tensor,
        item: torch.Tensor,
    ) -> torch.Tensor:
        return self.ctr(None, user, hour, profile, click_history, pair_user, item)


def _export(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, Dim]],
) -> None:
    module.eval()
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module,
            example,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=tuple(dynamic[name] for name in input_names),
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    assert program is not None
    program.save(str(path))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision ops, skipped constant folds,
    deprecation warnings); real failures still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
