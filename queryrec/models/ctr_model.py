"""One CTR model class for every model name: a backbone plus, for QueryRec, the query tower.

`din` / `dcn` are the backbones alone. `queryrec` / `queryrec-dcn` add the user's query
representation e_{q_u^t} (query vectors -> SAS encoder) as one more input field, and are
trained with the auxiliary losses L_next and L_cl (see `queryrec.losses`). The ablations
differ only in loss weights (`queryrec.models.registry`).

Inputs (all int64, padding 0; see `queryrec.training.batches` for how they are built):
    user (B,), item (B,), hour (B,) Beijing hour of the impression,
    click_history (B, H) left-padded item indices, query_history (B, L, T) left-padded
    word indices of the queries strictly before the impression, query_age (B, L) their age
    buckets at the impression (0 = padding).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from queryrec.features.time_features import AGE_BUCKETS
from queryrec.models.config import ModelConfig
from queryrec.models.dcn import DCNBackbone
from queryrec.models.din import DINBackbone
from queryrec.models.layers import ItemTower
from queryrec.models.query_vector import QueryVector
from queryrec.models.sas_encoder import SASEncoder

BACKBONES = {"din": DINBackbone, "dcn": DCNBackbone}


class CTRModel(nn.Module):
    """Backbone ("din" or "dcn") over user, item, context and click-history fields,
    optionally with the SAS query representation as an extra field (cfg.use_query)."""

    user_profile: Tensor  # (U, P) buffer: profile field codes per user index

    def __init__(
        self, cfg: ModelConfig, backbone: str, item_side: dict[str, Tensor], user_profile: Tensor
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
        v, d = cfg.vocab, cfg.dim
        self.cfg = cfg
        self.words = nn.Embedding(v.words, d, padding_idx=0)
        self.items = ItemTower(cfg, self.words, item_side)
        self.user = nn.Embedding(v.users, d, padding_idx=0)
        self.profile = nn.ModuleList(nn.Embedding(n, d, padding_idx=0) for n in v.profile)
        self.register_buffer("user_profile", user_profile.long(), persistent=False)  # (U, P)
        self.hour = nn.Embedding(24, d)
        self.query_vector: QueryVector | None = None
        self.sas: SASEncoder | None = None
        if cfg.use_query:
            self.query_vector = QueryVector(self.words, cfg.project_query_vector)
            # How long ago each query was issued: an intent fades, and order alone (the
            # SAS positions) does not say whether the last query is minutes or days old.
            self.query_age = nn.Embedding(AGE_BUCKETS, d, padding_idx=0)
            self.sas = SASEncoder(cfg)
        n_fields = 3 + len(v.profile)  # user, hour, candidate caption, profile fields
        self.backbone = BACKBONES[backbone](cfg, n_fields, 2 if cfg.use_query else 0)
        for module in self.modules():  # small embeddings; padding rows stay zero
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()

    def query_representation(self, query_history: Tensor, query_age: Tensor) -> Tensor:
        """query_history (B, L, T), query_age (B, L) -> e_{q_u^t} (B, d)."""
        assert self.query_vector is not None and self.sas is not None
        vectors = self.query_vector(query_history) + self.query_age(query_age)  # (B, L, d)
        valid = (query_history > 0).any(dim=-1)  # (B, L): a query with at least one word
        return self.sas(vectors, valid)

    def forward(
        self,
        user: Tensor,
        item: Tensor,
        hour: Tensor,
        click_history: Tensor,
        query_history: Tensor,
        query_age: Tensor,
    ) -> Tensor:
        """-> logits (B,); sigmoid gives P(click)."""
        return self.forward_with_query(
            user, item, hour, click_history, query_history, query_age
        ).logits

    def forward_with_query(
        self,
        user: Tensor,
        item: Tensor,
        hour: Tensor,
        click_history: Tensor,
        query_history: Tensor,
        query_age: Tensor,
        aux_items: Tensor | None = None,
    ) -> CTROutput:
        """Logits, the query representation and the full vectors of `aux_items` (B, A)
        (items the auxiliary losses score; computed in the same pass as the model's own)."""
        profile = self.user_profile[user]  # (B, P)
        aux = aux_items if aux_items is not None else item.new_zeros((item.shape[0], 0))
        full_ids = torch.cat([item.unsqueeze(1), aux], dim=1)  # (B, 1 + A)
        base, caption, history = self.items.lookup(full_ids, click_history)
        full = base + caption  # (B, 1 + A, d) full item vectors
        candidate = base[:, 0]  # (B, d), comparable with the history vectors (B, H, d)
        fields = [self.user(user), self.hour(hour), caption[:, 0]]
        fields += [table(profile[:, i]) for i, table in enumerate(self.profile)]
        query = self.query_representation(query_history, query_age) if self.cfg.use_query else None
        extra: list[Tensor] = []
        if query is not None:
            # The field itself and its product with the candidate's full item vector, whose
            # sum is the <e_q, e_j> score L_next trains (a DIN head sees pair interactions
            # as [h, c, h - c, h * c]; an MLP alone learns products poorly).
            extra = [query, query * full[:, 0]]
        logits = self.backbone(fields, candidate, history, click_history > 0, extra)
        return CTROutput(logits, query, full[:, 1:] if aux_items is not None else None)


class CTROutput(NamedTuple):
    """What one forward pass gives the training objective."""

    logits: Tensor  # (B,)
    query: Tensor | None  # (B, d) e_{q_u^t}; None without the query tower
    aux_items: Tensor | None  # (B, A, d) full vectors of the requested auxiliary items
