"""IV4REC+ on the DIN backbone (Si et al., "A Model-Agnostic Causal Learning Framework for
Recommendation using Search Data", WWW 2022; "Enhancing Recommendation with Search Data in
a Causal Learning Manner", TOIS 2023): search queries as instrumental variables.

The idea: an embedding (of the user, of the item) mixes a causal part, the part that the
queries explain, and a non-causal part. Stage one regresses the embedding (the
"treatment") on its instrumental variables, the queries, with a network trained by a
mean-squared error against the detached embedding; the fitted value is the causal part
and the residual the non-causal part. Stage two recombines them with a learned gate,
e' = g * fitted + (1 - g) * e, g = sigmoid(W [fitted, e]), and the CTR model runs on e'.
- Items: IV = the queries that led users to click the item (`features.item_queries`:
  top M training-split queries per item); fitted = MLP(mean of their query vectors).
- Users: IV = the user's query history before t; fitted = MLP(additive-attention pooling
  of a self-attention encoding of the query vectors); the treatment is DIN's
  attention-pooled click history (the user side of the DIN backbone).

Adaptations to this data (choices, docs/RESULTS.md "Baselines"):
- No pretrained query encoder exists for KuaiSAR's hashed words, so the query vectors
  come from the word table shared with captions and are learned (the authors freeze
  pretrained ones).
- The user-side pooling has no candidate as its attention query (the authors let the
  candidate steer it): without it the user's fitted part is one vector per request, which
  the export's encoder graph computes once per user, so the model is servable; the
  query-age embedding of our encoder is added to each query vector.
- The item-side decomposition also applies to the click-history items (IV4REC+(I) does
  it for history items, IV4REC+(UI) for the candidate; here one item vector for both).
- Gates are element-wise (d outputs); an item without any training query keeps e.
- Loss: L_ctr + w_u MSE_user + w_i MSE_item, w = cfg.iv4rec.user_weight, .item_weight
  (`IV4RecConfig`; default 1 each, as the authors add the terms unweighted).
- The head sees our DIN fields (user, hour, caption, profile) next to the candidate and
  the recombined user vector.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from queryrec.features.dataset import PreparedDataset
from queryrec.features.item_queries import item_query_table
from queryrec.features.model_inputs import ModelInputs
from queryrec.models.config import ModelConfig
from queryrec.models.ctr_model import CTRModel, HeadInputs
from queryrec.models.layers import MLP, ItemTower, TargetAttention, masked_mean


def gated_mix(gate: nn.Linear, fitted: Tensor, treatment: Tensor) -> Tensor:
    """Stage two: g * fitted + (1 - g) * treatment, g = sigmoid(gate([fitted, treatment]))
    element-wise; (..., d) each -> (..., d)."""
    g = torch.sigmoid(gate(torch.cat([fitted, treatment], dim=-1)))
    return g * fitted + (1 - g) * treatment


def stage_one_loss(fitted: Tensor, treatment: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error of the fitted value against the detached treatment over the rows
    with an instrument: fitted, treatment (R, d), valid (R,) bool -> scalar (0 if none)."""
    error = ((fitted - treatment.detach()) ** 2).mean(dim=-1)  # (R,)
    weights = valid.to(error.dtype)
    return (error * weights).sum() / weights.sum().clamp(min=1.0)


class IVItemTower(ItemTower):
    """The item tower whose `base` vector is the IV-recombined one.

    `side_queries` (N, M, T): word indices of each item's training queries.
    """

    side_queries: Tensor

    def __init__(
        self, cfg: ModelConfig, words: nn.Embedding, item_side: dict[str, Tensor], queries: Tensor
    ):
        super().__init__(cfg, words, item_side)
        d = cfg.dim
        self.register_buffer("side_queries", queries.long(), persistent=False)  # (N, M, T)
        self.fit = MLP(d, (2 * d,), 0.0, out_dim=d)
        self.gate = nn.Linear(2 * d, d)

    def treatment(self, items: Tensor) -> Tensor:
        """The plain base vector (id, author, type, categories): (...) -> (..., d)."""
        return super().base(items)

    def fitted(self, items: Tensor) -> tuple[Tensor, Tensor]:
        """Stage one: (...) -> (fitted (..., d), has an instrument (...) bool)."""
        tokens = self.side_queries[items]  # (..., M, T)
        queries = masked_mean(self.words(tokens), tokens > 0)  # (..., M, d)
        present = (tokens > 0).any(dim=-1)  # (..., M)
        return self.fit(masked_mean(queries, present)), present.any(dim=-1)

    def base(self, items: Tensor) -> Tensor:
        """The recombined vector; an item without queries keeps its plain vector."""
        treatment = self.treatment(items)
        fitted, has = self.fitted(items)
        mixed = gated_mix(self.gate, fitted, treatment)
        return torch.where(has.unsqueeze(-1), mixed, treatment)

    def stage_one(self, items: Tensor) -> Tensor:
        """The item-side stage-one loss over `items` (B,)."""
        fitted, has = self.fitted(items)
        return stage_one_loss(fitted, self.treatment(items), has)


