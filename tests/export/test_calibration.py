"""Platt scaling: the fit, the graph surgery that carries it, ECE, and the bundle record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export.calibration import insert_platt
from queryrec.training.calibration import (
    CalibrationError,
    apply_platt,
    calibration_report,
    ece,
    fit_platt,
    logit,
    reliability_bins,
)


def sigmoid_graph(path: Path, op: str = "Sigmoid") -> Path:
    """x (N,) -> op(x) (N,): the shape of the CTR graph's last step."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def test_the_fit_recovers_the_slope_and_offset_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.02, 0.98, 60_000)  # an overconfident model's probabilities
    truth = apply_platt(scores, 0.6, -0.4)  # the click rate they really stand for
    labels = (rng.uniform(size=scores.shape) < truth).astype(np.int64)
    a, b = fit_platt(scores, labels)
    assert a == pytest.approx(0.6, abs=0.05) and b == pytest.approx(-0.4, abs=0.05)
    assert ece(apply_platt(scores, a, b), labels) < ece(scores, labels)


def test_a_fit_on_one_class_or_inverted_scores_is_refused() -> None:
    with pytest.raises(CalibrationError, match="both clicks and non-clicks"):
        fit_platt(np.array([0.2, 0.7]), np.array([1, 1]))
    scores = np.linspace(0.05, 0.95, 400)
    with pytest.raises(CalibrationError, match="slope"):
        fit_platt(scores, (scores < 0.5).astype(np.int64))  # higher score, fewer clicks


def test_the_inserted_scaling_is_exactly_the_fitted_transform(tmp_path: Path) -> None:
    path = sigmoid_graph(tmp_path / "g.onnx")
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    insert_platt(path, 0.8, 0.25)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-(0.8 * x + 0.25))), atol=1e-6)
    # the same as applying it to the uncalibrated probabilities
    np.testing.assert_allclose(got, apply_platt(1 / (1 + np.exp(-x)), 0.8, 0.25), atol=1e-5)
    with pytest.raises(CalibrationError, match="already calibrated"):
        insert_platt(path, 0.8, 0.25)


def test_a_graph_without_a_final_sigmoid_is_refused(tmp_path: Path) -> None:
    path = sigmoid_graph(tmp_path / "g.onnx", op="Relu")
    with pytest.raises(CalibrationError, match="not made by a Sigmoid"):
        insert_platt(path, 1.0, 0.0)


def test_ece_is_zero_when_every_bin_is_right_and_counts_the_gap_otherwise() -> None:
    probs = np.array([0.25] * 4 + [0.75] * 4)
    assert ece(probs, np.array([1, 0, 0, 0, 1, 1, 1, 0])) == pytest.approx(0.0, abs=1e-6)
    assert ece(probs, np.array([1, 1, 0, 0, 1, 1, 1, 1])) == pytest.approx(0.25, abs=1e-6)
    assert np.all(np.isfinite(logit(np.array([0.0, 1.0]))))  # clipped, not infinite


def test_reliability_bins_are_the_bins_ece_averages_over() -> None:
    probs = np.array([0.05, 0.05, 0.55, 0.55, 0.95, 1.0])
    labels = np.array([0, 1, 1, 1, 0, 1])
    bins = reliability_bins(probs, labels)
    assert [(b["count"], b["observed"]) for b in bins] == [(2, 0.5), (2, 1.0), (2, 0.5)]
    gap = sum(b["count"] * abs(b["observed"] - b["predicted"]) for b in bins) / len(probs)
    assert gap == pytest.approx(ece(probs, labels), abs=1e-6)


def test_the_training_report_calibrates_overconfident_scores_without_reordering() -> None:
    rng = np.random.default_rng(0)
    true_logit = rng.normal(-1.0, 1.0, 40_000)
    labels = (rng.random(40_000) < 1 / (1 + np.exp(-true_logit))).astype(np.int64)
    overconfident = 1 / (1 + np.exp(-(3.0 * true_logit + 0.5)))  # too steep, shifted
    half = len(labels) // 2
    report = calibration_report(
        overconfident[:half], labels[:half], overconfident[half:], labels[half:]
    )
    assert report["test_ece_before"] > 0.1 > 0.01 > report["test_ece_after"]
    assert report["test_auc_after"] == pytest.approx(
        report["test_auc_before"], abs=1e-6
    )  # float32 ties
    assert report["a"] == pytest.approx(1 / 3, rel=0.05)
    assert sum(b["count"] for b in report["test_reliability_after"]) == half


def test_the_bundle_carries_the_calibration_it_was_checked_with(
    bundle: Path, tiny_data: Path
) -> None:
    from sklearn.metrics import log_loss

    from queryrec.evaluation.bundle_scoring import open_bundle_graphs, score_split
    from queryrec.features.dataset import PreparedDataset

    record = json.loads((bundle / "manifest.json").read_text())["calibration"]
    a, b = record["a"], record["b"]
    assert a > 0 and record["max_abs_diff_to_fit"] <= 1e-5
    # monotone: the ranking, hence AUC, is unchanged up to float32 ties (the graph's
    # Sigmoid output rounds near-equal scores together or apart: a handful of the test
    # split's positive-negative pairs, each worth 1 / (positives * negatives))
    assert record["test_auc_after"] == pytest.approx(record["test_auc_before"], abs=1e-4)
    for key in ("valid_ece_before", "valid_ece_after", "test_ece_before", "test_ece_after"):
        assert 0.0 <= record[key] < 0.5, key
    # The fit is maximum likelihood on validation: there the calibrated graph's log loss
    # is at most the uncalibrated one's (ECE, which it does not minimise, may move either
    # way on a split this small). The graph's own scores; the uncalibrated ones inverted.
    graphs = open_bundle_graphs(bundle)
    after, labels = score_split(
        PreparedDataset(tiny_data), "valid", graphs.manifest, graphs.encoder, graphs.ctr
    )
    before = 1 / (1 + np.exp(-(logit(after) - b) / a))
    np.testing.assert_allclose(apply_platt(before, a, b), after, atol=1e-5)
    assert log_loss(labels, after) <= log_loss(labels, before) + 1e-6
    assert ece(after, labels) == pytest.approx(record["valid_ece_after"], abs=1e-6)
