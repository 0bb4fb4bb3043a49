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

from typing import ClassVar, NamedTuple

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
    optionally with the SAS query representation as an extra field (cfg.use_query).

    The baselines (`queryrec.models.ple`, `sesrec`, `iv4rec`, `unisar`) subclass it: they
    share its embedding tables and item tower, may read more batch inputs
    (`batch_extras`, built by `queryrec.training.extra_inputs`) and may add loss terms of
    their own (`CTROutput.losses`, already weighted; the one training loop adds them).
    """

    user_profile: Tensor  # (U, P) buffer: profile field codes per user index
    # Batch keys beyond the six standard inputs that this model reads (training and
    # offline scoring build them; the service does not, see `servable`).
    batch_extras: ClassVar[tuple[str, ...]] = ()
    # Whether export can write the two serving graphs for it; None = yes, else why not.
    not_servable_because: ClassVar[str | None] = None

    def __init__(
        self,
        cfg: ModelConfig,
        backbone: str | nn.Module,
        item_side: dict[str, Tensor],
        user_profile: Tensor,
        items: ItemTower | None = None,
    ):
        super().__init__()
        if isinstance(backbone, str) and backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
        v, d = cfg.vocab, cfg.dim
        self.cfg = cfg
        self.words = nn.Embedding(v.words, d, padding_idx=0)
        self.items = items or ItemTower(cfg, self.words, item_side)
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
        self.backbone = (
            BACKBONES[backbone](cfg, self.n_fields, 2 if cfg.use_query else 0)
            if isinstance(backbone, str)
            else backbone
        )
        self.init_embeddings()

    @property
    def n_fields(self) -> int:
        """Fields before the candidate: user, hour, candidate caption, profile fields."""
        return 3 + len(self.cfg.vocab.profile)

    def init_embeddings(self) -> None:
        """Small normal embeddings with zero padding rows (subclasses call it again after
        adding tables of their own)."""
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()

    def context_fields(
        self, user: Tensor, hour: Tensor, caption: Tensor, profile: Tensor
    ) -> list[Tensor]:
        """The fields before the candidate, in the trained order: user (B,), hour (B,), the
        candidate's caption vector (B, d), profile codes (B, P) -> [user, hour, caption,
        profile...], (B, d) each."""
        fields = [self.user(user), self.hour(hour), caption]
        return fields + [table(profile[:, i]) for i, table in enumerate(self.profile)]

    def wanted_extras(self) -> tuple[str, ...]:
        """The batch extras this model reads: its class's, plus the training rows'
        out-of-fold rate codes for the "-stats" models (`cfg.item_statistics`)."""
        return self.batch_extras + (("train_rate_buckets",) if self.cfg.item_statistics else ())

    @property
    def servable(self) -> bool:
        return self.not_servable_because is None

    def score(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits (B,) of a batch dict (`queryrec.training.batches`), with the extras this
        model reads; what offline prediction calls for every model."""
        return self.forward_with_query(
            batch["user"],
            batch["item"],
            batch["hour"],
            batch["click_history"],
            batch["query_history"],
            batch["query_age"],
            extras={key: batch[key] for key in self.wanted_extras() if key in batch},
        ).logits

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
        extras: dict[str, Tensor] | None = None,
    ) -> CTROutput:
        """Logits, the query representation and the full vectors of `aux_items` (B, A)
        (items the auxiliary losses score; computed in the same pass as the model's own).
        `extras`: the batch keys of `batch_extras` (unused here; subclasses read them)."""
        profile = self.user_profile[user]  # (B, P)
        aux = aux_items if aux_items is not None else item.new_zeros((item.shape[0], 0))
        full_ids = torch.cat([item.unsqueeze(1), aux], dim=1)  # (B, 1 + A)
        base, caption, history = self.items.lookup(full_ids, click_history)
        if extras and "train_rate_buckets" in extras:
            # Training rows: the candidate's rate fields from out-of-fold codes, not from
            # the table (whose rates count this row's own label).
            base = base.clone()
            base[:, 0] = base[:, 0] + self.items.rate_correction(item, extras["train_rate_buckets"])
        full = base + caption  # (B, 1 + A, d) full item vectors
        candidate = base[:, 0]  # (B, d), comparable with the history vectors (B, H, d)
        fields = self.context_fields(user, hour, caption[:, 0], profile)
        query = self.query_representation(query_history, query_age) if self.cfg.use_query else None
        extra: list[Tensor] = []
        if query is not None:
            # The field itself and its product with the candidate's full item vector, whose
            # sum is the <e_q, e_j> score L_next trains (a DIN head sees pair interactions
            # as [h, c, h - c, h * c]; an MLP alone learns products poorly).
            extra = [query, query * full[:, 0]]
        parts = HeadInputs(fields, candidate, history, click_history > 0, extra, item, extras or {})
        logits, losses = self.head(parts)
        return CTROutput(logits, query, full[:, 1:] if aux_items is not None else None, losses)

    def head(self, parts: HeadInputs) -> tuple[Tensor, dict[str, Tensor]]:
        """The backbone on the assembled fields -> (logits (B,), the model's own weighted
        loss terms). Here the backbone alone and no term; baselines override it."""
        return (
            self.backbone(
                parts.fields, parts.candidate, parts.history, parts.history_mask, parts.extra
            ),
            {},
        )


class HeadInputs(NamedTuple):
    """What `CTRModel.forward_with_query` has assembled when the head runs."""

    fields: list[Tensor]  # (B, d) each: user, hour, candidate caption, profile fields
    candidate: Tensor  # (B, d) the candidate's base vector (id, author, type, categories)
    history: Tensor  # (B, H, d) base vectors of the click history
    history_mask: Tensor  # (B, H) bool, True = a click
    extra: list[Tensor]  # (B, d) each: the query field and its product with the candidate
    item: Tensor  # (B,) candidate item indices
    extras: dict[str, Tensor]  # the batch extras the model reads


class CTROutput(NamedTuple):
    """What one forward pass gives the training objective."""

    logits: Tensor  # (B,)
    query: Tensor | None  # (B, d) e_{q_u^t}; None without the query tower
    aux_items: Tensor | None  # (B, A, d) full vectors of the requested auxiliary items
    # A model's own loss terms, each already multiplied by its weight (name -> scalar);
    # the objective adds them to the total and reports them by name.
    losses: dict[str, Tensor] = {}  # noqa: RUF012 (never mutated; a fresh dict per model)
