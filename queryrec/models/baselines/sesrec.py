"""SESRec (Si et al., SIGIR 2023, "When Search Meets Recommendation: Learning Disentangled
Search Representation for Recommendation"): search interest split into the parts similar
and dissimilar to the recommendation interest.

The model, as in the paper:

1. Query-item alignment: an InfoNCE loss between each history query and each item clicked
   in its search session, scored by a bilinear form squashed with tanh, in both directions
   (query -> items and item -> queries), so that queries and items share one space.
2. Two transformer encoders: one over the feed-click history, one over the search history
   (each query's vector plus the mean vector of its clicked items).
3. Interest disentangling: a co-attention between the two encoded sequences gives every
   element of each a weight; elements weighted at least 1/n (n = the sequence's valid
   length) are "similar" to the other sequence (the interest both share), the rest
   "dissimilar". A triplet loss pulls the co-attention-weighted anchor towards the mean of
   the similar part and away from the mean of the dissimilar part, on each side.
4. Target attention of the candidate over the rec (similar, dissimilar) and search (all,
   similar, dissimilar) sequences, and an MLP over those interests and the other fields.

Adaptations to this project (the data, the shared tables and the one training loop):

- The search history is the user's last L queries before t (`query_history`, word-mean
  vectors with the shared word table and a linear projection, `QueryVector`) with the
  first K items clicked in each query's session (`query_clicks`); there is no query-source
  embedding (the batch holds no source per history query).
- Feed-history items are base vectors (id, author, type, categories; no caption) as for
  every model of the project; search-clicked items and the candidate are full vectors
  (base + caption), since the caption words are what a query's words align with.
- Each encoder is one pre-LayerNorm transformer block (the SAS encoder's block, used
  bidirectionally with a key-padding mask) with learned positions counted from the most
  recent event, instead of post-LayerNorm blocks with absolute positions. All-padding rows
  attend to themselves only, which keeps them finite.
- For CPU cost, the rec encoder reads the 20 most recent feed clicks
  (`SESRecConfig.rec_length`) and the search encoder the 10 most recent queries
  (`SESRecConfig.search_length`); the authors use up to 150 and 25. (Most users of `small` have
  about 4 queries before t; the DIN pooling below still reads the whole click history.)
- The alignment loss uses in-batch negatives: the other (query, clicked item) pairs of the
  batch (at most `SESRecConfig.max_pairs` = 512, drawn at random when there are more), leaving
  out pairs with the same query words or the same item (they are positives too), instead
  of 1024 queries and items drawn from the dataset; its temperature is fixed, not learned.
- The co-attention masks padded positions out of the affinity sums as well as out of the
  softmax. The triplet term averages over the rows whose split is proper (a similar and a
  dissimilar part both exist, and both histories are non-empty): elsewhere anchor, positive
  and negative coincide and the term is the constant margin.
- The rec history's "all" interest is DIN's activation-unit pooling over the raw click
  history: the head is the project's DIN backbone (with user, hour, caption and profile
  fields), given the five other interests (bilinear softmax target attention, as in the
  paper) as extra fields. A user without any search history gets zero search interests.
- The loss is the project's pointwise L_ctr on feed impressions (the paper trains with
  sampled negatives for ranking), plus the two terms, weighted.

Weights and sizes come from `cfg.sesrec` (`models.config.SESRecConfig`); the loss
weights, margin and temperature default to the authors' released configs: `cl_weight`
(0.1), `triplet_weight` (0.001), `margin` (0.1), `temperature` (0.1).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from queryrec.features.model_inputs import ModelInputs
from queryrec.models.config import ModelConfig
from queryrec.models.ctr_model import CTRModel, HeadInputs
from queryrec.models.din import DINBackbone
from queryrec.models.layers import masked_mean
from queryrec.models.query_vector import QueryVector
from queryrec.models.sas_encoder import SASBlock

EXTRA_INTERESTS = 5  # rec similar, rec dissimilar, search all, search similar, dissimilar


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis where `mask` is true; all zeros on a row with none.

    scores (..., L), mask (..., L) bool -> (..., L)
    """
    filled = scores.masked_fill(~mask, float("-inf"))
    filled = torch.where(mask.any(dim=-1, keepdim=True), filled, torch.zeros_like(scores))
    return torch.softmax(filled, dim=-1) * mask.to(scores.dtype)


