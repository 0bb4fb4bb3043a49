"""DIN backbone (Zhou et al., KDD 2018): target attention over the feed-click history."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from queryrec.models.config import ModelConfig
from queryrec.models.layers import MLP, TargetAttention


class DINBackbone(nn.Module):
    """[fields..., candidate, attention-pooled history, (extra)] -> MLP -> logit."""

    def __init__(self, cfg: ModelConfig, n_fields: int, extra_fields: int):
        super().__init__()
        self.attention = TargetAttention(cfg.dim, cfg.attention_mlp, cfg.dropout)
        width = (n_fields + 2 + extra_fields) * cfg.dim
        self.head = MLP(width, cfg.mlp, cfg.dropout, out_dim=1)

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
        interest = self.attention(candidate, history, history_mask, pair_user)  # (B, d)
        x = torch.cat([*fields, candidate, interest, *extra], dim=-1)
        return self.head(x).squeeze(-1)
