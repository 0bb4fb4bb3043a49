"""CTR metrics. AUC and logloss are scikit-learn's; GAUC is defined here because no
library has it: the impression-weighted mean of per-user AUCs, skipping users whose
impressions are all of one class (their AUC is undefined)."""

from __future__ import annotations

import numpy as np
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
    """Impression-weighted mean of per-user AUC over users with both classes.

    Each user's AUC is the Mann-Whitney statistic (positives' rank sum, ties at their
    average rank), which is what `roc_auc_score` computes; done for all users at once
    with one sort instead of one library call per user (1,200 users took 4.6 s that
    way). `tests/evaluation` checks it against `roc_auc_score` user by user.
    """
    users = np.asarray(users)
    labels = np.asarray(labels).astype(np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if len(users) == 0:
        return float("nan")
    order = np.lexsort((scores, users))  # by user, then score
    u, y, s = users[order], labels[order], scores[order]
    n = len(u)
    new_user = np.r_[True, u[1:] != u[:-1]]
    new_value = new_user | np.r_[True, s[1:] != s[:-1]]
    user_id = np.cumsum(new_user) - 1  # (n,) 0.. per user
    tie_id = np.cumsum(new_value) - 1  # (n,) 0.. per (user, score) run
    position = np.arange(n, dtype=np.float64)
    user_start = position[new_user][user_id]
    tie_first = np.flatnonzero(new_value)
    tie_last = np.r_[tie_first[1:], n] - 1
    rank = (position[tie_first] + position[tie_last])[tie_id] / 2.0 - user_start + 1.0
    count = np.bincount(user_id).astype(np.float64)
    positives = np.bincount(user_id, weights=y)
    negatives = count - positives
    rank_sum = np.bincount(user_id, weights=rank * y)
    mixed = (positives > 0) & (negatives > 0)
    if not mixed.any():
        return float("nan")
    per_user = (rank_sum[mixed] - positives[mixed] * (positives[mixed] + 1) / 2) / (
        positives[mixed] * negatives[mixed]
    )
    return float(np.sum(per_user * count[mixed]) / np.sum(count[mixed]))


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
