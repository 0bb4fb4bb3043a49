"""UniSAR (Shi et al., "UniSAR: Modeling User Transition Behaviors between Search and
Recommendation", SIGIR 2024; code github.com/TengShi-RUC/UniSAR), adapted to feed CTR.

UniSAR merges a user's recommendation (here: feed click) and search behaviours into one
time-ordered sequence and models the four transitions between behaviour types in three
steps:

- extraction: attention blocks with pre-defined masks. Within-type blocks give r2r (a
  feed click attends to earlier feed clicks) and s2s (a search to earlier searches); one
  cross-type block over the merged sequence gives s2r (a feed click attends to the
  searches before it) and r2s (a search attends to the feed clicks before it);
- alignment: contrastive losses. The transition alignment pulls together a user's mean
  s2r and mean r2r (over the feed positions) and mean r2s and mean s2s (over the search
  positions), against the other users of the batch: an NT-Xent over the 2n views with
  similarity tanh(z W z') / tau and a learned bilinear W (the paper's his_cl). The
  query-item alignment is a symmetric InfoNCE, same similarity form, between a history
  query and an item clicked in its search session (q_i_cl);
- fusion: cross-attention of r2r onto s2r (feed positions) and of s2s onto r2s (search
  positions), then target attention of the candidate over each fused sequence (bilinear
  scores, softmax): a feed interest and a search interest vector.

Adaptations (choices for this data and task, not the authors'):
1. Task: feed CTR only. The original trains a rec and a search task jointly through a
   shared PLE layer; the search task is left out: the evaluated and served task is the
   feed, the alignment losses already train on the search logs, the PLE baseline
   (`queryrec.models.baselines.ple`) is the one that measures a jointly trained search task, and a
   second pass of the user encoder per step over search samples would double the cost.
2. Head: this repository's DIN backbone (its target attention over the raw 50-click
   history and its MLP over the standard fields) instead of PLE + task towers; the feed
   and search interest vectors are its two extra fields. The original's learned "rec
   query" input is dropped (a constant in a single-task model).
3. Behaviours: the last R = `UniSARConfig.feed_length` (10) feed clicks and the last
   S = `UniSARConfig.search_length` (10) searches before t (the authors use 30 and 30; shorter
   for CPU cost: every block runs at every position). A feed click is its base item
   vector (id, author, type, categories); a search is its query vector (masked mean of
   the words, projected, as QueryRec's) plus the mean base vector of the items clicked
   in its session (`query_clicks`, first K = 4), as in the paper.
4. Merge: by the minutes before t (`click_minutes`, `query_minutes`), oldest first,
   padding in front; a stable sort keeps each type's own order and puts a feed click
   before a query of the same minute (the data gives minutes only).
5. Masks: causal, as the paper describes transitions (a behaviour attends to earlier
   ones only; within a type also to itself); the released code's masks are type-only.
   A behaviour without any allowed key (a feed click before the first kept search, in
   s2r) gets no attention update and keeps its residual path. Restricted to one type, the
   merged r2r / s2s masks are the causal masks of that type's own sequence, so those two
   blocks run on the type's own sequence (the same result, cheaper).
6. Blocks: pre-LayerNorm (attention, then a feed-forward layer of width d as in the
   original, then a LayerNorm); positions are learned embeddings counted from the most
   recent behaviour backwards (per type for the within-type blocks, over the merged
   sequence for the cross-type block), so left padding shifts nothing. Fusion: one
   cross-attention layer per side without the decoder's self-attention and feed-forward
   sublayers (the extraction already self-attends), over all positions of its type
   (non-causal, as the original decoder). The target attention reads the candidate's
   full vector (base + caption; captions share the word table with queries).
7. Transition alignment: the two views are scaled to unit length before tanh(z W z'):
   means of LayerNorm outputs have length about sqrt(d), at which tanh saturates from
   the first step and the loss sat above chance; unscaled, validation AUC after 100k
   samples fell to 0.641 (0.660 without the term, 0.668 scaled). Only users with both
   types take part, at most `UniSARConfig.align_users` (256) per batch, drawn at random.
8. Query-item alignment: in-batch negatives (the other sampled pairs; a pair with the
   same item, or from the same query slot, is no negative) instead of sampled negative
   items and queries, over at most `UniSARConfig.qi_pairs` (512) pairs drawn per batch.
9. Temperatures are fixed (learnable in the released code); sizes d = cfg.dim,
   cfg.sas_heads heads and one block per part (the authors' KuaiSAR config: 1 layer,
   2 heads).

Settings (`cfg.unisar`, `models.config.UniSARConfig`): align_weight 0.1,
align_temperature 0.1, qi_weight 0.001, qi_temperature 0.5 (the authors' KuaiSAR values),
align_users 256, qi_pairs 512, feed_length 10, search_length 10. Loss terms, already weighted and computed in training mode
only: "L_unisar_align" (both sides summed) and "L_unisar_qi".

Served: the search clicks are part of the service's query entries and the minutes come
from the stored timestamps, so the feature path builds every input online too.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from queryrec.features.model_inputs import ModelInputs
from queryrec.models.config import ModelConfig
from queryrec.models.ctr_model import CTRModel, CTROutput
from queryrec.models.din import DINBackbone
from queryrec.models.layers import masked_mean
from queryrec.models.query_vector import QueryVector

PAD, REC, SEARCH = 0, 1, 2  # behaviour types in the merged sequence
NEG = -1e4  # masked logit: finite, far below any tanh(.) / tau used here


class Merged(NamedTuple):
    """The two behaviour sequences merged by time (oldest first, padding in front)."""

    order: Tensor  # (B, N) index into the concatenation [feed clicks (H) | queries (L')]
    types: Tensor  # (B, N) PAD / REC / SEARCH


def merge_by_time(
    click_minutes: Tensor, click_valid: Tensor, query_minutes: Tensor, query_valid: Tensor
) -> Merged:
    """(B, H) and (B, L') minutes before t with validity -> the merged order (B, H + L').

    Older (more minutes) first; padding first of all; a stable sort keeps each sequence's
    own order and puts a click before a query of the same minute.
    """
    minutes = torch.cat([click_minutes, query_minutes], dim=1)
    valid = torch.cat([click_valid, query_valid], dim=1)
    kinds = torch.cat(
        [
            torch.full_like(click_minutes, REC),
            torch.full_like(query_minutes, SEARCH),
        ],
        dim=1,
    )
    # Padding after every real minute (more minutes = older = first); then a composite key
    # without ties (ties broken by position, earlier first): any sort, stable or not (ONNX
    # has no stable sort), gives the stable order.
    width = minutes.shape[1]
    padding = minutes.amax(dim=(0, 1)) + 1
    key = torch.where(valid, minutes, padding.expand_as(minutes))
    position = torch.arange(width, device=minutes.device)
    key = key * width + (width - 1 - position)
    order = torch.sort(key, dim=1, descending=True).indices
    types = torch.where(valid, kinds, torch.zeros_like(kinds)).gather(1, order)
    return Merged(order, types)


def transition_masks(types: Tensor) -> dict[str, Tensor]:
    """types (B, N) in time order -> allowed[b, i, j] (B, N, N): may position i attend to j.

    r2r: feed i, feed j, j <= i;  s2s: search i, search j, j <= i;
    s2r: feed i, search j, j < i (the searches before a click);
    r2s: search i, feed j, j < i (the clicks before a search).
    """
    n = types.shape[1]
    upto = torch.ones(n, n, dtype=torch.bool, device=types.device).tril()  # j <= i
    before = upto.tril(-1)  # j < i
    rec, search = types == REC, types == SEARCH
    rec_i, rec_j = rec.unsqueeze(2), rec.unsqueeze(1)
    search_i, search_j = search.unsqueeze(2), search.unsqueeze(1)
    return {
        "r2r": rec_i & rec_j & upto,
        "s2s": search_i & search_j & upto,
        "s2r": rec_i & search_j & before,
        "r2s": search_i & rec_j & before,
    }


def _softmax(scores: Tensor) -> Tensor:
    """Softmax over the last axis, written out: for rows of a few tens of entries it is
    several times faster on CPU than torch.softmax (same values)."""
    shifted = (scores - scores.amax(dim=-1, keepdim=True).detach()).exp()
    return shifted / shifted.sum(dim=-1, keepdim=True)


def transition_alignment_loss(a: Tensor, b: Tensor, weight: Tensor, temperature: float) -> Tensor:
    """Two views (n, d) of each of n users -> NT-Xent over the 2n views.

    z = [a; b], sim = tanh(z W z^T) / tau; view k's positive is its partner (k +- n), its
    negatives every other view but itself. 0 (in the graph) when n < 2.
    """
    n = a.shape[0]
    if n < 2:
        return (a.sum() + b.sum() + weight.sum()) * 0.0
    z = torch.cat([a, b], dim=0)  # (2n, d)
    sim = torch.tanh(z @ weight @ z.t()) / temperature  # (2n, 2n)
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, NEG)
    index = torch.arange(n, device=z.device)
    target = torch.cat([index + n, index])
    return F.cross_entropy(sim, target)


def query_item_alignment_loss(
    queries: Tensor,
    items: Tensor,
    weight: Tensor,
    temperature: float,
    query_ids: Tensor,
    item_ids: Tensor,
) -> Tensor:
    """P (query, clicked item) pairs (P, d) -> symmetric in-batch InfoNCE.

    query -> items: logits tanh(q_p W i_r) / tau, target r = p; item -> queries: logits
    tanh(i_p W q_r) / tau. A pair r != p with the same item id (query -> items) or the
    same query id (item -> queries) is no negative. 0 (in the graph) when P < 2.
    """
    count = queries.shape[0]
    if count < 2:
        return (queries.sum() + items.sum() + weight.sum()) * 0.0
    eye = torch.eye(count, dtype=torch.bool, device=queries.device)
    target = torch.arange(count, device=queries.device)
    to_items = torch.tanh(queries @ weight @ items.t()) / temperature  # (P, P)
    to_items = to_items.masked_fill((item_ids[:, None] == item_ids[None, :]) & ~eye, NEG)
    to_queries = torch.tanh(items @ weight @ queries.t()) / temperature
    to_queries = to_queries.masked_fill((query_ids[:, None] == query_ids[None, :]) & ~eye, NEG)
    return 0.5 * (F.cross_entropy(to_items, target) + F.cross_entropy(to_queries, target))


class MaskedBlock(nn.Module):
    """Pre-LN attention block with an arbitrary mask, then a feed-forward layer and a
    LayerNorm: self-attention, or cross-attention onto `memory` (same length).

    A row without any allowed key gets no attention update (its residual passes), so
    all-padding rows stay finite.
    """

    def __init__(self, dim: int, heads: int, dropout: float, feed_forward: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.norm_memory = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn: nn.Module | None = None
        if feed_forward:
            self.ffn = nn.Sequential(
                nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim)
            )
        self.norm_out = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = nn.Dropout(dropout)
        self.scale = (dim // heads) ** -0.5

    def forward(self, x: Tensor, allowed: Tensor, memory: Tensor | None = None) -> Tensor:
        """x (B, N, d), allowed (B, N, N) bool (row i may read key j), memory (B, N, d)
        or None (self-attention) -> (B, N, d)."""
        batch, length, dim = x.shape
        h = self.norm(x)
        if memory is None:
            q, k, v = torch.split(self.qkv(h), dim, dim=-1)
        else:
            weight, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(h, weight[:dim], bias[:dim])
            memory_part = F.linear(self.norm_memory(memory), weight[dim:], bias[dim:])
            k, v = torch.split(memory_part, dim, dim=-1)
        shape = (batch, length, self.heads, dim // self.heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        has_key = allowed.any(dim=-1)  # (B, N)
        # Written out: at these lengths (tens of positions, head width 16) the plain form
        # is faster on CPU than the fused kernel. A keyless row's softmax is uniform over
        # NEG scores (finite) and its update is dropped below.
        scores = (q @ k.transpose(-1, -2)) * self.scale  # (B, nh, N, N)
        scores = scores.masked_fill(~allowed.unsqueeze(1), NEG)
        weights = self.attention_dropout(_softmax(scores))
        mixed = weights @ v  # (B, nh, N, hd)
        mixed = self.out(mixed.transpose(1, 2).reshape(batch, length, dim))
        mixed = mixed * has_key.unsqueeze(-1).to(mixed.dtype)  # ...and that is dropped
        x = x + self.dropout(mixed)
        if self.ffn is not None:
            x = x + self.dropout(self.ffn(x))
        return self.norm_out(x)


class BilinearTargetAttention(nn.Module):
    """softmax_j(s_j W c) over the allowed positions, then the weighted sum of s_j; a row
    without any position gives 0."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Linear(dim, dim, bias=False)

    def forward(self, sequence: Tensor, candidate: Tensor, mask: Tensor) -> Tensor:
        """sequence (B, N, d), candidate (B, d), mask (B, N) -> (B, d)."""
        scores = (sequence * self.weight(candidate).unsqueeze(1)).sum(-1)  # (B, N)
        weights = _softmax(scores.masked_fill(~mask, NEG))
        weights = weights * mask.to(weights.dtype)
        return (weights.unsqueeze(-1) * sequence).sum(dim=1)


