"""One CTR model class for every model name: a backbone plus, for QueryRec, the query tower.

`din` / `dcn` are the backbones alone. `queryrec-paper` / `queryrec-dcn` add the user's
query representation e_{q_u^t} (query vectors -> SAS encoder) as one more input field, and
are trained with the auxiliary losses L_next and L_cl (see `queryrec.losses`). The
ablations differ only in loss weights (`queryrec.models.registry`).

Every model reads one `ModelInputs` (`queryrec.features.model_inputs`: names, shapes and
padding of every input written once), mapped to tensors; a model's class names the
optional inputs it reads (`reads`) and the training-only ones (`training_inputs`).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from queryrec.features.model_inputs import ModelInputs
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

    The baselines (`queryrec.models.baselines`) and the served QueryRec subclass it: they
    share its embedding tables and item tower, may read optional inputs (`reads`) and
    training-only ones (`training_inputs`), and may add loss terms of their own
    (`CTROutput.losses`, already weighted; the one training loop adds them).
    """

    # Optional `ModelInputs` fields this model reads (`model_inputs.OPTIONAL_INPUTS`):
    # training, offline scoring and the service build them for it.
    reads: ClassVar[frozenset[str]] = frozenset()
    # Training-only `ModelInputs` fields it reads (`training.task_inputs.TRAINING_INPUTS`).
    training_inputs: ClassVar[tuple[str, ...]] = ()
    # Whether export can write the serving graphs for it; None = yes, else why not.
    not_servable_because: ClassVar[str | None] = None

    def __init__(
        self,
        cfg: ModelConfig,
        backbone: str | nn.Module,
        item_side: dict[str, Tensor],
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

    def wanted_training_inputs(self) -> tuple[str, ...]:
        """The training-only inputs this model reads: its class's, plus the training rows'
        out-of-fold rate codes for the "-stats" models (`cfg.item_statistics`)."""
        stats = ("candidate_rate_codes",) if self.cfg.item_statistics else ()
        return self.training_inputs + stats

    @property
    def servable(self) -> bool:
        return self.not_servable_because is None

    def score(self, inputs: ModelInputs[Tensor]) -> Tensor:
        """Logits (N,): what offline prediction, the parity check and the serving graphs
        compute for every model."""
        return self.forward_with_query(inputs).logits

    def forward(self, inputs: ModelInputs[Tensor]) -> Tensor:
        """-> logits (N,); sigmoid gives P(click)."""
        return self.score(inputs)

    def query_vectors(self, inputs: ModelInputs[Tensor]) -> tuple[Tensor, Tensor]:
        """The SAS encoder's input: (query vectors (U, L, d), valid (U, L)): each slot's
        word vector plus its age embedding; a slot is valid when it holds a word (the
        paper's query is its words)."""
        assert self.query_vector is not None
        vectors = self.query_vector(inputs.query_tokens) + self.query_age(inputs.query_age)
        return vectors, (inputs.query_tokens > 0).any(dim=-1)

    def query_representation(self, inputs: ModelInputs[Tensor]) -> Tensor:
        """The user rows' query histories -> e_{q_u^t} (U, d)."""
        assert self.sas is not None
        return self.sas(*self.query_vectors(inputs))

    def forward_with_query(
        self, inputs: ModelInputs[Tensor], aux_items: Tensor | None = None
    ) -> CTROutput:
        """Logits, the query representation and the full vectors of `aux_items` (B, A)
        (items the auxiliary losses score; computed in the same pass as the model's own).
        Candidates with a `pair_user` read their user row (gathered per pair)."""
        inputs = inputs.per_pair()
        item = inputs.item
        aux = aux_items if aux_items is not None else item.new_zeros((item.shape[0], 0))
        full_ids = torch.cat([item.unsqueeze(1), aux], dim=1)  # (B, 1 + A)
        base, caption, history = self.items.lookup(full_ids, inputs.click_history)
        if inputs.candidate_rate_codes is not None and self.items.rates is not None:
            # Training rows: the candidate's rate fields from out-of-fold codes, not from
            # the table (whose rates count this row's own label).
            base = base.clone()
            base[:, 0] = base[:, 0] + self.items.rate_correction(item, inputs.candidate_rate_codes)
        full = base + caption  # (B, 1 + A, d) full item vectors
        candidate = base[:, 0]  # (B, d), comparable with the history vectors (B, H, d)
        fields = self.context_fields(inputs.user, inputs.hour, caption[:, 0], inputs.profile)
        query = self.query_representation(inputs) if self.cfg.use_query else None
        extra: list[Tensor] = []
        if query is not None:
            # The field itself and its product with the candidate's full item vector, whose
            # sum is the <e_q, e_j> score L_next trains (a DIN head sees pair interactions
            # as [h, c, h - c, h * c]; an MLP alone learns products poorly).
            extra = [query, query * full[:, 0]]
        parts = HeadInputs(
            fields, candidate, history, inputs.click_history > 0, extra, full[:, 0], inputs
        )
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
    target: Tensor  # (B, d) the candidate's full vector (base + caption)
    inputs: ModelInputs[Tensor]  # the inputs, one row per candidate (pair_user None)


class CTROutput(NamedTuple):
    """What one forward pass gives the training objective."""

    logits: Tensor  # (B,)
    query: Tensor | None  # (B, d) e_{q_u^t}; None without the query tower
    aux_items: Tensor | None  # (B, A, d) full vectors of the requested auxiliary items
    # A model's own loss terms, each already multiplied by its weight (name -> scalar);
    # the objective adds them to the total and reports them by name.
    losses: dict[str, Tensor] = {}  # noqa: RUF012 (never mutated; a fresh dict per model)
