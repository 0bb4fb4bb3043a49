"""The training objective L = L_ctr + lambda_2 L_next + lambda_3 L_cl, as one module.

A model may contribute loss terms of its own (the baselines' auxiliary losses: PLE's
search task, SESRec's contrastive and triplet terms, IV4REC+'s first-stage regressions,
UniSAR's alignment): they come back from its forward pass in `CTROutput.losses`, already
weighted, and are added to the total here, so every model goes through this one loop.

Wrapping the whole loss in a module's forward lets DistributedDataParallel see every
parameter the auxiliary losses touch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from queryrec.losses import contrastive_loss, ctr_loss, next_item_loss
from queryrec.models.ctr_model import CTRModel
from queryrec.models.registry import ModelSpec


class Objective(nn.Module):
    """Loss terms of one model; which terms run follows its ModelSpec and the weights."""

    def __init__(
        self,
        model: CTRModel,
        spec: ModelSpec,
        next_weight: float,
        cl_weight: float,
        temperature: float,
    ):
        super().__init__()
        self.model = model
        self.next_weight = next_weight if spec.next_loss else 0.0
        self.cl_weight = cl_weight if spec.contrastive_loss else 0.0
        self.temperature = temperature

    def forward(
        self,
        user: Tensor,
        item: Tensor,
        hour: Tensor,
        click_history: Tensor,
        query_history: Tensor,
        query_age: Tensor,
        label: Tensor,
        next_positive: Tensor | None = None,
        next_negative: Tensor | None = None,
        cl_positive: Tensor | None = None,
        **extras: Tensor,
    ) -> dict[str, Tensor]:
        has_query = self.model.cfg.use_query
        use_next = self.next_weight > 0 and has_query and next_positive is not None
        use_cl = self.cl_weight > 0 and has_query and cl_positive is not None
        # Items the auxiliary losses score, looked up in the model's own pass:
        # [r+ (P) | r- (N) | L_cl positives (K)] -> (B, P + N + K).
        aux_ids: list[Tensor] = []
        if use_next:
            assert next_positive is not None and next_negative is not None
            aux_ids += [next_positive, next_negative]
        if use_cl:
            assert cl_positive is not None
            aux_ids.append(cl_positive)
        out = self.model.forward_with_query(
            user,
            item,
            hour,
            click_history,
            query_history,
            query_age,
            torch.cat(aux_ids, dim=1) if aux_ids else None,
            extras=extras,
        )
        losses = {"L_ctr": ctr_loss(out.logits, label)}
        total = losses["L_ctr"]
        for name, term in out.losses.items():  # the model's own terms, weighted
            losses[name] = term
            total = total + term
        aux = out.aux_items  # (B, P + N + K, d)
        if use_next:
            assert next_positive is not None and next_negative is not None
            assert out.query is not None and aux is not None
            p, n = next_positive.shape[1], next_negative.shape[1]
            losses["L_next"] = next_item_loss(
                out.query, aux[:, :p], next_positive > 0, aux[:, p : p + n], next_negative > 0
            )
            total = total + self.next_weight * losses["L_next"]
            aux = aux[:, p + n :]
        if use_cl:
            assert cl_positive is not None and aux is not None
            assert self.model.query_vector is not None
            last_query = self.model.query_vector(query_history[:, -1])  # (B, d): e_{q^t}
            losses["L_cl"] = contrastive_loss(last_query, aux, cl_positive, self.temperature)
            total = total + self.cl_weight * losses["L_cl"]
        losses["total"] = total
        return losses


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """numpy batch -> tensors on `device` (dtypes kept: labels float32, ids int64)."""
    return {key: torch.from_numpy(value).to(device) for key, value in batch.items()}
