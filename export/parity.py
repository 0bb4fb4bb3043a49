"""ONNX Runtime vs PyTorch on freshly drawn inputs, at shapes other than the export example.

The reference is the trained `CTRModel` itself (not the export wrappers), so the check
covers both the exporter and the serving re-arrangement in `export.graphs`. Inputs are
drawn as one `ModelInputs` (`draw_inputs`) and fed to the graphs by name
(`graph_feeds.graph_feed`), so this is also the round trip of the one input type through
export:
- encoder: ORT `query_encoder.onnx` vs the model's query side (`query_representation`,
  and the SAS states of the served QueryRec), for batches of 1, 3, 37 and 128 users with
  random history lengths (left padding), query lengths, ages and clicked results;
- CTR: ORT `ctr.onnx` on (users, pairs) vs `CTRModel.score` on the same inputs (which
  gathers each pair's user row), for 1, 7, 100 and 500 candidates over 1 or 3 users, the
  first user row without any click and every third candidate the unknown item;
- the split CTR graph, when exported: ORT `ctr_pair.onnx` fed the outputs of ORT
  `ctr_user.onnx` vs the same `CTRModel.score`, on the same cases.
Any max abs difference above the tolerance fails the export with the place it happened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from export.graphs import (
    ctr_inputs,
    encoder_inputs,
    encoder_outputs,
    pair_graph_inputs,
    user_graph_inputs,
)
from queryrec.errors import QueryRecError
from queryrec.evaluation.bundle_scoring import GraphSession
from queryrec.features.graph_feeds import cut_history_padding, graph_feed
from queryrec.features.model_inputs import ModelInputs
from queryrec.models.ctr_model import CTRModel
from queryrec.models.queryrec_model import QueryRecModel

ENCODER_BATCHES = (1, 3, 37, 128)
CTR_CANDIDATES = (1, 7, 100, 500)
TOLERANCE = 1e-5


class ParityError(QueryRecError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance."""


@dataclass(frozen=True)
class ParityCase:
    graph: str
    shape: str
    max_abs_diff: float

    def as_dict(self) -> dict[str, object]:
        return {"graph": self.graph, "shape": self.shape, "max_abs_diff": self.max_abs_diff}


def draw_inputs(
    model: CTRModel, users: int, pairs: int, rng: np.random.Generator
) -> ModelInputs[np.ndarray]:
    """Random `ModelInputs` of `users` rows and `pairs` candidates with every input the
    model reads: left-padded click and query histories of random lengths (some users with
    none), queries of 1..T words, some without words, clicked results on some searches,
    ages and minutes on the valid slots only."""
    cfg, v = model.cfg, model.cfg.vocab
    length, tokens, horizon = cfg.query_history, cfg.query_tokens, cfg.click_history
    kept = rng.integers(0, horizon + 1, size=users)
    click_ok = np.arange(horizon)[None, :] >= (horizon - kept)[:, None]  # (U, H)
    history = np.where(click_ok, rng.integers(1, v.items, size=(users, horizon)), 0)
    counts = rng.integers(0, length + 1, size=users)  # searches per user, some with none
    slot_ok = np.arange(length)[None, :] >= (length - counts)[:, None]  # (U, L)
    word_counts = rng.integers(0, tokens + 1, size=(users, length, 1))  # 0: a wordless search
    word_ok = slot_ok[..., None] & (np.arange(tokens)[None, None, :] < word_counts)
    words = rng.integers(1, v.words, size=(users, length, tokens))
    per_query = cfg.query_clicks
    click_counts = rng.integers(0, per_query + 1, size=(users, length, 1))
    clicked_ok = slot_ok[..., None] & (np.arange(per_query)[None, None, :] < click_counts)
    clicked = rng.integers(1, v.items, size=(users, length, per_query))
    has_clicks = clicked_ok.any(axis=-1)
    optional: dict[str, np.ndarray] = {
        "query_clicks": np.where(clicked_ok, clicked, 0),
        # clicked, or (some of the slots with results) pseudo-positives
        "query_click_source": np.where(has_clicks, 1 + (rng.random((users, length)) < 0.3), 0),
        "query_minutes": np.where(slot_ok, rng.integers(0, 20_000, size=(users, length)), 0),
        "click_minutes": np.where(click_ok, rng.integers(0, 20_000, size=(users, horizon)), 0),
    }
    return ModelInputs(
        user=rng.integers(1, v.users, size=users),
        hour=rng.integers(0, 24, size=users),
        profile=np.stack([rng.integers(0, n, size=users) for n in v.profile], axis=1),
        click_history=history.astype(np.int64),
        query_tokens=np.where(word_ok, words, 0).astype(np.int64),
        query_age=np.where(slot_ok, rng.integers(1, 10, size=(users, length)), 0),
        item=rng.integers(1, v.items, size=pairs),
        pair_user=np.sort(rng.integers(0, users, size=pairs)),
    ).replace(
        **{name: value.astype(np.int64) for name, value in optional.items() if name in model.reads}
    )


