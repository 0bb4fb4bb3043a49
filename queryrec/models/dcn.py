"""DCN-V2 backbone (Wang et al., WWW 2021): explicit feature crosses beside a deep MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from queryrec.models.config import ModelConfig
from queryrec.models.layers import MLP, CrossNetV2, masked_mean


class DCNBackbone(nn.Module):
    """x0 = [fields..., candidate, mean-pooled history, (extra)]; cross(x0) || deep(x0) -> logit."""

    def __init__(self, cfg: ModelConfig, n_fields: int, extra_fields: int):
        super().__init__()
        width = (n_fields + 2 + extra_fields) * cfg.dim
        self.cross = CrossNetV2(width, cfg.cross_layers)
        self.deep = MLP(width, cfg.mlp, cfg.dropout)
        self.out = nn.Linear(width + self.deep.out_dim, 1)

    def forward(
        self,
        fields: list[Tensor],
        candidate: Tensor,
        history: Tensor,
        history_mask: Tensor,
        extra: list[Tensor],
        pair_user: Tensor | None = None,
    ) -> Tensor:
        """fields: (B, d) each; candidate (B, d); history (U, H, d); mask (U, H) -> (B,).

        U = B (row i's history) unless `pair_user` (B,) says which history row each
        candidate uses (the serving layout, `export.graphs.CTRGraph`).
        """
        pooled = masked_mean(history, history_mask)  # (U, d)
        if pair_user is not None:
            pooled = pooled[pair_user]  # (B, d)
        x0 = torch.cat([*fields, candidate, pooled, *extra], dim=-1)
        return self.out(torch.cat([self.cross(x0), self.deep(x0)], dim=-1)).squeeze(-1)
