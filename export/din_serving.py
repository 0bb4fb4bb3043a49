"""DIN's scoring head rewritten for serving: the same outputs in fewer, larger operations.

`DINBackbone` as trained computes, for every (candidate c, history item h_j) pair, the
activation unit PReLU(W [h; c; h - c; h * c] + b) . w_r + b_r and a CTR MLP over eleven
fields. At serving time a request is one user and many candidates, and on one CPU core
the cost is not the arithmetic but the passes over (pairs, H, A) tensors (MEASURED.md;
docs/BENCHMARKS.md "Serving graphs"). This module computes the identical function with:

1. **The activation unit as one batched matmul per pair.** With W_hd = W_h + W_d,
   W_cd = W_c - W_d, the unit's pre-activation for history row h_j and candidate c is
   h_j (diag(c) W_p^T + W_hd^T) + (c W_cd^T + b) = [h_j, 1] @ M(c), where
   M(c) = [c[:, None] * W_p^T + W_hd^T ; c W_cd^T + b] is (d + 1, A) and built once per
   candidate. The per-pair work is then a single (H, d + 1) @ (d + 1, A) product.
2. **PReLU folded into the output layer.** With slopes s and output weights w_r,
   PReLU(x) . w_r = relu(x) . (w_r (1 - s)) + x . (w_r s). The second term is linear in x,
   so it is two more columns of M(c) (x . (w_r s) and its negative, since
   relu(l) - relu(-l) = l): the unit becomes relu([h_j, 1] @ M'(c)) . r' + b_r, one
   element-wise pass instead of five.
3. **Padding by zero rows.** Padded history rows are zeroed once per user row, so the
   pooled interest sum_j score_j h_j needs no mask per pair.
4. **The CTR MLP's first layer split by where its inputs live.** Seven of its eleven
   input fields (user, hour, profile, query) are per user: their share of the first
   layer is computed once per user row and gathered per pair; only the candidate's four
   fields are multiplied per pair. The parts that depend on the user's history alone
   (`user_first`, `history_rows`) are separate methods, so that the split graphs compute
   them once per history version (`export.graphs.CTRUserGraph`) and the per-request graph
   runs only `pair_logits`.

Applies to the DIN backbone with a one-hidden-layer activation unit (the configuration
every model here uses); `export.graphs.CTRGraph` falls back to the backbone's own
forward otherwise. The parity check compares this graph with the trained model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from queryrec.models.din import DINBackbone


def supports(backbone: nn.Module) -> bool:
    """Whether `backbone` has the shape this rewrite handles."""
    return (
        isinstance(backbone, DINBackbone)
        and len(backbone.attention.rest.net) == 1  # the unit's output layer only: A -> 1
        and isinstance(backbone.attention.rest.net[0], nn.Linear)
    )


class DINServingHead(nn.Module):
    """user_fields (U, F_u, d), pair_fields (N, F_p, d), candidate (N, d),
    history (U, H, d) with zero padding rows, pair_user (N,) -> logits (N,).

    `user_fields` and `pair_fields` are the CTR MLP's input fields split by where they
    live; `user_slots` / `pair_slots` give their positions in the trained field order
    [fields..., candidate, interest, extra...] (the interest, slot `interest_slot`, is
    computed here).
    """

    unit_hist: Tensor  # (d, A + 2) W_p^T extended with the linear PReLU columns
    unit_hist_bias: Tensor  # (d, A + 2) W_hd^T, extended
    unit_cand: Tensor  # (d, A + 2) W_cd^T, extended
    unit_bias: Tensor  # (A + 2,)
    unit_out: Tensor  # (A + 2,) r' = [w_r (1 - s), 1, -1]
    unit_out_bias: Tensor  # () b_r
    first_user: Tensor  # (F_u * d, M1)
    first_pair: Tensor  # (F_p * d, M1)
    first_bias: Tensor  # (M1,)

    def __init__(self, backbone: DINBackbone, user_slots: list[int], pair_slots: list[int]):
        super().__init__()
        if not supports(backbone):
            raise ValueError("DINServingHead needs a DIN backbone with a one-layer unit output")
        unit = backbone.attention
        d = unit.dim
        with torch.no_grad():
            w_h, w_c, w_d, w_p = torch.split(unit.first.weight, d, dim=1)  # each (A, d)
            out = unit.rest.net[0]
            assert isinstance(out, nn.Linear)
            w_r = out.weight[0]  # (A,)
            slope = unit.act.weight  # (A,)
            linear = w_r * slope  # (A,) weights of the PReLU's linear part

            def extend(weight_t: Tensor) -> Tensor:
                """(d or 1, A) -> (., A + 2): append x . linear and its negative."""
                column = (weight_t @ linear).unsqueeze(-1)
                return torch.cat([weight_t, column, -column], dim=-1)

            self.register_buffer("unit_hist", extend(w_p.t().contiguous()))
            self.register_buffer("unit_hist_bias", extend((w_h + w_d).t().contiguous()))
            self.register_buffer("unit_cand", extend((w_c - w_d).t().contiguous()))
            self.register_buffer("unit_bias", extend(unit.first.bias.unsqueeze(0))[0])
            ones = torch.ones(1, dtype=w_r.dtype)
            self.register_buffer("unit_out", torch.cat([w_r * (1 - slope), ones, -ones]))
            self.register_buffer("unit_out_bias", out.bias[0].clone())

            first = backbone.head.net[0]
            assert isinstance(first, nn.Linear)
            slices = torch.split(first.weight, d, dim=1)  # one (M1, d) block per field
            self.register_buffer(
                "first_user", torch.cat([slices[i] for i in user_slots], dim=1).t().contiguous()
            )
            self.register_buffer(
                "first_pair", torch.cat([slices[i] for i in pair_slots], dim=1).t().contiguous()
            )
            self.register_buffer("first_bias", first.bias.clone())
        # The rest of the CTR MLP, unchanged: ReLU, dropout (identity in eval), Linear, ...
        self.head_rest = nn.Sequential(*list(backbone.head.net)[1:])

    def forward(
        self,
        user_fields: Tensor,
        pair_fields: Tensor,
        candidate: Tensor,
        history: Tensor,
        pair_user: Tensor,
        pair_first: Tensor | None = None,
    ) -> Tensor:
        """The whole head in one call (the single CTR graph); `pair_first` (N, M1): what
        fields outside `pair_fields` add to the first layer per pair, already multiplied
        by their weights (the caller folded them)."""
        user_first = self.user_first(user_fields)
        rows = self.history_rows(history)
        return self.pair_logits(user_first, rows, pair_fields, candidate, pair_user, pair_first)

    def user_first(self, user_fields: Tensor) -> Tensor:
        """The user side of the CTR MLP's first layer: user_fields (U, F_u, d) -> (U, M1),
        the fields' share plus the layer's bias (candidate-independent: the split graphs
        compute it once per user history, `export.graphs.CTRUserGraph`)."""
        return user_fields.flatten(1) @ self.first_user + self.first_bias

    @staticmethod
    def history_rows(history: Tensor) -> Tensor:
        """history (U, H, d), zero padding rows -> (U, H, d + 1): each row with the
        trailing 1 that multiplies the unit's candidate-only row (candidate-independent)."""
        ones = history.new_ones(history.shape[0], history.shape[1], 1)
        return torch.cat([history, ones], dim=-1)

    def pair_logits(
        self,
        user_first: Tensor,
        rows: Tensor,
        pair_fields: Tensor,
        candidate: Tensor,
        pair_user: Tensor,
        pair_first: Tensor | None = None,
    ) -> Tensor:
        """The per-pair work: user_first (U, M1) and rows (U, H, d + 1) of `user_first` /
        `history_rows`, pair_fields (N, F_p, d), candidate (N, d), pair_user (N,) ->
        logits (N,)."""
        interest = self._interest(candidate, rows, pair_user)  # (N, d)
        pair_in = torch.cat([pair_fields, interest.unsqueeze(1)], dim=1).flatten(1)
        first = pair_in @ self.first_pair + user_first.index_select(0, pair_user)
        if pair_first is not None:
            first = first + pair_first
        return self.head_rest(first).squeeze(-1)  # (N,)

    def _interest(self, candidate: Tensor, history_rows: Tensor, pair_user: Tensor) -> Tensor:
        """The pooled interest: candidate (N, d), history_rows (U, H, d + 1) (`history_rows`),
        pair_user (N,) -> (N, d).

        Per candidate, M'(c) = [c[:, None] W_p^T + W_hd^T ; c W_cd^T + b] (d + 1, A + 2),
        and the unit's pre-activation is [h_j, 1] @ M'(c) for the pair's history rows.
        """
        d = candidate.shape[1]
        width = self.unit_bias.shape[0]
        per_dim = candidate.unsqueeze(-1) * self.unit_hist + self.unit_hist_bias  # (N, d, A+2)
        constant = candidate @ self.unit_cand + self.unit_bias  # (N, A + 2)
        unit = torch.cat([per_dim, constant.unsqueeze(1)], dim=1)  # (N, d + 1, A + 2)
        rows = history_rows.index_select(0, pair_user)  # (N, H, d + 1)
        hidden = torch.relu(torch.bmm(rows, unit))  # (N, H, A + 2)
        scores = self._unit_output(hidden.reshape(-1, width)).reshape(rows.shape[0], -1)
        # Pooled interest; padded rows are zero so their scores do not count.
        return torch.bmm(scores.unsqueeze(1), rows).squeeze(1)[:, :d]  # (N, d)

    def _unit_output(self, hidden: Tensor) -> Tensor:
        """relu(pre-activation) (R, A + 2) -> the unit's scores (R,).

        A 2-D weight: ORT's MatMul with a 1-D right operand is 20x slower."""
        return (hidden @ self.unit_out.unsqueeze(-1)).squeeze(-1) + self.unit_out_bias