class IVUserNet(nn.Module):
    """The user's instrument encoder: query vectors (B, L, d), valid (B, L) -> fitted user
    vector (B, d); zeros for a user without queries."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.dim
        self.attention = nn.MultiheadAttention(d, cfg.sas_heads, batch_first=True)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.score = nn.Linear(d, 1, bias=False)
        self.fit = MLP(d, (2 * d,), 0.0, out_dim=d)

    def forward(self, vectors: Tensor, valid: Tensor) -> Tensor:
        any_valid = valid.any(dim=-1)  # (B,)
        # A row without a query attends to its last slot only (then zeroed): no NaN.
        keys_ok = valid.clone()
        keys_ok[:, -1] |= ~any_valid
        encoded, _ = self.attention(
            vectors, vectors, vectors, key_padding_mask=~keys_ok, need_weights=False
        )  # (B, L, d)
        scores = self.score(torch.tanh(self.key(encoded))).squeeze(-1)  # (B, L)
        scores = scores.masked_fill(~keys_ok, -1e9)
        weights = torch.softmax(scores, dim=-1).unsqueeze(-1)  # (B, L, 1)
        pooled = (weights * self.value(encoded)).sum(dim=1)  # (B, d)
        return self.fit(pooled) * any_valid.unsqueeze(-1).to(pooled.dtype)


class IVDINBackbone(nn.Module):
    """DIN with the user side recombined: [fields..., candidate, g * fitted + (1 - g) *
    interest] -> MLP -> logit, fitted = the query field (extra[0])."""

    def __init__(self, cfg: ModelConfig, n_fields: int):
        super().__init__()
        d = cfg.dim
        self.attention = TargetAttention(d, cfg.attention_mlp, cfg.dropout)
        self.gate = nn.Linear(2 * d, d)
        self.head = MLP((n_fields + 2) * d, cfg.mlp, cfg.dropout, out_dim=1)

    def parts(
        self,
        fields: list[Tensor],
        candidate: Tensor,
        history: Tensor,
        history_mask: Tensor,
        extra: list[Tensor],
        pair_user: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """-> (logits (B,), fitted user vector (B, d), interest (B, d), the treatment)."""
        interest = self.attention(candidate, history, history_mask, pair_user)  # (B, d)
        fitted = extra[0]
        user = gated_mix(self.gate, fitted, interest)
        has = (fitted != 0).any(dim=-1, keepdim=True)  # a user without queries: interest
        user = torch.where(has, user, interest)
        logits = self.head(torch.cat([*fields, candidate, user], dim=-1)).squeeze(-1)
        return logits, fitted, interest

    def forward(
        self,
        fields: list[Tensor],
        candidate: Tensor,
        history: Tensor,
        history_mask: Tensor,
        extra: list[Tensor],
        pair_user: Tensor | None = None,
    ) -> Tensor:
        """The backbone signature of DIN/DCN (what `CTRGraph`'s generic path calls)."""
        return self.parts(fields, candidate, history, history_mask, extra, pair_user)[0]


class IV4RecModel(CTRModel):
    """IV4REC+ (UI) on DIN; the two stage-one losses in `CTROutput.losses`."""

    backbone: IVDINBackbone
    items: IVItemTower

    def __init__(
        self,
        cfg: ModelConfig,
        item_side: dict[str, Tensor],
        dataset: PreparedDataset,
    ):
        if not cfg.use_query:
            raise ValueError("IV4REC+ reads the query history: build it with use_query=True")
        n_fields = 3 + len(cfg.vocab.profile)
        super().__init__(cfg, IVDINBackbone(cfg, n_fields), item_side)
        queries = cfg.iv4rec.item_queries
        table = torch.from_numpy(item_query_table(dataset, queries, cfg.query_tokens))
        self.items = IVItemTower(cfg, self.words, item_side, table)
        self.sas = None  # the user's instrument encoder replaces QueryRec's SAS encoder
        self.iv_user = IVUserNet(cfg)
        self.user_weight = cfg.iv4rec.user_weight
        self.item_weight = cfg.iv4rec.item_weight
        self.init_embeddings()

    def query_representation(self, inputs: ModelInputs[Tensor]) -> Tensor:
        """The user rows' query histories -> the user's fitted vector (U, d)."""
        return self.iv_user(*self.query_vectors(inputs))

    def head(self, parts: HeadInputs) -> tuple[Tensor, dict[str, Tensor]]:
        logits, fitted, interest = self.backbone.parts(
            parts.fields, parts.candidate, parts.history, parts.history_mask, parts.extra
        )
        if not self.training:
            return logits, {}
        user_loss = stage_one_loss(fitted, interest, (fitted != 0).any(dim=-1))
        return logits, {
            "L_iv_user": self.user_weight * user_loss,
            "L_iv_item": self.item_weight * self.items.stage_one(parts.inputs.item),
        }
