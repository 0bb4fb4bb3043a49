"""Layers shared by the paper models: MLP, masked mean, item tower, DIN attention, cross net.

Every `forward` here is pure tensor code (no I/O, numpy or device moves) so that the
models export to ONNX unchanged. Index 0 is padding everywhere (`padding_idx=0`), so a
padded id contributes a zero vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from queryrec.features.item_statistics import RATE_BUCKETS
from queryrec.models.config import ModelConfig


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the second-to-last axis of `values` where `mask` is true; 0 where none is.

    values (..., T, d), mask (..., T) -> (..., d)
    """
    weights = mask.to(values.dtype).unsqueeze(-1)  # (..., T, 1)
    total = (values * weights).sum(dim=-2)  # (..., d)
    count = weights.sum(dim=-2).clamp(min=1.0)  # (..., 1)
    return total / count


def gather_rows(table: Tensor, index: Tensor) -> Tensor:
    """`table[index]` for an integer index of any shape, through `index_select`.

    table (N, ...), index (...) -> (..., ...). Same values as advanced indexing, which on
    the CPU is several times slower for a 2-D table (46 k rows of a (2 M, 16) caption
    table: 4.5 ms against 0.3 ms; about 6 % of a `kuaisar-small` training step).
    """
    flat = table.index_select(0, index.reshape(-1))  # (index.numel(), ...)
    return flat.reshape(*index.shape, *table.shape[1:])