def split_interest(weights: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """SESRec's split of a sequence by its co-attention weights: similar where the weight
    is at least 1/n (n = the row's valid length), dissimilar where it is below; a part that
    would be empty becomes the whole valid row (as the authors' code does).

    weights (B, L) summing to 1 over the valid positions, valid (B, L) bool ->
    (similar (B, L), dissimilar (B, L)) bool.
    """
    count = valid.sum(dim=-1, keepdim=True).clamp(min=1).to(weights.dtype)  # (B, 1)
    high = weights >= 1.0 / count
    similar, dissimilar = high & valid, ~high & valid
    # (logical ops rather than torch.where: ONNX Runtime has no Where over booleans)
    has_similar = similar.any(dim=-1, keepdim=True)
    has_dissimilar = dissimilar.any(dim=-1, keepdim=True)
    similar = (similar & has_similar) | (valid & ~has_similar)
    dissimilar = (dissimilar & has_dissimilar) | (valid & ~has_dissimilar)
    return similar, dissimilar


def alignment_loss(
    queries: Tensor, items: Tensor, bilinear: Tensor, excluded: Tensor, temperature: float
) -> Tensor:
    """SESRec's query-item InfoNCE over P (query, clicked item) pairs, both directions.

    s_ij = tanh(q_i^T W v_j) / temperature; pair i's positive is j = i, its negatives are
    the other pairs j except where `excluded` (i, j) (also a positive: same query words or
    same item). L = 0.5 * (mean_i CE(s_i., i) + mean_j CE(s_.j, j)), CE(x, i) =
    logsumexp(x) - x_i over the kept entries.

    queries (P, d), items (P, d), bilinear W (d, d), excluded (P, P) bool -> ().
    """
    scores = torch.tanh(queries @ bilinear @ items.t()) / temperature  # (P, P)
    eye = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    scores = scores.masked_fill(excluded & ~eye, float("-inf"))
    positive = scores.diagonal()
    to_items = torch.logsumexp(scores, dim=1) - positive  # query i -> items
    to_queries = torch.logsumexp(scores, dim=0) - positive  # item i -> queries
    return 0.5 * (to_items.mean() + to_queries.mean())


def triplet_loss(
    anchor: Tensor, positive: Tensor, negative: Tensor, rows: Tensor, margin: float
) -> Tensor:
    """mean over `rows` of max(||a - p|| - ||a - n|| + margin, 0), Euclidean; 0 if none.

    anchor, positive, negative (B, d), rows (B,) bool -> ().
    """
    to_positive = ((anchor - positive).pow(2).sum(-1) + 1e-12).sqrt()
    to_negative = ((anchor - negative).pow(2).sum(-1) + 1e-12).sqrt()
    per_row = (to_positive - to_negative + margin).clamp(min=0.0)
    weight = rows.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


class SequenceEncoder(nn.Module):
    """Bidirectional transformer over a left-padded sequence (B, L, d) with validity (B, L):
    positions counted from the most recent element, pre-LN blocks, a final LayerNorm.
    A valid position attends to the valid positions only; a padded one to itself only."""

    def __init__(self, cfg: ModelConfig, max_length: int, blocks: int):
        super().__init__()
        d = cfg.dim
        self.positions = nn.Embedding(max_length, d)  # 0 = most recent
        self.blocks = nn.ModuleList(SASBlock(d, cfg.sas_heads, cfg.dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, vectors: Tensor, valid: Tensor) -> Tensor:
        """vectors (B, L, d), valid (B, L) bool -> (B, L, d)."""
        length = vectors.shape[1]
        from_end = (length - 1) - torch.arange(length, device=vectors.device)  # (L,)
        x = self.dropout(vectors + self.positions(from_end))
        x = x * valid.unsqueeze(-1).to(x.dtype)
        eye = torch.eye(length, dtype=torch.bool, device=x.device)
        allowed = (valid.unsqueeze(1) | eye).unsqueeze(1)  # (B, 1, L, L): key j valid
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)


class CoAttention(nn.Module):
    """SESRec's co-attention between the encoded rec sequence R and search sequence S.

    A = tanh(R W S^T) over valid pairs (B, Lr, Ls); the search weights are
    softmax_j(sum_i (w_r . r_i) A_ij), the rec weights softmax_i(sum_j (w_s . s_j) A_ij),
    each over its valid positions: an element weighs more the more it agrees with the
    other sequence's elements.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.affinity = nn.Linear(dim, dim, bias=False)  # W
        self.rec_gate = nn.Linear(dim, 1, bias=False)  # w_r
        self.search_gate = nn.Linear(dim, 1, bias=False)  # w_s

    def forward(
        self, rec: Tensor, search: Tensor, rec_valid: Tensor, search_valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """rec (B, Lr, d), search (B, Ls, d), validity masks -> weights (B, Lr), (B, Ls)."""
        pairs = rec_valid.unsqueeze(2) & search_valid.unsqueeze(1)  # (B, Lr, Ls)
        affinity = torch.tanh(self.affinity(rec) @ search.transpose(1, 2))
        affinity = affinity * pairs.to(affinity.dtype)
        search_scores = (self.rec_gate(rec).transpose(1, 2) @ affinity).squeeze(1)  # (B, Ls)
        rec_scores = (affinity @ self.search_gate(search)).squeeze(-1)  # (B, Lr)
        return masked_softmax(rec_scores, rec_valid), masked_softmax(search_scores, search_valid)


class BilinearTargetAttention(nn.Module):
    """SESRec's target attention: softmax over the masked positions of s_i^T W c, for
    several masks of one sequence with one W. A mask with no position pools to zeros."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Linear(dim, dim, bias=False)

    def forward(self, sequence: Tensor, target: Tensor, masks: list[Tensor]) -> list[Tensor]:
        """sequence (B, L, d), target (B, d), masks (B, L) bool each -> (B, d) each."""
        scores = (sequence @ self.weight(target).unsqueeze(-1)).squeeze(-1)  # (B, L)
        return [
            (masked_softmax(scores, mask).unsqueeze(-1) * sequence).sum(dim=1) for mask in masks
        ]


class SESRecModel(CTRModel):
    """SESRec on the project's data (module docstring: the method and its adaptations)."""

    reads: ClassVar[frozenset[str]] = frozenset({"query_clicks"})

    def __init__(self, cfg: ModelConfig, item_side: dict[str, Tensor]):
        n_fields = 3 + len(cfg.vocab.profile)  # CTRModel.n_fields, before self.cfg exists
        super().__init__(cfg, DINBackbone(cfg, n_fields, EXTRA_INTERESTS), item_side)
        d = cfg.dim
        settings = cfg.sesrec
        self.cl_weight = settings.cl_weight
        self.triplet_weight = settings.triplet_weight
        self.margin = settings.margin
        self.temperature = settings.temperature
        self.max_pairs = settings.max_pairs
        self.rec_length = min(settings.rec_length, cfg.click_history)
        self.search_length = min(settings.search_length, cfg.query_history)
        self.search_query = QueryVector(self.words, project=True)
        self.rec_encoder = SequenceEncoder(cfg, self.rec_length, blocks=1)
        self.search_encoder = SequenceEncoder(cfg, self.search_length, blocks=1)
        self.alignment = nn.Parameter(torch.empty(d, d))  # W of the alignment score
        nn.init.xavier_normal_(self.alignment)
        self.co_attention = CoAttention(d)
        self.rec_pool = BilinearTargetAttention(d)
        self.search_pool = BilinearTargetAttention(d)
        self.init_embeddings()

    def encode_search(self, inputs: ModelInputs[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """The search history -> (encoded (B, Ls, d), valid (B, Ls), the unweighted
        alignment loss in training (else None)). The work runs on the real queries and
        clicks only (most of a batch's (B, L', K) grid is padding)."""
        clicks = inputs.query_clicks
        if clicks is None:  # no search clicks given: queries alone
            clicks = inputs.query_tokens.new_zeros((*inputs.query_tokens.shape[:2], 1))
        # The most recent `search_length` queries.
        tokens = inputs.query_tokens[:, -self.search_length :]
        clicks = clicks[:, -self.search_length :]
        batch, width = tokens.shape[:2]
        valid = (tokens > 0).any(dim=-1)  # (B, Ls): a query with at least one word
        if not self.training:
            # Evaluation and export: every slot, dense (the same values, no data-dependent
            # shapes); padded slots are zero.
            clicked_mask = (clicks > 0) & valid.unsqueeze(-1)  # (B, Ls, K)
            dense = self.search_query(tokens) + masked_mean(self.items(clicks), clicked_mask)
            dense = dense * valid.unsqueeze(-1).to(dense.dtype)
            return self.search_encoder(dense, valid), valid, None
        qb, qs = torch.nonzero(valid, as_tuple=True)  # (Q,) each
        words = tokens[qb, qs]  # (Q, T)
        queries = self.search_query(words)  # (Q, d)
        query_of = torch.zeros(batch * width, dtype=torch.long, device=tokens.device)
        query_of[qb * width + qs] = torch.arange(len(qb), device=tokens.device)
        cb, cs, ck = torch.nonzero((clicks > 0) & valid.unsqueeze(-1), as_tuple=True)  # (P,)
        ids = clicks[cb, cs, ck]  # (P,) clicked items
        clicked = self.items(ids)  # (P, d) full vectors
        pair_query = query_of[cb * width + cs]  # (P,) the query each click follows
        total = queries.new_zeros(queries.shape).index_add(0, pair_query, clicked)
        count = torch.bincount(pair_query, minlength=len(qb)).clamp(min=1).to(queries.dtype)
        sessions = queries + total / count.unsqueeze(-1)  # (Q, d): query + mean click
        grid = queries.new_zeros((batch, width, queries.shape[-1])).index_put((qb, qs), sessions)
        alignment = None
        if self.training and self.cl_weight > 0:
            alignment = self._alignment(queries[pair_query], words[pair_query], clicked, ids)
        return self.search_encoder(grid, valid), valid, alignment

    def _alignment(self, queries: Tensor, words: Tensor, items: Tensor, ids: Tensor) -> Tensor:
        """The alignment loss over the batch's (query, clicked item) pairs (0 if fewer than
        two): query vectors (P, d), their words (P, T), item vectors (P, d), item ids (P,)."""
        if len(ids) > self.max_pairs:
            keep = torch.randperm(len(ids), device=ids.device)[: self.max_pairs]
            queries, words, items, ids = queries[keep], words[keep], items[keep], ids[keep]
        if len(ids) < 2:
            return queries.sum() * 0.0
        _, query_id = torch.unique(words, dim=0, return_inverse=True)  # (P,) same words
        same_query = query_id.unsqueeze(1) == query_id.unsqueeze(0)  # (P, P)
        excluded = same_query | (ids.unsqueeze(1) == ids.unsqueeze(0))
        return alignment_loss(queries, items, self.alignment, excluded, self.temperature)

    def head(self, parts: HeadInputs) -> tuple[Tensor, dict[str, Tensor]]:
        search, search_valid, alignment = self.encode_search(parts.inputs)
        # The rec encoder reads the most recent clicks (left padding: the last columns).
        rec_valid = parts.history_mask[:, -self.rec_length :]  # (B, Hr)
        rec = self.rec_encoder(parts.history[:, -self.rec_length :], rec_valid)  # (B, Hr, d)
        rec_weights, search_weights = self.co_attention(rec, search, rec_valid, search_valid)
        rec_similar, rec_dissimilar = split_interest(rec_weights, rec_valid)
        search_similar, search_dissimilar = split_interest(search_weights, search_valid)
        interests = self.rec_pool(rec, parts.target, [rec_similar, rec_dissimilar])
        interests += self.search_pool(
            search, parts.target, [search_valid, search_similar, search_dissimilar]
        )
        logits = self.backbone(
            parts.fields, parts.candidate, parts.history, parts.history_mask, interests
        )
        losses: dict[str, Tensor] = {}
        if alignment is not None:
            losses["L_sesrec_cl"] = self.cl_weight * alignment
        if self.training and self.triplet_weight > 0:
            both = rec_valid.any(dim=-1) & search_valid.any(dim=-1)  # (B,)
            triplet = self._triplet(rec, rec_weights, rec_similar, rec_dissimilar, both)
            triplet = triplet + self._triplet(
                search, search_weights, search_similar, search_dissimilar, both
            )
            losses["L_sesrec_triplet"] = self.triplet_weight * triplet
        return logits, losses

    def _triplet(
        self, sequence: Tensor, weights: Tensor, similar: Tensor, dissimilar: Tensor, rows: Tensor
    ) -> Tensor:
        """One side's triplet term: anchor = co-attention pooling, positive / negative =
        mean of the similar / dissimilar part; only rows whose split is proper."""
        anchor = (weights.unsqueeze(-1) * sequence).sum(dim=1)
        # A part that fell back to the whole row overlaps the other: not a proper split.
        proper = rows & similar.any(dim=-1) & ~(similar & dissimilar).any(dim=-1)
        return triplet_loss(
            anchor,
            masked_mean(sequence, similar),
            masked_mean(sequence, dissimilar),
            proper,
            self.margin,
        )
