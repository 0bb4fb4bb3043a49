"""Calibrated probabilities: Platt scaling fitted on validation, carried inside ctr.onnx.

A feed server blends and auctions on the scores, so P(click) must mean what it says; the
trained models are overconfident (the demo's QueryRec: test ECE 0.040 over 10 bins).
The choice, and why:
- **Platt scaling** (a logistic regression of the label on the model's logit,
  p' = sigmoid(a * logit + b), `sklearn.linear_model.LogisticRegression`): two numbers,
  monotone (a > 0 keeps the ranking, so AUC is unchanged), and it fits *inside* the
  graph: the export inserts `Mul(a)` and `Add(b)` before the graph's final `Sigmoid`,
  so the service applies exactly what was fitted, covered by the bundle's hash, with no
  serving code. Temperature scaling is its b = 0 special case; isotonic regression is
  more flexible but is a step function (ties inside a step lose ranking, and it would
  need a lookup artifact beside the graph).
- Fitted on the **validation** split only (the split training stopped on, never test);
  ECE and AUC are reported on validation and test, before and after, in the manifest's
  `calibration` record.

ECE: expected calibration error over equal-width bins, the L1 form
(`torchmetrics.functional.classification.binary_calibration_error`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

from queryrec.errors import QueryRecError
from queryrec.evaluation.bundle_scoring import GraphSession, cpu_session, score_split
from queryrec.features.dataset import PreparedDataset
from queryrec.progress import say

ECE_BINS = 10
PROB_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the logit
SURGERY_TOLERANCE = 1e-5
CALIBRATION_PREFIX = "calibration_"


class CalibrationError(QueryRecError):
    """The CTR graph cannot be calibrated (no final Sigmoid) or the fit is unusable."""


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error (L1, `bins` equal-width bins)."""
    return float(
        binary_calibration_error(
            torch.from_numpy(np.asarray(probs, dtype=np.float32)),
            torch.from_numpy(np.asarray(labels).astype(np.int64)),
            n_bins=bins,
            norm="l1",
        )
    )


def logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), PROB_EPS, 1 - PROB_EPS)
    return np.log(p) - np.log1p(-p)


def fit_platt(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) of p' = sigmoid(a * logit(p) + b), maximum likelihood (no regularisation
    to speak of: C = 1e6). CalibrationError if a <= 0 (it would invert the ranking)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise CalibrationError("calibration needs both clicks and non-clicks in validation")
    regression = LogisticRegression(C=1e6, max_iter=1000)
    regression.fit(logit(probs).reshape(-1, 1), labels.astype(np.int64))
    a, b = float(regression.coef_[0, 0]), float(regression.intercept_[0])
    if not a > 0:
        raise CalibrationError(f"Platt fit gave slope {a:.3g} <= 0: the scores are not usable")
    return a, b


def apply_platt(probs: np.ndarray, a: float, b: float) -> np.ndarray:
    """What the calibrated graph computes, from the uncalibrated probabilities."""
    return np.asarray(1 / (1 + np.exp(-(a * logit(probs) + b))), dtype=np.float32)


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
) -> dict[str, Any]:
    """Fit Platt scaling on validation, insert it into `ctr_path`, check the rewritten
    graph against the fitted transform, and return the manifest's calibration record."""
    say("[export] calibration: scoring validation and test with the uncalibrated CTR graph")
    before = cpu_session(ctr_path)
    valid_p, valid_y = score_split(dataset, "valid", manifest, encoder, before)
    test_p, test_y = score_split(dataset, "test", manifest, encoder, before)
    a, b = fit_platt(valid_p, valid_y)
    insert_platt(ctr_path, a, b)
    after = cpu_session(ctr_path)
    valid_after, _ = score_split(dataset, "valid", manifest, encoder, after)
    test_after, _ = score_split(dataset, "test", manifest, encoder, after)
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
