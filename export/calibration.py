"""The bundle's calibration: Platt scaling fitted on validation, carried inside ctr.onnx.

The fit, its reasons and how calibration is measured are in
`queryrec.training.calibration`; this module scores validation and test with the exported
CTR graph, fits on those scores, inserts `Mul(a)` and `Add(b)` before the graph's final
`Sigmoid` (so the service applies exactly what was fitted, covered by the bundle's hash),
checks the rewritten graph against the fit, and writes the manifest's `calibration`
record (ECE and AUC, validation and test, before and after).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from sklearn.metrics import roc_auc_score

from queryrec.evaluation.bundle_scoring import GraphSession, cpu_session, score_split
from queryrec.features.dataset import PreparedDataset
from queryrec.features.query_positives import QueryPositives
from queryrec.progress import say
from queryrec.training.calibration import (
    ECE_BINS,
    CalibrationError,
    apply_platt,
    ece,
    fit_platt,
)

SURGERY_TOLERANCE = 1e-5
CALIBRATION_PREFIX = "calibration_"


def insert_platt(graph_path: Path, a: float, b: float) -> None:
    """Rewrite `graph_path` in place: the graph's output Sigmoid(x) becomes
    Sigmoid(a * x + b). CalibrationError when the output is not made by a Sigmoid."""
    model = onnx.load(str(graph_path))
    graph = model.graph
    if len(graph.output) != 1:
        raise CalibrationError(f"{graph_path}: expected one output, found {len(graph.output)}")
    output = graph.output[0].name
    producers = [n for n in graph.node if output in n.output]
    if len(producers) != 1 or producers[0].op_type != "Sigmoid":
        raise CalibrationError(f"{graph_path}: the output {output!r} is not made by a Sigmoid")
    sigmoid = producers[0]
    if any(i.name.startswith(CALIBRATION_PREFIX) for i in graph.initializer):
        raise CalibrationError(f"{graph_path}: already calibrated")
    logits = sigmoid.input[0]
    dtype = np.float32
    names = {k: f"{CALIBRATION_PREFIX}{k}" for k in ("a", "b", "scaled", "shifted")}
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(a, dtype=dtype), names["a"]),
            numpy_helper.from_array(np.array(b, dtype=dtype), names["b"]),
        ]
    )
    scale = helper.make_node("Mul", [logits, names["a"]], [names["scaled"]], name="calibration_mul")
    shift = helper.make_node(
        "Add", [names["scaled"], names["b"]], [names["shifted"]], name="calibration_add"
    )
    sigmoid.input[0] = names["shifted"]
    position = list(graph.node).index(sigmoid)
    graph.node.insert(position, shift)
    graph.node.insert(position, scale)
    onnx.checker.check_model(model)
    onnx.save(model, str(graph_path))


def calibrate_ctr(
    ctr_path: Path,
    dataset: PreparedDataset,
    manifest: dict[str, Any],
    encoder: GraphSession | None,
    query_positives: QueryPositives | None = None,
) -> dict[str, Any]:
    """Fit Platt scaling on validation, insert it into `ctr_path`, check the rewritten
    graph against the fitted transform, and return the manifest's calibration record
    (`query_positives`: the bundle's table by query, when its model reads one)."""
    say("[export] calibration: scoring validation and test with the uncalibrated CTR graph")
    before = cpu_session(ctr_path)
    valid_p, valid_y = score_split(
        dataset, "valid", manifest, encoder, before, query_positives=query_positives
    )
    test_p, test_y = score_split(
        dataset, "test", manifest, encoder, before, query_positives=query_positives
    )
    a, b = fit_platt(valid_p, valid_y)
    insert_platt(ctr_path, a, b)
    after = cpu_session(ctr_path)
    valid_after, _ = score_split(
        dataset, "valid", manifest, encoder, after, query_positives=query_positives
    )
    test_after, _ = score_split(
        dataset, "test", manifest, encoder, after, query_positives=query_positives
    )
    worst = float(np.max(np.abs(valid_after - apply_platt(valid_p, a, b))))
    if not worst <= SURGERY_TOLERANCE:
        raise CalibrationError(
            f"{ctr_path}: the calibrated graph differs from the fitted transform by {worst:.3g}"
        )
    record = {
        "method": "platt: p' = sigmoid(a * logit + b), fitted on the validation split "
        "(sklearn LogisticRegression), inside ctr.onnx before its Sigmoid",
        "a": a,
        "b": b,
        "ece_bins": ECE_BINS,
        "valid_ece_before": ece(valid_p, valid_y),
        "valid_ece_after": ece(valid_after, valid_y),
        "test_ece_before": ece(test_p, test_y),
        "test_ece_after": ece(test_after, test_y),
        "test_auc_before": float(roc_auc_score(test_y, test_p)),
        "test_auc_after": float(roc_auc_score(test_y, test_after)),
        "max_abs_diff_to_fit": worst,
    }
    say(
        f"[export] calibration: a {a:.3f}, b {b:.3f}; test ECE {record['test_ece_before']:.4f} "
        f"-> {record['test_ece_after']:.4f}, AUC {record['test_auc_before']:.4f} -> "
        f"{record['test_auc_after']:.4f}"
    )
    return record
