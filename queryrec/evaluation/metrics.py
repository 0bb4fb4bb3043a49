"""CTR metrics. AUC and logloss are scikit-learn's; GAUC is defined here because no
library has it: the impression-weighted mean of per-user AUCs, skipping users whose
impressions are all of one class (their AUC is undefined)."""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.metrics import log_loss, roc_auc_score


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def logloss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary cross-entropy of probabilities (clipped away from 0 and 1)."""
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return float(log_loss(labels, clipped, labels=[0, 1]))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Impression-weighted mean of per-user AUC over users with both classes."""
    frame = pl.DataFrame({"user": users, "label": labels, "score": scores})
    mixed = (
        frame.group_by("user")
        .agg(pl.col("label").n_unique().alias("classes"), pl.len().alias("n"))
        .filter(pl.col("classes") == 2)
    )
    total, weight = 0.0, 0
    for user, group in frame.filter(pl.col("user").is_in(mixed["user"].implode())).group_by("user"):
        del user
        n = group.height
        total += n * float(roc_auc_score(group["label"].to_numpy(), group["score"].to_numpy()))
        weight += n
    return total / weight if weight else float("nan")


def improvement(value: float, reference: float) -> float:
    """Imp % over a reference model, as the paper's table: (value / reference - 1) * 100."""
    return (value / reference - 1.0) * 100.0


def evaluate(users: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """AUC, GAUC, logloss and the number of impressions."""
    return {
        "auc": auc(labels, probabilities),
        "gauc": gauc(users, labels, probabilities),
        "logloss": logloss(labels, probabilities),
        "n": len(labels),
    }
