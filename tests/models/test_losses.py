"""Each loss against a value computed by hand on a tiny batch."""

from __future__ import annotations

import math

import pytest
import torch

from queryrec.losses import contrastive_loss, ctr_loss, next_item_loss


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_ctr_loss_is_binary_cross_entropy() -> None:
    logits = torch.tensor([0.0, 2.0])
    labels = torch.tensor([1.0, 0.0])
    expected = (math.log(2.0) + math.log1p(math.exp(2.0))) / 2
    assert ctr_loss(logits, labels).item() == pytest_approx(expected)


def test_next_item_loss_by_hand() -> None:
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positives = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[9.0, 9.0], [9.0, 9.0]]])
    positive_mask = torch.tensor([[True, True], [False, False]])
    negatives = torch.tensor([[[0.0, 1.0]], [[0.0, 0.5]]])
    negative_mask = torch.tensor([[True], [True]])
    # Row 0: dots 1 and 2 for positives, 0 for the negative.
    row0 = -(_log_sigmoid(1.0) + _log_sigmoid(2.0)) / 2 - _log_sigmoid(-0.0)
    # Row 1: no positive; negative dot = 1.0 -> -log(1 - sigma(1)) = -log sigma(-1).
    row1 = -_log_sigmoid(-1.0)
    loss = next_item_loss(query, positives, positive_mask, negatives, negative_mask)
    assert loss.item() == pytest_approx((row0 + row1) / 2)


def test_contrastive_loss_by_hand() -> None:
    """Three samples; in-batch negatives are the other samples' first positives."""
    beta = 0.5
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positives = torch.tensor(
        [
            [[2.0, 0.0], [1.0, 1.0]],  # sample 0: items 10 and 11
            [[0.0, 3.0], [0.0, 0.0]],  # sample 1: item 20
            [[1.0, 0.0], [0.0, 0.0]],  # sample 2: item 10 again (shared with sample 0)
        ]
    )
    ids = torch.tensor([[10, 11], [20, 0], [10, 0]])
    c = 1 / math.sqrt(2)
    # Cosines: sample 0 vs its positives: 1 (item 10), c (item 11); negatives: only item
    # 20 (item 10 of sample 2 is its own positive) with cosine 0.
    row0 = (
        (math.log(math.exp(0 / beta)) - 1 / beta) + (math.log(math.exp(0 / beta)) - c / beta)
    ) / 2
    # Sample 1: positive cosine 1; negatives item 10 twice (samples 0 and 2), cosine 0.
    row1 = math.log(2 * math.exp(0.0)) - 1 / beta
    # Sample 2: positive item 10 cosine c; negative item 20 only (item 10 excluded), cosine c.
    row2 = math.log(math.exp(c / beta)) - c / beta
    loss = contrastive_loss(query, positives, ids, beta)
    assert loss.item() == pytest_approx((row0 + row1 + row2) / 3)


def test_contrastive_loss_skips_queries_without_positives() -> None:
    query = torch.randn(3, 4)
    positives = torch.randn(3, 2, 4)
    ids = torch.tensor([[5, 0], [0, 0], [7, 0]])
    full = contrastive_loss(query, positives, ids, 0.1)
    ids_no_middle = ids.clone()
    positives_changed = positives.clone()
    positives_changed[1] = torch.randn(2, 4)  # the click-less sample's vectors are irrelevant
    again = contrastive_loss(query, positives_changed, ids_no_middle, 0.1)
    assert full.item() == pytest_approx(again.item())
    assert torch.isfinite(
        contrastive_loss(query, positives, torch.zeros(3, 2, dtype=torch.long), 0.1)
    )


def pytest_approx(value: float) -> object:
    return pytest.approx(value, rel=1e-5, abs=1e-6)
