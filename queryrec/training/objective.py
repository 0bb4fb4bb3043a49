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
from queryrec.training.batches import TrainingBatch


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

    def forward(self, batch: TrainingBatch[Tensor]) -> dict[str, Tensor]:
        has_query = self.model.cfg.use_query
        use_next = self.next_weight > 0 and has_query and batch.next_positive is not None
        use_cl = self.cl_weight > 0 and has_query and batch.cl_positive is not None
        # Items the auxiliary losses score, looked up in the model's own pass:
        # [r+ (P) | r- (N) | L_cl positives (K)] -> (B, P + N + K).
        aux_ids: list[Tensor] = []
        if use_next:
            assert batch.next_positive is not None and batch.next_negative is not None
            aux_ids += [batch.next_positive, batch.next_negative]
        if use_cl:
            assert batch.cl_positive is not None
            aux_ids.append(batch.cl_positive)
        out = self.model.forward_with_query(
            batch.inputs, torch.cat(aux_ids, dim=1) if aux_ids else None
        )
        losses = {"L_ctr": ctr_loss(out.logits, batch.label)}
        total = losses["L_ctr"]
        for name, term in out.losses.items():  # the model's own terms, weighted
            losses[name] = term
            total = total + term
        aux = out.aux_items  # (B, P + N + K, d)
        if use_next:
            positive, negative = batch.next_positive, batch.next_negative
            assert positive is not None and negative is not None
            assert out.query is not None and aux is not None
            p, n = positive.shape[1], negative.shape[1]
            losses["L_next"] = next_item_loss(
                out.query, aux[:, :p], positive > 0, aux[:, p : p + n], negative > 0
            )
            total = total + self.next_weight * losses["L_next"]
            aux = aux[:, p + n :]
        if use_cl:
            assert batch.cl_positive is not None and aux is not None
            assert self.model.query_vector is not None
            # e_{q^t}: the words of the most recent search before t
            last_query = self.model.query_vector(batch.inputs.query_tokens[:, -1])  # (B, d)
            losses["L_cl"] = contrastive_loss(last_query, aux, batch.cl_positive, self.temperature)
            total = total + self.cl_weight * losses["L_cl"]
        losses["total"] = total
        return losses


def to_tensors(batch: TrainingBatch[np.ndarray], device: torch.device) -> TrainingBatch[Tensor]:
    """numpy batch -> tensors on `device` (dtypes kept: labels float32, ids int64)."""
    return batch.map(lambda value: torch.from_numpy(value).to(device))
