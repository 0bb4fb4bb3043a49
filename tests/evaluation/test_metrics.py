"""GAUC against scikit-learn's per-user AUC, with ties, one-class users and weights."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from queryrec.evaluation.metrics import gauc


def _reference(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    total, weight = 0.0, 0
    for user in np.unique(users):
        mine = users == user
        if len(np.unique(labels[mine])) < 2:
            continue
        total += mine.sum() * roc_auc_score(labels[mine], scores[mine])
        weight += mine.sum()
    return total / weight


@pytest.mark.parametrize("seed", range(5))
def test_gauc_matches_per_user_roc_auc(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    users = rng.integers(0, 200, size=n)
    labels = rng.integers(0, 2, size=n)
    labels[users == 7] = 1  # a one-class user is skipped
    scores = np.round(rng.random(n) + 0.3 * labels, 1)  # rounding makes many ties
    assert gauc(users, labels, scores) == pytest.approx(
        _reference(users, labels, scores), abs=1e-12
    )


def test_gauc_edge_cases() -> None:
    assert np.isnan(gauc(np.array([1, 1]), np.array([1, 1]), np.array([0.2, 0.4])))
    assert gauc(np.array([3, 3, 3]), np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9])) == 0.75