def encoder_reference(model: CTRModel, inputs: ModelInputs[torch.Tensor]) -> dict[str, np.ndarray]:
    """What the encoder graph must output for `inputs`, by output name."""
    if isinstance(model, QueryRecModel):
        user = model.user_side(inputs)
        every = {"query_repr": user.query.numpy(), "query_states": user.states.numpy()}
        return {name: every[name] for name in encoder_outputs(model)}
    return {"query_repr": model.query_representation(inputs).numpy()}


def check_parity(
    model: CTRModel,
    encoder: GraphSession | None,
    ctr: GraphSession,
    *,
    seed: int = 1234,
    tolerance: float = TOLERANCE,
    platt: tuple[float, float] | None = None,
    split: tuple[GraphSession, GraphSession] | None = None,
) -> list[ParityCase]:
    """Run every case; raise ParityError naming the worst one if any exceeds `tolerance`.

    `platt` (a, b): the CTR graph is calibrated (`export.calibration`), so the model's
    probability is compared as sigmoid(a * logit + b). `split`: the sessions of
    ctr_user.onnx and ctr_pair.onnx, checked on the same cases."""
    a, b = platt if platt is not None else (1.0, 0.0)
    rng = np.random.default_rng(seed)
    model.eval()
    cases: list[ParityCase] = []
    outputs = encoder_outputs(model)
    with torch.no_grad():
        if encoder is not None:
            for users in ENCODER_BATCHES:
                inputs = draw_inputs(model, users, 1, rng)
                want = encoder_reference(model, inputs.map(torch.from_numpy))
                got = encoder.run(None, graph_feed(encoder_inputs(model), inputs))
                for name, value in zip(outputs, got, strict=True):
                    cases.append(_case("query_encoder", f"{name} users={users}", want[name], value))
        for pairs in CTR_CANDIDATES:
            for users in (1, 3):
                inputs = _with_empty_history_and_unknown_items(
                    draw_inputs(model, users, pairs, rng)
                )
                tensors = inputs.map(torch.from_numpy)
                expected = torch.sigmoid(a * model.score(tensors) + b).numpy()
                encoded = encoder_reference(model, tensors) if outputs else {}
                single = ctr.run(None, graph_feed(ctr_inputs(model), inputs, encoded))[0]
                shape = f"users={users} pairs={pairs}"
                cases.append(_case("ctr", shape, expected, single))
                if split is not None:
                    pair = run_split(model, *split, inputs, encoded)
                    cases.append(_case("ctr_user+ctr_pair", shape, expected, pair))
    worst = max(cases, key=lambda c: c.max_abs_diff)
    if not worst.max_abs_diff <= tolerance:  # also catches NaN
        raise ParityError(
            f"parity check failed: {worst.graph} at {worst.shape}: ONNX Runtime differs from "
            f"PyTorch by {worst.max_abs_diff:.3g} (tolerance {tolerance:g})"
        )
    return cases


def run_split(
    model: CTRModel,
    user: GraphSession,
    pair: GraphSession,
    inputs: ModelInputs[np.ndarray],
    encoded: dict[str, np.ndarray],
) -> np.ndarray:
    """P(click) per pair from the split CTR graph: ctr_user.onnx, then ctr_pair.onnx on
    the history rows cut as the service cuts them (`cut_history_padding`)."""
    names = [o for o in pair_graph_inputs(model) if o not in ("hour", "pair_user", "item")]
    side_names = [n for n in names if n not in encoded]
    side = user.run(side_names, graph_feed(user_graph_inputs(model), inputs, encoded))
    computed = {**encoded, **dict(zip(side_names, side, strict=True))}
    computed["history_rows"] = cut_history_padding(computed["history_rows"], inputs.click_history)
    return np.asarray(pair.run(None, graph_feed(pair_graph_inputs(model), inputs, computed))[0])


def _with_empty_history_and_unknown_items(
    inputs: ModelInputs[np.ndarray],
) -> ModelInputs[np.ndarray]:
    """The first user row without any click (its searches kept) and every third
    candidate the unknown item (index 1)."""
    history = inputs.click_history.copy()
    history[0] = 0
    item = inputs.item.copy()
    item[::3] = 1
    return inputs.replace(click_history=history, item=item)


def _case(graph: str, shape: str, want: np.ndarray, got: np.ndarray) -> ParityCase:
    if want.shape != got.shape:
        raise ParityError(
            f"parity check failed: {graph} at {shape}: shape {got.shape} != {want.shape}"
        )
    diff = float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64)), initial=0.0))
    if not np.isfinite(got).all():
        diff = float("nan")
    return ParityCase(graph, shape, diff)
