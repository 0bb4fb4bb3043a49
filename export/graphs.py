"""The serving graphs, as torch modules wrapping a trained `CTRModel`.

Every graph input is a `ModelInputs` field by name (or an encoder output); the service and
offline scoring build feeds by those names (`queryrec.features.graph_feeds`).

`QueryEncoderGraph`: a batch of users' query slots -> what the model computes from the
query history alone (`query_repr` (U, d), and for the served QueryRec also
`query_states` (U, L, d), the SAS output at every slot, when its target attention is on:
`queryrec-with-target-attention`). The service caches it per history version.

`CTRGraph`: user-level rows plus a flat list of (user row, candidate item) pairs ->
P(click) per pair. The flat layout lets the service batch the candidates of many requests
without padding each request to the largest N: request r with N_r candidates adds one
user row and N_r pairs pointing at it. Three forms, by model:
- the paper's models and the backbones (`CTRModel`, PLE, IV4REC+): item vectors (id,
  author, type, categories, caption) do not depend on the request, so they are computed
  once at export for every item and stored as two tables (base and caption part) inside
  the graph; user-level parts are computed once per user row and gathered per pair; a
  DIN head is replaced by its serving rewrite (`export.din_serving`);
- the served QueryRec (`QueryRecModel`): the same, plus its match counts, counted once per
  user row, and (option) its target attention over the encoder's `query_states`
  (`export.match_counts_serving`);
- the baselines that encode whole histories per candidate (SESRec, UniSAR): the model's
  own forward on the user rows gathered per pair (`ModelInputs.per_pair`).
All compute exactly what `CTRModel.score` computes on the same inputs (the parity check
compares them).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from export.din_serving import DINServingHead, supports
from export.match_counts_serving import ServingCounts
from queryrec.features.model_inputs import OPTIONAL_INPUTS, ModelInputs
from queryrec.models.baselines.sesrec import SESRecModel
from queryrec.models.baselines.unisar import UniSARModel
from queryrec.models.ctr_model import CTRModel
from queryrec.models.queryrec_model import QueryRecModel

WHOLE_MODEL = (SESRecModel, UniSARModel)
"""Models whose CTR graph is their own forward per pair (no encoder graph)."""


def encoder_outputs(model: CTRModel) -> tuple[str, ...]:
    """The encoder graph's output names ((): the model has no encoder graph)."""
    if isinstance(model, WHOLE_MODEL) or not model.cfg.use_query:
        return ()
    if isinstance(model, QueryRecModel) and model.cfg.target_attention:
        return ("query_repr", "query_states")
    return ("query_repr",)


def encoder_inputs(model: CTRModel) -> tuple[str, ...]:
    """The encoder graph's input names (`ModelInputs` fields)."""
    names = ("query_tokens", "query_age")
    if isinstance(model, QueryRecModel):
        return (*names, "query_clicks", "query_click_source")
    return names


def ctr_inputs(model: CTRModel) -> tuple[str, ...]:
    """The CTR graph's input names: the encoder's outputs, then `ModelInputs` fields."""
    user: tuple[str, ...] = ("user", "hour", "profile", "click_history")
    if isinstance(model, WHOLE_MODEL):
        user += ("query_tokens", "query_age", *sorted(model.reads))
    elif isinstance(model, QueryRecModel):
        user += ("query_tokens", "query_age", "query_clicks")
    return (*encoder_outputs(model), *user, "pair_user", "item")


def splits(model: CTRModel) -> bool:
    """Whether the model's CTR graph also exports as the split pair (`CTRUserGraph`,
    `CTRPairGraph`): a model with an encoder graph (the service caches the user side
    beside the encoder's outputs), served by the DIN rewrite, without the candidate's
    target attention over the SAS states (its per-slot states would be the user side's
    largest part; that option is off in the served model)."""
    if not encoder_outputs(model) or not supports(model.backbone):
        return False
    return not (isinstance(model, QueryRecModel) and model.cfg.target_attention)


def user_side_outputs(model: CTRModel) -> tuple[str, ...]:
    """The user graph's outputs: the CTR computation's candidate-independent part."""
    names: tuple[str, ...] = ("user_first", "history_rows")
    if isinstance(model, QueryRecModel) and model.counts is not None:
        names += ("count_keys", "click_total")
    return names


def user_graph_inputs(model: CTRModel) -> tuple[str, ...]:
    """The user graph's inputs: the CTR graph's user-level inputs except the hour (the
    hour is folded into a table the pair graph reads, so that the user side does not
    change with the clock)."""
    return tuple(n for n in ctr_inputs(model) if n not in ("hour", "pair_user", "item"))


