"""The two serving graphs, as torch modules wrapping a trained `CTRModel`.

`QueryEncoderGraph`: a batch of users' query histories -> query representations.
`CTRGraph`: user-level rows plus a flat list of (user row, candidate item) pairs ->
P(click) per pair. The flat layout lets the service batch the candidates of many requests
without padding each request to the largest N: request r with N_r candidates adds one
user row and N_r pairs pointing at it.

Both compute exactly what `CTRModel.forward` computes (the parity check compares them);
what changes is where the work happens:
- item vectors (id, author, type, categories, caption) do not depend on the request, so
  they are computed once at export for every item and stored as two tables (base and
  caption part) inside the graph; the service sends item indices only;
- user-level parts (user, hour and profile embeddings, query representation, the click
  history's item vectors) are computed once per user row and gathered per pair;
- a DIN head is replaced by its serving rewrite (`export.din_serving`): the same function
  in fewer, larger operations. DCN keeps the trained backbone's forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from export.din_serving import DINServingHead, supports
from queryrec.models.ctr_model import CTRModel


class QueryEncoderGraph(nn.Module):
    """query_tokens (B, L, T) int64 word indices (0 = padding, left-padded, L <= the
    trained history length) and query_age (B, L) int64 age buckets -> (B, d) float32."""

    def __init__(self, model: CTRModel):
        super().__init__()
        if not model.cfg.use_query:
            raise ValueError("this model has no query tower")
        self.model = model

    def forward(self, query_tokens: Tensor, query_age: Tensor) -> Tensor:
        return self.model.query_representation(query_tokens, query_age)


class CTRGraph(nn.Module):
    """User rows (U) and candidate pairs (N) -> P(click) (N,) float32.

    Inputs: query_repr (U, d) float32 (models with a query tower only), user (U,),
    hour (U,), profile (U, P), click_history (U, H) item indices, left-padded;
    pair_user (N,) row of each pair in 0..U-1, item (N,) candidate item indices.
    """

    item_base: Tensor  # (N_items, d) id + author + type + categories part of each item
    item_caption: Tensor  # (N_items, d) caption part of each item

    def __init__(self, model: CTRModel, platt: tuple[float, float] | None = None):
        """`platt` (a, b): return sigmoid(a * logit + b), the calibration the export
        inserts into ctr.onnx (`export.calibration.insert_platt`); for eager serving of a
        calibrated bundle's model (loadtest's naive-torch). The export itself leaves it
        None and calibrates the ONNX graph."""
        super().__init__()
        self.platt = platt
        # Only the parts used at serving time (holding the whole model would drag the
        # unused, tied word table into the exported program).
        self.cfg = model.cfg
        self.uses_query = model.cfg.use_query
        self.user = model.user
        self.hour = model.hour
        self.profile = model.profile
        self.backbone = model.backbone
        # DIN: the serving rewrite of its head (export.din_serving); slots are positions
        # in the trained field order [user, hour, caption, profile..., candidate,
        # interest, query, query * item].
        self.din_head: DINServingHead | None = None
        if supports(model.backbone):
            p = len(model.profile)
            user_slots = [0, 1, *range(3, 3 + p)] + ([5 + p] if self.uses_query else [])
            pair_slots = [2, 3 + p] + ([6 + p] if self.uses_query else []) + [4 + p]
            self.din_head = DINServingHead(model.backbone, user_slots, pair_slots)  # type: ignore[arg-type]
        with torch.no_grad():
            every_item = torch.arange(model.cfg.vocab.items)
            self.register_buffer("item_base", model.items.base(every_item).contiguous())
            self.register_buffer("item_caption", model.items.caption(every_item).contiguous())

    def forward(
        self,
        query_repr: Tensor | None,
        user: Tensor,
        hour: Tensor,
        profile: Tensor,
        click_history: Tensor,
        pair_user: Tensor,
        item: Tensor,
    ) -> Tensor:
        # Per user row (U, ...), gathered per pair (N, ...) below.
        user_fields = [self.user(user), self.hour(hour)]
        profile_fields = [table(profile[:, i]) for i, table in enumerate(self.profile)]
        history = self.item_base[click_history]  # (U, H, d)
        # Per pair.
        candidate = self.item_base[item]  # (N, d)
        caption = self.item_caption[item]  # (N, d)
        if self.din_head is not None:
            user_fields = [*user_fields, *profile_fields]
            pair_fields = [caption, candidate]
            if self.uses_query:
                assert query_repr is not None
                user_fields.append(query_repr)
                pair_fields.append(query_repr.index_select(0, pair_user) * (candidate + caption))
            history = history * (click_history > 0).unsqueeze(-1).to(history.dtype)
            logits = self.din_head(
                torch.stack(user_fields, dim=1),
                torch.stack(pair_fields, dim=1),
                candidate,
                history,
                pair_user,
            )
            return self._probability(logits)
        fields = [f[pair_user] for f in user_fields] + [caption]
        fields += [f[pair_user] for f in profile_fields]
        extra: list[Tensor] = []
        if self.uses_query:
            assert query_repr is not None
            query = query_repr[pair_user]  # (N, d)
            extra = [query, query * (candidate + caption)]
        logits = self.backbone(fields, candidate, history, click_history > 0, extra, pair_user)
        return self._probability(logits)

    def _probability(self, logits: Tensor) -> Tensor:
        if self.platt is None:  # the export: nothing extra traced into the graph
            return torch.sigmoid(logits)
        a, b = self.platt
        return torch.sigmoid(a * logits + b)