class MLP(nn.Module):
    """Linear -> ReLU -> dropout blocks, optionally ending in a linear output layer."""

    def __init__(
        self, in_dim: int, hidden: tuple[int, ...], dropout: float, out_dim: int | None = None
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ItemTower(nn.Module):
    """An item's vector: the sum of its id, author, type, 4 category and caption embeddings.

    `base` (without the caption) is what click histories use: a caption costs T_c word
    lookups per item, and H history items per sample made it the bulk of training time.

    Side features live in buffers indexed by item index (rows 0 and 1: padding and
    unknown), so the model's only item input is the item index. The word table is shared
    with the query vector (KuaiSAR hashes a word to one id in keywords and captions).
    """

    side_author: Tensor  # (N,) buffers, indexed by item index
    side_type: Tensor  # (N,)
    side_categories: Tensor  # (N, 4)
    side_caption: Tensor  # (N, Tc)
    side_rates: Tensor  # (N, 2) bucketed training click rates, when given

    def __init__(self, cfg: ModelConfig, words: nn.Embedding, item_side: dict[str, Tensor]):
        super().__init__()
        v, d = cfg.vocab, cfg.dim
        self.item_id = nn.Embedding(v.items, d, padding_idx=0)
        self.author = nn.Embedding(v.authors, d, padding_idx=0)
        self.item_type = nn.Embedding(v.item_types, d, padding_idx=0)
        self.categories = nn.ModuleList(nn.Embedding(n, d, padding_idx=0) for n in v.categories)
        self.words = words
        self.register_buffer("side_author", item_side["author"].long(), persistent=False)  # (N,)
        self.register_buffer("side_type", item_side["item_type"].long(), persistent=False)  # (N,)
        self.register_buffer(
            "side_categories", item_side["categories"].long(), persistent=False
        )  # (N, 4)
        self.register_buffer(
            "side_caption", item_side["caption"].long(), persistent=False
        )  # (N, Tc), 0 = pad
        # Optional: bucketed item and author training click rates (the "-stats" models).
        self.rates: nn.ModuleList | None = None
        if "rate_buckets" in item_side:
            self.register_buffer(
                "side_rates", item_side["rate_buckets"].long(), persistent=False
            )  # (N, 2)
            self.rates = nn.ModuleList(
                nn.Embedding(RATE_BUCKETS + 1, d, padding_idx=0) for _ in range(2)
            )

    def base(self, items: Tensor) -> Tensor:
        """Id, author, type and category part: items (...) int64 -> (..., d)."""
        vector = self.item_id(items)
        vector = vector + self.author(gather_rows(self.side_author, items))
        vector = vector + self.item_type(gather_rows(self.side_type, items))
        categories = gather_rows(self.side_categories, items)  # (..., 4)
        for level, table in enumerate(self.categories):
            vector = vector + table(categories[..., level])
        if self.rates is not None:
            rates = gather_rows(self.side_rates, items)  # (..., 2)
            for column, table in enumerate(self.rates):
                vector = vector + table(rates[..., column])
        return vector

    def rate_correction(self, items: Tensor, codes: Tensor) -> Tensor:
        """What replacing the table's rate codes of `items` (B,) by `codes` (B, 2) adds to
        their base vectors: (B, d)."""
        assert self.rates is not None
        table = self.side_rates[items]  # (B, 2)
        return sum(
            (emb(codes[:, c]) - emb(table[:, c]) for c, emb in enumerate(self.rates)),
            start=torch.zeros_like(self.item_id(items)),
        )

    def caption(self, items: Tensor) -> Tensor:
        """Mean of the caption's word vectors (shared word table): (...) -> (..., d)."""
        caption = gather_rows(self.side_caption, items)  # (..., Tc)
        return masked_mean(self.words(caption), caption > 0)

    def forward(self, items: Tensor) -> Tensor:
        """The full item vector, base + caption: items (...) int64 -> (..., d)."""
        return self.base(items) + self.caption(items)

    def lookup(self, full: Tensor, base_only: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every item vector a step needs in one pass per embedding table.

        full (B, F) items that need base and caption vectors, base_only (B, H) items that
        need the base vector only -> (base (B, F, d), caption (B, F, d), base of base_only
        (B, H, d)). Same values as separate `base` / `caption` calls; one lookup
        (and one dense gradient) per table instead of one per call.
        """
        width = full.shape[1]
        if not self.training:  # evaluation and export: direct (no data-dependent shapes)
            return self.base(full), self.caption(full), self.base(base_only)
        # A batch names far fewer distinct items than slots (about 8k of 64k on `small`):
        # compute each distinct item once and gather, which halves the tower's cost.
        distinct, where = torch.unique(torch.cat([full, base_only], dim=1), return_inverse=True)
        # (Gathering through F.embedding: its backward is several times faster on CPU
        # than that of plain indexing, an accumulating index_put.)
        base = F.embedding(where, self.base(distinct))  # (B, F + H, d)
        distinct_full, where_full = torch.unique(full, return_inverse=True)
        caption = F.embedding(where_full, self.caption(distinct_full))  # (B, F, d)
        return base[:, :width], caption, base[:, width:]


class TargetAttention(nn.Module):
    """DIN's activation unit: weights history items by their relevance to the candidate.

    The unit is MLP([h, c, h - c, h * c]) -> score, summed over history without softmax (as
    in DIN). Its first layer is linear, so it is computed in the algebraically identical
    factorised form (W_h + W_d) h + (W_c - W_d) c + W_p (h * c): the h and c parts once per
    history item and once per candidate instead of once per pair (MEASURED.md).
    """

    def __init__(self, dim: int, hidden: tuple[int, ...], dropout: float):
        super().__init__()
        if not hidden:
            raise ValueError("the attention unit needs at least one hidden layer")
        self.dim = dim
        self.first = nn.Linear(4 * dim, hidden[0])
        self.act = nn.PReLU(hidden[0])
        self.rest = MLP(hidden[0], hidden[1:], dropout, out_dim=1)

    def forward(
        self, candidate: Tensor, history: Tensor, mask: Tensor, pair_user: Tensor | None = None
    ) -> Tensor:
        """candidate (B, d), history (U, H, d), mask (U, H) -> pooled interest (B, d).

        Without `pair_user`, U = B and candidate i goes with history row i. With it (the
        serving layout), candidate i goes with history row pair_user[i] (B,), and the
        history part of the unit is computed once per row, not once per candidate.
        """
        w_h, w_c, w_d, w_p = torch.split(self.first.weight, self.dim, dim=1)  # each (A, d)
        hist_part = history @ (w_h + w_d).t()  # (U, H, A)
        if pair_user is not None:
            hist_part, history, mask = hist_part[pair_user], history[pair_user], mask[pair_user]
        cand_part = candidate @ (w_c - w_d).t() + self.first.bias  # (B, A)
        pair_part = (history * candidate.unsqueeze(1)) @ w_p.t()  # (B, H, A)
        hidden = hist_part + cand_part.unsqueeze(1) + pair_part  # (B, H, A)
        # PReLU with one slope per hidden unit, written out: the same values as
        # self.act on the (B, A, H) layout, without two transposes, and about 10x faster
        # in ONNX Runtime than its broadcasting PRelu kernel.
        hidden = hidden.clamp(min=0) + self.act.weight * hidden.clamp(max=0)
        scores = self.rest(hidden).squeeze(-1)  # (B, H)
        scores = scores * mask.to(scores.dtype)  # padding gets weight 0
        return (scores.unsqueeze(-1) * history).sum(dim=1)  # (B, d)


class CrossNetV2(nn.Module):
    """DCN-V2 cross layers: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l."""

    def __init__(self, dim: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x