def pair_graph_inputs(model: CTRModel) -> tuple[str, ...]:
    """The pair graph's inputs: the user side, the query vector (e_q * candidate is a
    pair field), the hour, then the pairs."""
    query = ("query_repr",) if model.cfg.use_query else ()
    return (*user_side_outputs(model), *query, "hour", "pair_user", "item")


class QueryEncoderGraph(nn.Module):
    """(query_tokens (U, L, T), query_age (U, L)[, query_clicks (U, L, K)]) -> the
    encoder outputs (`encoder_outputs`)."""

    def __init__(self, model: CTRModel):
        super().__init__()
        if not encoder_outputs(model):
            raise ValueError("this model has no encoder graph")
        self.model = model
        self.names = encoder_inputs(model)
        self.with_states = "query_states" in encoder_outputs(model)

    def forward(self, *tensors: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        inputs = _user_inputs(dict(zip(self.names, tensors, strict=True)))
        if isinstance(self.model, QueryRecModel):
            user = self.model.user_side(inputs)
            return (user.query, user.states) if self.with_states else user.query
        return self.model.query_representation(inputs)


class CTRGraph(nn.Module):
    """The encoder outputs, user rows (U) and candidate pairs (N) -> P(click) (N,) float32,
    inputs in the order of `ctr_inputs(model)`."""

    counts_first: Tensor  # (R, M1) each count-field row's share of the head's first layer
    hour_first: Tensor  # (24, M1) each hour's share of the head's first layer
    item_base: Tensor  # (N_items, d) id + author + type + categories part of each item
    item_caption: Tensor  # (N_items, d) caption part of each item

    def __init__(self, model: CTRModel, platt: tuple[float, float] | None = None):
        """`platt` (a, b): return sigmoid(a * logit + b), the calibration the export
        inserts into ctr.onnx (`export.calibration.insert_platt`); for eager serving of a
        calibrated bundle's model (loadtest's naive-torch). The export itself leaves it
        None and calibrates the ONNX graph."""
        super().__init__()
        self.platt = platt
        self.names = ctr_inputs(model)
        self.cfg = model.cfg
        self.whole: CTRModel | None = model if isinstance(model, WHOLE_MODEL) else None
        self.queryrec: QueryRecModel | None = model if isinstance(model, QueryRecModel) else None
        if self.whole is not None:
            return
        # Only the parts used at serving time (holding the whole model would drag the
        # unused, tied word table into the exported program).
        self.uses_query = model.cfg.use_query
        self.user = model.user
        self.hour = model.hour
        self.profile = model.profile
        self.backbone = model.backbone
        self.counts: ServingCounts | None = None
        if self.queryrec is not None:
            self.search_attention = self.queryrec.search_attention
            if self.queryrec.counts is not None:
                self.counts = ServingCounts(
                    self.queryrec.counts,
                    model.items.side_categories,
                    model.items.side_caption,
                    model.cfg.vocab.categories,
                )
        # DIN: the serving rewrite of its head (export.din_serving); slots are positions
        # in the trained field order [user, hour, caption, profile..., candidate,
        # interest, extra...].
        self.din_head: DINServingHead | None = None
        if supports(model.backbone):
            user_slots, pair_slots = self._slots(model)
            self.din_head = DINServingHead(model.backbone, user_slots, pair_slots)  # type: ignore[arg-type]
            self._fold_hour(model.backbone)
            if self.counts is not None:
                self._fold_counts(model.backbone, pair_slots[-2] + 1)
        elif self.queryrec is not None:
            raise ValueError("the served QueryRec's serving graph needs its DIN head")
        with torch.no_grad():
            every_item = torch.arange(model.cfg.vocab.items)
            self.register_buffer("item_base", model.items.base(every_item).contiguous())
            self.register_buffer("item_caption", model.items.caption(every_item).contiguous())

    def _slots(self, model: CTRModel) -> tuple[list[int], list[int]]:
        """Where the user-level and per-pair fields sit in the trained order. Extra fields
        (after the interest at 4 + P): the query e_q (per user), then per pair e_q *
        candidate, the attended query and its product, the match counts; the interest is
        computed by the head and goes last among the pair fields. The hour (slot 1) is
        neither: it is folded into a table (`_fold_hour`)."""
        p = len(model.profile)
        candidate, interest, extra = 3 + p, 4 + p, 5 + p
        user_slots = [0, *range(3, 3 + p)]
        pair_slots = [2, candidate]
        if self.uses_query:
            user_slots.append(extra)
            width = 2
            if self.queryrec is not None:
                width += 2 * model.cfg.target_attention  # (the counts follow: folded)
            pair_slots += list(range(extra + 1, extra + width))
        return user_slots, [*pair_slots, interest]

    def _require_split(self, model: CTRModel) -> None:
        """ValueError unless the model's CTR graph splits (`splits`; the split graphs)."""
        if not splits(model) or self.din_head is None:
            raise ValueError("this model's CTR graph does not split (export.graphs.splits)")

    def _fold_hour(self, backbone: nn.Module) -> None:
        """The hour field (slot 1) enters the head's first layer linearly: fold its table
        into that layer, (24, M1), so that the hour is one row added per user row, and
        the rest of the user side does not depend on the clock."""
        first = _first_layer(backbone)
        d = self.hour.weight.shape[1]
        with torch.no_grad():
            folded = self.hour.weight @ first.weight[:, d : 2 * d].t()  # (24, M1)
        self.register_buffer("hour_first", folded.contiguous())

    def _fold_counts(self, backbone: nn.Module, first_slot: int) -> None:
        """The count fields (slots first_slot .. + FIELDS - 1) enter the head's first
        layer linearly: fold each field's embedding table into its share of that layer,
        so that a candidate's count fields are one lookup per field of (M1,) rows, summed
        (`export.match_counts_serving`)."""
        assert self.counts is not None
        first = _first_layer(backbone)
        d = self.counts.fields.shape[1]
        with torch.no_grad():
            weights = torch.split(first.weight, d, dim=1)  # (M1, d) per field slot
            per_row = torch.stack(
                [weights[first_slot + int(f)] for f in self.counts.row_field]
            )  # (R, M1, d)
            folded = (per_row @ self.counts.fields.unsqueeze(-1)).squeeze(-1)  # (R, M1)
        self.register_buffer("counts_first", folded.contiguous())

    def forward(self, *tensors: Tensor) -> Tensor:
        named = dict(zip(self.names, tensors, strict=True))
        if self.whole is not None:
            inputs = _user_inputs(named).replace(item=named["item"], pair_user=named["pair_user"])
            return self._probability(self.whole.score(inputs))
        if self.din_head is not None:
            return self._probability(self.pair_logits(self.user_side(named), named))
        user, hour, profile = named["user"], named["hour"], named["profile"]
        click_history, pair_user, item = named["click_history"], named["pair_user"], named["item"]
        # Per user row (U, ...), gathered per pair (N, ...) below.
        user_fields = [self.user(user), self.hour(hour)]
        profile_fields = [table(profile[:, i]) for i, table in enumerate(self.profile)]
        history = self.item_base[click_history]  # (U, H, d)
        candidate = self.item_base[item]  # (N, d)
        caption = self.item_caption[item]  # (N, d)
        fields = [f[pair_user] for f in user_fields] + [caption]
        fields += [f[pair_user] for f in profile_fields]
        extra: list[Tensor] = []
        if self.uses_query:
            query = named["query_repr"][pair_user]  # (N, d)
            extra = [query, query * (candidate + caption)]
        logits = self.backbone(fields, candidate, history, click_history > 0, extra, pair_user)
        return self._probability(logits)

    def user_side(self, named: dict[str, Tensor]) -> dict[str, Tensor]:
        """The DIN path's candidate-independent part, by `user_side_outputs` name: the user
        fields' share of the head's first layer (U, M1) (hour excluded), the history rows
        (U, H, d + 1), and the user's count multisets (`ServingCounts.user_multisets`)."""
        assert self.din_head is not None
        profile = named["profile"]
        user_fields = [self.user(named["user"])]
        user_fields += [table(profile[:, i]) for i, table in enumerate(self.profile)]
        if self.uses_query:
            user_fields.append(named["query_repr"])
        click_history = named["click_history"]
        history = self.item_base[click_history]  # (U, H, d)
        history = history * (click_history > 0).unsqueeze(-1).to(history.dtype)
        side = {
            "user_first": self.din_head.user_first(torch.stack(user_fields, dim=1)),
            "history_rows": self.din_head.history_rows(history),
        }
        if self.counts is not None:
            assert self.queryrec is not None
            inputs = _user_inputs(named)
            clicks = self.queryrec.query_clicks(inputs)
            valid = self.queryrec.slot_valid(inputs.query_tokens, clicks)  # (U, L)
            keys, total = self.counts.user_multisets(
                click_history, inputs.query_tokens, clicks, valid
            )
            side.update(count_keys=keys, click_total=total)
        return side

    def pair_logits(self, side: dict[str, Tensor], named: dict[str, Tensor]) -> Tensor:
        """The DIN path's per-pair part: the user side (`user_side`) and the hour, query
        vector, pair_user and item of `named` -> logits (N,)."""
        assert self.din_head is not None
        pair_user, item = named["pair_user"], named["item"]
        candidate = self.item_base[item]  # (N, d)
        caption = self.item_caption[item]  # (N, d)
        target = candidate + caption
        pair_fields = [caption, candidate]
        if self.uses_query:
            pair_fields.append(named["query_repr"].index_select(0, pair_user) * target)
        pair_first = None
        if self.queryrec is not None:
            more, pair_first = self._queryrec_fields(side, named, target)
            pair_fields += more
        user_first = side["user_first"] + F.embedding(named["hour"], self.hour_first)
        return self.din_head.pair_logits(
            user_first,
            side["history_rows"],
            torch.stack(pair_fields, dim=1),
            candidate,
            pair_user,
            pair_first,
        )

    def _queryrec_fields(
        self, side: dict[str, Tensor], named: dict[str, Tensor], target: Tensor
    ) -> tuple[list[Tensor], Tensor | None]:
        """The served QueryRec's per-pair fields after e_q * candidate (the attended query
        and its product with the candidate; the single graph only, `splits`) and what the
        match-count fields add to the head's first layer (N, M1) (None without counts)."""
        assert self.queryrec is not None
        pair_user = named["pair_user"]
        fields: list[Tensor] = []
        if self.search_attention is not None:
            inputs = _user_inputs(named)
            clicks = self.queryrec.query_clicks(inputs)
            valid = self.queryrec.slot_valid(inputs.query_tokens, clicks)  # (U, L)
            attended = self.search_attention(named["query_states"], valid, target, pair_user)
            fields += [attended, attended * target]
        if self.counts is None:
            return fields, None
        rows = self.counts.lookup(
            side["count_keys"], side["click_total"], pair_user, named["item"]
        )  # (N, FIELDS)
        return fields, F.embedding(rows, self.counts_first).sum(dim=1)  # (N, M1)

    def _probability(self, logits: Tensor) -> Tensor:
        if self.platt is None:  # the export: nothing extra traced into the graph
            return torch.sigmoid(logits)
        a, b = self.platt
        return torch.sigmoid(a * logits + b)


class CTRUserGraph(CTRGraph):
    """The split CTR graph's user side: `user_graph_inputs(model)` (U user rows) -> the
    `user_side_outputs(model)` tensors, all float32 (`CTRGraph.user_side`). Depends only
    on the user's history, profile and query vector: the service computes it once per
    history version and caches it beside the query vector. (A subclass, not a wrapper:
    the exporter resolves the weights by their paths in the module tree.)"""

    def __init__(self, model: CTRModel):
        super().__init__(model)
        self._require_split(model)
        self.names = user_graph_inputs(model)
        self.outputs = user_side_outputs(model)

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        side = self.user_side(dict(zip(self.names, tensors, strict=True)))
        return tuple(side[name] for name in self.outputs)


class CTRPairGraph(CTRGraph):
    """The split CTR graph's per-request side: the user side of `CTRUserGraph`, the
    query vector, the hour (U,) and the pairs -> P(click) (N,) float32
    (`CTRGraph.pair_logits`): `CTRPairGraph(CTRUserGraph(x))` == `CTRGraph(x)`."""

    def __init__(self, model: CTRModel, platt: tuple[float, float] | None = None):
        super().__init__(model, platt)
        self._require_split(model)
        self.names = pair_graph_inputs(model)
        self.side_names = user_side_outputs(model)

    def forward(self, *tensors: Tensor) -> Tensor:
        named = dict(zip(self.names, tensors, strict=True))
        side = {name: named[name] for name in self.side_names}
        return self._probability(self.pair_logits(side, named))


def _first_layer(backbone: nn.Module) -> nn.Linear:
    """The first layer of the backbone's CTR MLP (where fields with a linear share fold)."""
    net = cast(nn.Module, backbone.head).net
    assert isinstance(net, nn.Sequential)
    first = net[0]
    assert isinstance(first, nn.Linear)
    return first


def _user_inputs(named: dict[str, Tensor]) -> ModelInputs[Tensor]:
    """`ModelInputs` of the user rows among `named` (fields absent: empty stand-ins the
    graph never reads; no candidates)."""
    tokens = named["query_tokens"] if "query_tokens" in named else named["click_history"]
    empty = tokens.new_zeros((tokens.shape[0],))
    return ModelInputs(
        user=named.get("user", empty),
        hour=named.get("hour", empty),
        profile=named.get("profile", empty.unsqueeze(1)),
        click_history=named.get("click_history", empty.unsqueeze(1)),
        query_tokens=named.get("query_tokens", empty.view(-1, 1, 1)),
        query_age=named.get("query_age", empty.unsqueeze(1)),
        item=tokens.new_zeros((0,)),
        **cast(dict[str, Any], {name: named.get(name) for name in OPTIONAL_INPUTS}),
    )
