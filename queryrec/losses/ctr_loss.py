"""L_ctr: binary cross-entropy of the predicted click probability against the feed label."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def ctr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """logits (B,), labels (B,) in {0, 1} -> mean BCE (computed from logits, stable)."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