class Transitions(NamedTuple):
    """What extraction and fusion give, each in its type's layout: (B, R, d) at the feed
    clicks, (B, S', d) at the searches."""

    r2r: Tensor  # (B, R, d)
    s2s: Tensor  # (B, S', d)
    s2r: Tensor  # (B, R, d): each feed click attending to the searches before it
    r2s: Tensor  # (B, S', d): each search attending to the feed clicks before it
    rec_fused: Tensor  # (B, R, d): r2r cross-attending to s2r
    search_fused: Tensor  # (B, S', d): s2s cross-attending to r2s


def _from_end(length: int, device: torch.device) -> Tensor:
    """(length,) positions L-1 .. 0: 0 = the most recent slot of a left-padded sequence."""
    return (length - 1) - torch.arange(length, device=device)


def _causal_mask(valid: Tensor) -> Tensor:
    """valid (B, L) of a time-ordered sequence -> allowed (B, L, L): valid i, valid j <= i."""
    length = valid.shape[1]
    upto = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    return upto & valid.unsqueeze(2) & valid.unsqueeze(1)


def _unit(views: Tensor) -> Tensor:
    """Rows scaled to unit length: the mean of LayerNorm outputs has length about sqrt(d),
    at which tanh(z W z') saturates from the first step (module docstring)."""
    return F.normalize(views, dim=-1)


