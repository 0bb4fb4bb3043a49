"""The served QueryRec (`queryrec`): the paper's method and what we add to it.

The paper's model (`queryrec-paper`, `CTRModel` with the query tower) reads the words of
the user's last L searches, encodes them with the SAS encoder and hands the last
position, e_{q_u^t}, to a DIN head as one field, trained with L_ctr + λ2 L_next + λ3 L_cl.
This model keeps all of that (the same SAS encoder, the same three losses, the diffusion
pseudo-positives in L_cl) and adds three parts, each a switch of `ModelConfig` and a
paired ablation row (`registry`):

1. **Search clicks in the query slots** (`search_clicks`, `query_slots.QuerySlots`): each
   slot also reads the item vectors of the results clicked after that search; with
   `slot_positives`, a search without clicks reads its query's diffusion pseudo-positives
   instead (the paper's diffusion job, looked up by query at serving too:
   `queryrec.features.query_positives`).
2. **Target attention over every SAS position** (`target_attention`,
   `search_attention.SearchAttention`): the candidate attends over h_1..h_L, so several
   live intents are not squeezed into one point; the field and its product with the
   candidate join e_q and e_q * candidate. **Off in the served model**: paired over 3
   seeds it paid on none of the three datasets (docs/RESULTS.md); the row
   `queryrec-with-target-attention` reproduces that.
3. **Match counts** (`match_counts`, `match_counts.MatchCounts`): how many feed clicks
   and searches match the candidate's category or caption, as embedded count fields.

The user-side work (slots and SAS encoder) depends on the query history only, so the
serving encoder graph computes it once per history version and the service caches it
(`user_side`); the CTR graph does the per-candidate part (`export.graphs`).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from queryrec.features.model_inputs import ModelInputs
from queryrec.models.config import ModelConfig
from queryrec.models.ctr_model import CTRModel, CTROutput, HeadInputs
from queryrec.models.din import DINBackbone
from queryrec.models.layers import gather_rows
from queryrec.models.match_counts import FIELDS, MatchCounts, Matches, pair_matches
from queryrec.models.query_slots import QuerySlots, slot_valid
from queryrec.models.search_attention import SearchAttention


class UserQueryState(NamedTuple):
    """What the encoder graph computes per user row (and the service caches)."""

    states: Tensor  # (U, L, d) SAS outputs, zero at slots that are not valid
    valid: Tensor  # (U, L) bool: the slot holds a search with words or clicked results
    query: Tensor  # (U, d) e_{q_u^t}: the most recent valid state, or "no query"


class QueryRecModel(CTRModel):
    """`CTRModel`'s DIN with the query tower, plus the parts in the module docstring."""

    reads: ClassVar[frozenset[str]] = frozenset({"query_clicks", "query_click_source"})

    def __init__(self, cfg: ModelConfig, item_side: dict[str, Tensor]):
        if not cfg.use_query:
            raise ValueError("QueryRecModel needs the query tower: build it with use_query=True")
        n_fields = 3 + len(cfg.vocab.profile)
        extra = 2 + 2 * cfg.target_attention + FIELDS * cfg.match_counts
        super().__init__(cfg, DINBackbone(cfg, n_fields, extra), item_side)
        self.slots = QuerySlots(cfg.dim) if cfg.search_clicks else None
        self.search_attention = SearchAttention(cfg.dim) if cfg.target_attention else None
        self.counts = MatchCounts(cfg.dim) if cfg.match_counts else None
        self.init_embeddings()

    def query_clicks(self, inputs: ModelInputs[Tensor]) -> Tensor:
        """(U, L, K) the clicked results the model reads: none without `search_clicks`."""
        clicks = inputs.query_clicks
        if clicks is None or not self.cfg.search_clicks:
            return inputs.query_tokens.new_zeros((*inputs.query_tokens.shape[:2], 1))
        return clicks

    def slot_valid(self, query_tokens: Tensor, clicks: Tensor) -> Tensor:
        """(U, L, T) words, (U, L, K) the clicks the model reads -> (U, L) valid slots."""
        has_words = (query_tokens > 0).any(dim=-1)
        return has_words if self.slots is None else slot_valid(has_words, clicks > 0)

    def user_side(
        self, inputs: ModelInputs[Tensor], clicked: Tensor | None = None
    ) -> UserQueryState:
        """The user rows' query slots through the SAS encoder; `clicked` (U, L, K, d):
        the base vectors of `query_clicks(inputs)` when already looked up."""
        assert self.sas is not None
        vectors, has_words = self.query_vectors(inputs)  # (U, L, d), (U, L)
        valid = has_words
        if self.slots is not None:
            clicks = self.query_clicks(inputs)
            if clicked is None:
                clicked = self.items.base(clicks)
            source = inputs.query_click_source
            if source is None:  # no source given: a slot with results was clicked
                source = (clicks > 0).any(dim=-1).long()
            vectors, valid = self.slots(vectors, has_words, clicked, clicks > 0, source)
        states = self.sas.encode_positions(vectors, valid)  # (U, L, d)
        states = states * valid.unsqueeze(-1).to(states.dtype)
        return UserQueryState(states, valid, self.sas.last_valid(states, valid))

    def query_representation(self, inputs: ModelInputs[Tensor]) -> Tensor:
        return self.user_side(inputs).query

    def forward_with_query(
        self, inputs: ModelInputs[Tensor], aux_items: Tensor | None = None
    ) -> CTROutput:
        inputs = inputs.per_pair()
        item = inputs.item
        batch, horizon = inputs.click_history.shape
        clicks = self.query_clicks(inputs)  # (B, L, K)
        aux = aux_items if aux_items is not None else item.new_zeros((batch, 0))
        full_ids = torch.cat([item.unsqueeze(1), aux], dim=1)  # (B, 1 + A)
        base_only = torch.cat([inputs.click_history, clicks.reshape(batch, -1)], dim=1)
        base, caption, looked_up = self.items.lookup(full_ids, base_only)
        history = looked_up[:, :horizon]  # (B, H, d)
        clicked = looked_up[:, horizon:].reshape(*clicks.shape, -1)  # (B, L, K, d)
        user = self.user_side(inputs, clicked)
        target = base[:, 0] + caption[:, 0]  # (B, d) the candidate's full vector
        extra = [user.query, user.query * target]
        if self.search_attention is not None:
            attended = self.search_attention(user.states, user.valid, target)  # (B, d)
            extra += [attended, attended * target]
        if self.counts is not None:
            extra += self.counts(self.matches(inputs, clicks, user.valid))
        fields = self.context_fields(inputs.user, inputs.hour, caption[:, 0], inputs.profile)
        parts = HeadInputs(
            fields, base[:, 0], history, inputs.click_history > 0, extra, target, inputs
        )
        logits, losses = self.head(parts)
        full = base + caption
        return CTROutput(logits, user.query, full[:, 1:] if aux_items is not None else None, losses)

    def matches(self, inputs: ModelInputs[Tensor], clicks: Tensor, valid: Tensor) -> Matches:
        """The match counts of per-pair inputs (`match_counts.pair_matches`)."""
        categories = self.items.side_categories
        return pair_matches(
            candidate_categories=gather_rows(categories, inputs.item),
            candidate_caption=gather_rows(self.items.side_caption, inputs.item),
            history_categories=gather_rows(categories, inputs.click_history),
            history_valid=inputs.click_history > 0,
            history_captions=gather_rows(self.items.side_caption, inputs.click_history),
            query_tokens=inputs.query_tokens,
            clicked_categories=gather_rows(categories, clicks),
            clicked_mask=clicks > 0,
            valid=valid,
        )
