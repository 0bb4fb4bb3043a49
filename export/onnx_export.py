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

import numpy as np
import torch
from torch.export import Dim

from export.graphs import (
    CTRGraph,
    CTRPairGraph,
    CTRUserGraph,
    QueryEncoderGraph,
    ctr_inputs,
    encoder_inputs,
    encoder_outputs,
)
from export.parity import draw_inputs
from queryrec.features.graph_feeds import COMPUTED_INPUTS, graph_feed
from queryrec.features.model_inputs import ModelInputs
from queryrec.models.config import ModelConfig
from queryrec.models.ctr_model import CTRModel

OPSET = 18

# The axes of every graph input and output: a name for a dynamic axis, a ModelConfig
# field (or "dim", "profile") for a fixed one.
AXES: dict[str, tuple[str, ...]] = {
    "user": ("users",),
    "hour": ("users",),
    "profile": ("users", "profile"),
    "click_history": ("users", "click_history"),
    "query_tokens": ("users", "L", "query_tokens"),
    "query_age": ("users", "L"),
    "query_clicks": ("users", "L", "query_clicks"),
    "query_click_source": ("users", "L"),
    "query_minutes": ("users", "L"),
    "click_minutes": ("users", "click_history"),
    "query_repr": ("users", "dim"),
    "query_states": ("users", "L", "dim"),
    "user_first": ("users", "first_layer"),
    # H: the pair graph takes the history trimmed to its longest valid part (the service
    # cuts the left padding, which adds nothing to the pooled interest)
    "history_rows": ("users", "H", "history_row"),
    "count_keys": ("users", "keys"),
    "click_total": ("users",),
    "pair_user": ("pairs",),
    "item": ("pairs",),
    "probability": ("pairs",),
}
DYNAMIC = ("users", "pairs", "L", "keys", "H")
FLOAT_NAMES = (*COMPUTED_INPUTS, "probability")


@dataclass(frozen=True)
class GraphSpec:
    """Names, dtypes and shapes of one graph's inputs and outputs (for the manifest)."""

    inputs: dict[str, dict[str, object]]
    outputs: dict[str, dict[str, object]]


def graph_spec(cfg: ModelConfig, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> GraphSpec:
    """The manifest's description of a graph with these input and output names."""
    sizes = {
        "profile": len(cfg.vocab.profile),
        "click_history": cfg.click_history,
        "query_tokens": cfg.query_tokens,
        "query_clicks": cfg.query_clicks,
        "dim": cfg.dim,
        "first_layer": cfg.mlp[0],
        "history_row": cfg.dim + 1,
    }

    def describe(name: str) -> dict[str, object]:
        shape = [axis if axis in DYNAMIC else sizes[axis] for axis in AXES[name]]
        return {"dtype": "float32" if name in FLOAT_NAMES else "int64", "shape": shape}

    return GraphSpec(
        inputs={name: describe(name) for name in inputs},
        outputs={name: describe(name) for name in outputs},
    )


def export_encoder(graph: QueryEncoderGraph, path: Path) -> GraphSpec:
    """Write query_encoder.onnx; dynamic users and history-length axes."""
    model = graph.model
    example = draw_inputs(model, 3, 1, np.random.default_rng(0))
    names, outputs = encoder_inputs(model), encoder_outputs(model)
    _export_named(graph, example, {}, names, outputs, path, model.cfg)
    return graph_spec(model.cfg, names, outputs)


def export_ctr(graph: CTRGraph, model: CTRModel, path: Path) -> GraphSpec:
    """Write ctr.onnx; dynamic users, pairs and history-length axes."""
    example, encoded = _ctr_example(model)
    names = ctr_inputs(model)
    _export_named(graph, example, encoded, names, ("probability",), path, model.cfg)
    return graph_spec(model.cfg, names, ("probability",))


def export_user_graph(graph: CTRUserGraph, model: CTRModel, path: Path) -> GraphSpec:
    """Write ctr_user.onnx (the split CTR graph's user side); dynamic users and
    history-length axes (the count keys' axis follows the history length)."""
    example, encoded = _ctr_example(model)
    _export_named(graph, example, encoded, graph.names, graph.outputs, path, model.cfg)
    spec = graph_spec(model.cfg, graph.names, graph.outputs)
    # Every history row comes out (the input is the whole padded history); the pair
    # graph takes them trimmed (its H axis is dynamic).
    spec.outputs["history_rows"]["shape"][1] = model.cfg.click_history  # type: ignore[index]
    return spec


def export_pair_graph(
    graph: CTRPairGraph, user: CTRUserGraph, model: CTRModel, path: Path
) -> GraphSpec:
    """Write ctr_pair.onnx (the split CTR graph's per-request side), its example user side
    computed by `user`; dynamic users, pairs and count-key axes."""
    example, encoded = _ctr_example(model)
    feed = graph_feed(user.names, example, encoded)
    with torch.no_grad():
        side = user(*(torch.from_numpy(feed[name]) for name in user.names))
    computed = {**encoded, **{n: v.numpy() for n, v in zip(user.outputs, side, strict=True)}}
    _export_named(graph, example, computed, graph.names, ("probability",), path, model.cfg)
    return graph_spec(model.cfg, graph.names, ("probability",))


def _ctr_example(model: CTRModel) -> tuple[ModelInputs[np.ndarray], dict[str, np.ndarray]]:
    """The CTR graphs' export example: 3 user rows, 5 pairs, random encoder outputs."""
    rng = np.random.default_rng(0)
    example = draw_inputs(model, 3, 5, rng)
    encoded = {
        name: rng.standard_normal(
            (3, model.cfg.dim)
            if name == "query_repr"
            else (3, model.cfg.query_history, model.cfg.dim)
        ).astype(np.float32)
        for name in encoder_outputs(model)
    }
    return example, encoded


def _export_named(
    module: torch.nn.Module,
    example: ModelInputs[np.ndarray],
    encoded: dict[str, np.ndarray],
    names: tuple[str, ...],
    outputs: tuple[str, ...],
    path: Path,
    cfg: ModelConfig,
) -> None:
    """Export `module`, whose positional inputs are `names` (fed from `example` and
    `encoded`), with the dynamic axes of `AXES`."""
    dims = {
        "users": Dim("users", min=1, max=1 << 20),
        "pairs": Dim("pairs", min=1, max=1 << 24),
        "L": Dim("L", min=1, max=cfg.query_history),
        "H": Dim("H", min=1, max=cfg.click_history),
        "keys": Dim("keys", min=1, max=1 << 20),
    }
    feed = graph_feed(names, example, encoded)
    dynamic = {
        name: {i: dims[axis] for i, axis in enumerate(AXES[name]) if axis in dims} for name in names
    }
    tensors = tuple(torch.from_numpy(feed[name]) for name in names)
    _export(module, tensors, path, list(names), list(outputs), dynamic)


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
            # The graphs take their inputs as one *tensors argument.
            dynamic_shapes=(tuple(dynamic[name] for name in input_names),),
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