def _bilinear(dim: int) -> nn.Parameter:
    weight = nn.Parameter(torch.empty(dim, dim))
    nn.init.xavier_normal_(weight)
    return weight


class UniSARModel(CTRModel):
    """UniSAR's extraction, alignment and fusion of search/feed transitions, fused
    vectors into a DIN head (module docstring: method and adaptations)."""

    reads: ClassVar[frozenset[str]] = frozenset({"query_clicks", "query_minutes", "click_minutes"})

    def __init__(self, cfg: ModelConfig, item_side: dict[str, Tensor]):
        d = cfg.dim
        n_fields = 3 + len(cfg.vocab.profile)
        super().__init__(cfg, DINBackbone(cfg, n_fields, 2), item_side)
        settings = cfg.unisar
        self.align_weight = settings.align_weight
        self.align_temperature = settings.align_temperature
        self.qi_weight = settings.qi_weight
        self.qi_temperature = settings.qi_temperature
        self.qi_pairs = settings.qi_pairs
        self.align_users = settings.align_users
        self.feed_length = settings.feed_length
        self.search_length = settings.search_length

        heads, dropout = cfg.sas_heads, cfg.dropout
        self.search_query = QueryVector(self.words, cfg.project_query_vector)
        # Positions counted from the most recent behaviour: per type, and merged.
        self.rec_position = nn.Embedding(self.feed_length, d)
        self.search_position = nn.Embedding(self.search_length, d)
        self.merged_position = nn.Embedding(self.feed_length + self.search_length, d)
        self.r2r = MaskedBlock(d, heads, dropout)
        self.s2s = MaskedBlock(d, heads, dropout)
        self.cross = MaskedBlock(d, heads, dropout)  # s2r at feed, r2s at search positions
        self.rec_fusion = MaskedBlock(d, heads, dropout, feed_forward=False)
        self.search_fusion = MaskedBlock(d, heads, dropout, feed_forward=False)
        self.rec_pool = BilinearTargetAttention(d)
        self.search_pool = BilinearTargetAttention(d)
        self.rec_align = _bilinear(d)  # W of the s2r / r2r alignment
        self.search_align = _bilinear(d)  # W of the r2s / s2s alignment
        self.qi_align = _bilinear(d)  # W of the query-item alignment
        self.init_embeddings()

    def forward_with_query(
        self, inputs: ModelInputs[Tensor], aux_items: Tensor | None = None
    ) -> CTROutput:
        """As `CTRModel.forward_with_query`; the inputs must hold `reads`."""
        inputs = inputs.per_pair()
        missing = [k for k in sorted(self.reads) if getattr(inputs, k) is None]
        if missing:
            raise ValueError(f"UniSAR needs the inputs {missing} (see features.model_inputs)")
        assert inputs.query_clicks is not None and inputs.query_minutes is not None
        assert inputs.click_minutes is not None
        user, item, hour = inputs.user, inputs.item, inputs.hour
        click_history, query_history = inputs.click_history, inputs.query_tokens
        # The last S' = min(S, L') searches: the only ones UniSAR reads (also for the
        # query-item alignment), so no work is spent on older ones.
        last = min(self.search_length, query_history.shape[1])
        query_history = query_history[:, query_history.shape[1] - last :]  # (B, S', T)
        query_clicks = inputs.query_clicks[:, -last:]  # (B, S', K)
        query_minutes = inputs.query_minutes[:, -last:]  # (B, S')
        batch, width, per_query = query_clicks.shape
        horizon = click_history.shape[1]

        profile = inputs.profile
        aux = aux_items if aux_items is not None else item.new_zeros((batch, 0))
        full_ids = torch.cat([item.unsqueeze(1), aux], dim=1)
        base_only = torch.cat([click_history, query_clicks.reshape(batch, -1)], dim=1)
        base, caption, looked_up = self.items.lookup(full_ids, base_only)
        full = base + caption
        history = looked_up[:, :horizon]  # (B, H, d)
        clicked = looked_up[:, horizon:].reshape(batch, width, per_query, -1)  # (B, S', K, d)
        fields = self.context_fields(user, hour, caption[:, 0], profile)
        click_valid = click_history > 0  # (B, H)

        # The behaviours: the last R feed clicks and the last S' searches.
        recent = min(self.feed_length, horizon)
        used = click_valid[:, horizon - recent :].any(dim=0)  # (R,)
        if self.training and not bool(used[0]) and bool(used.any()):
            # Leading slots empty in every row: cut them (positions count from the end,
            # so the output is unchanged; short histories are common early in the log).
            recent -= int(used.int().argmax())
        feed_valid = click_valid[:, horizon - recent :]  # (B, R)
        feeds = history[:, horizon - recent :] * feed_valid.unsqueeze(-1).to(history.dtype)
        search_valid = (query_history > 0).any(dim=-1)  # (B, S')
        clicked_mask = (query_clicks > 0) & search_valid.unsqueeze(-1)  # (B, S', K)
        query_vectors = self.search_query(query_history)  # (B, S', d)
        searches = query_vectors + masked_mean(clicked, clicked_mask)
        searches = searches * search_valid.unsqueeze(-1).to(searches.dtype)
        transitions = self.transitions(
            feeds,
            feed_valid,
            inputs.click_minutes[:, horizon - recent :],
            searches,
            search_valid,
            query_minutes,
        )

        target = full[:, 0]
        rec_interest = self.rec_pool(transitions.rec_fused, target, feed_valid)
        search_interest = self.search_pool(transitions.search_fused, target, search_valid)
        logits = self.backbone(
            fields, base[:, 0], history, click_valid, [rec_interest, search_interest]
        )
        losses: dict[str, Tensor] = {}
        if self.training:
            if self.align_weight > 0:
                # Users with a transition (both types), at most `align_users` of them.
                both = (feed_valid.any(dim=1) & search_valid.any(dim=1)).nonzero().squeeze(1)
                if len(both) > self.align_users:
                    keep = torch.randperm(len(both), device=both.device)[: self.align_users]
                    both = both[keep]
                rec_side = transition_alignment_loss(
                    _unit(masked_mean(transitions.s2r, feed_valid)[both]),
                    _unit(masked_mean(transitions.r2r, feed_valid)[both]),
                    self.rec_align,
                    self.align_temperature,
                )
                search_side = transition_alignment_loss(
                    _unit(masked_mean(transitions.r2s, search_valid)[both]),
                    _unit(masked_mean(transitions.s2s, search_valid)[both]),
                    self.search_align,
                    self.align_temperature,
                )
                losses["L_unisar_align"] = self.align_weight * (rec_side + search_side)
            if self.qi_weight > 0:
                losses["L_unisar_qi"] = self.qi_weight * self._query_item_loss(
                    query_vectors, clicked, clicked_mask, query_clicks
                )
        return CTROutput(logits, None, full[:, 1:] if aux_items is not None else None, losses)

    def transitions(
        self,
        feeds: Tensor,
        feed_valid: Tensor,
        feed_minutes: Tensor,
        searches: Tensor,
        search_valid: Tensor,
        search_minutes: Tensor,
    ) -> Transitions:
        """Extraction and fusion: feed (B, R, d) and search (B, S', d) behaviours with
        validity and minutes before t -> the four transitions and the fused sequences, each
        in its own type's layout ((B, R, d) at feed clicks, (B, S', d) at searches).

        The within-type blocks run on each type's own sequence: restricted to one type,
        the merged r2r / s2s masks are the causal masks of that sequence (a stable merge
        keeps each type's order), so this is the same computation at a fraction of the
        cost. The cross-type block runs on the merged sequence.
        """
        recent, width = feeds.shape[1], searches.shape[1]
        device = feeds.device
        r2r = self.r2r(
            feeds + self.rec_position(_from_end(recent, device)), _causal_mask(feed_valid)
        )
        s2s = self.s2s(
            searches + self.search_position(_from_end(width, device)),
            _causal_mask(search_valid),
        )
        merged = merge_by_time(feed_minutes, feed_valid, search_minutes, search_valid)
        index = merged.order.unsqueeze(-1).expand(-1, -1, feeds.shape[-1])
        behaviours = torch.cat([feeds, searches], dim=1).gather(1, index)  # (B, N, d)
        length = behaviours.shape[1]
        live = (merged.types != PAD).unsqueeze(-1).to(behaviours.dtype)
        behaviours = (behaviours + self.merged_position(_from_end(length, device))) * live
        masks = transition_masks(merged.types)
        cross = self.cross(behaviours, masks["s2r"] | masks["r2s"])  # (B, N, d)
        cross = torch.zeros_like(cross).scatter(1, index, cross)  # back to [feeds | searches]
        s2r, r2s = cross[:, :recent], cross[:, recent:]
        both_feed = feed_valid.unsqueeze(2) & feed_valid.unsqueeze(1)
        both_search = search_valid.unsqueeze(2) & search_valid.unsqueeze(1)
        return Transitions(
            r2r=r2r,
            s2s=s2s,
            s2r=s2r,
            r2s=r2s,
            rec_fused=self.rec_fusion(r2r, both_feed, memory=s2r),
            search_fused=self.search_fusion(s2s, both_search, memory=r2s),
        )

    def _query_item_loss(
        self, query_vectors: Tensor, clicked: Tensor, clicked_mask: Tensor, query_clicks: Tensor
    ) -> Tensor:
        """Query-item alignment over at most `qi_pairs` (query, clicked item) pairs drawn
        from the batch's history queries."""
        b, slot, k = clicked_mask.nonzero(as_tuple=True)
        if len(b) > self.qi_pairs:
            keep = torch.randperm(len(b), device=b.device)[: self.qi_pairs]
            b, slot, k = b[keep], slot[keep], k[keep]
        return query_item_alignment_loss(
            query_vectors[b, slot],
            clicked[b, slot, k],
            self.qi_align,
            self.qi_temperature,
            query_ids=b * clicked_mask.shape[1] + slot,
            item_ids=query_clicks[b, slot, k],
        )
