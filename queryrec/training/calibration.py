"""Calibrated probabilities: Platt scaling fitted on validation, and how calibration is measured.

A feed server blends and auctions on the scores, so P(click) must mean what it says; the
trained models are overconfident (the demo's QueryRec: test ECE 0.040 over 10 bins).
The choice, and why:
- **Platt scaling** (a logistic regression of the label on the model's logit,
  p' = sigmoid(a * logit + b), `sklearn.linear_model.LogisticRegression`): two numbers,
  monotone (a > 0 keeps the ranking, so AUC is unchanged), and it fits *inside* the
  exported graph (`export.calibration` inserts `Mul(a)`, `Add(b)` before the final
  `Sigmoid`), so the service applies exactly what was fitted, with no serving code.
  Temperature scaling is its b = 0 special case; isotonic regression is more flexible
  but is a step function (ties inside a step lose ranking, and it would need a lookup
  artifact beside the graph).
- Fitted on the **validation** split only (the split training stopped on, never test).

Every training run reports it (`TrainResult.calibration`: the fit, ECE and AUC before and
after on test, and the reliability bins that `queryrec bench` draws), and the export fits
it again on the exported graph's own scores and carries it in the bundle.

ECE: expected calibration error over `ECE_BINS` equal-width bins, the L1 form
(`torchmetrics.functional.classification.binary_calibration_error`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

from queryrec.errors import QueryRecError

ECE_BINS = 10
PROB_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the logit


class CalibrationError(QueryRecError):
    """The scores cannot be calibrated (one class only, or a fit that inverts the ranking),
    or the CTR graph has no final Sigmoid to calibrate."""


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


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """Per equal-width bin with samples: mean predicted probability, observed click rate,
    count (the points of a reliability diagram; the same bins as `ece`)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    which = np.minimum((probs * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append(
                {
                    "predicted": float(probs[mask].mean()),
                    "observed": float(labels[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    return out


def calibration_report(
    valid_probs: np.ndarray,
    valid_labels: np.ndarray,
    test_probs: np.ndarray,
    test_labels: np.ndarray,
) -> dict[str, Any]:
    """Platt scaling fitted on validation, measured on test: the fit, ECE and AUC before
    and after, and the reliability bins before and after."""
    a, b = fit_platt(valid_probs, valid_labels)
    test_after = apply_platt(test_probs, a, b)
    return {
        "method": "platt",
        "a": a,
        "b": b,
        "ece_bins": ECE_BINS,
        "valid_ece_before": ece(valid_probs, valid_labels),
        "valid_ece_after": ece(apply_platt(valid_probs, a, b), valid_labels),
        "test_ece_before": ece(test_probs, test_labels),
        "test_ece_after": ece(test_after, test_labels),
        "test_auc_before": float(roc_auc_score(test_labels, test_probs)),
        "test_auc_after": float(roc_auc_score(test_labels, test_after)),
        "test_reliability_before": reliability_bins(test_probs, test_labels),
        "test_reliability_after": reliability_bins(test_after, test_labels),
    }
