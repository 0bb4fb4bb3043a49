"""ONNX Runtime vs PyTorch on freshly drawn inputs, at shapes other than the export example.

The reference is the trained `CTRModel` itself (not the export wrappers), so the check
covers both the exporter and the serving re-arrangement in `export.graphs`:
- encoder: ORT `query_encoder.onnx` vs `CTRModel.query_representation`, for batches of
  1, 3, 37 and 128 users with random history lengths (left padding), query lengths and
  age buckets;
- CTR: ORT `ctr.onnx` on (users, pairs) vs `CTRModel.forward` on the pairs expanded to
  one row each, for 1, 7, 100 and 500 candidates spread over 1 or 3 users.
Any max abs difference above the tolerance fails the export with the place it happened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from queryrec.errors import QueryRecError
from queryrec.evaluation.bundle_scoring import GraphSession
from queryrec.models.ctr_model import CTRModel

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


def draw_query_histories(
    model: CTRModel, users: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random left-padded histories: (users, L, T) word indices, (users, L) age buckets."""
    cfg = model.cfg
    length, tokens = cfg.query_history, cfg.query_tokens
    counts = rng.integers(0, length + 1, size=users)  # queries per user, some with none
    words = rng.integers(1, cfg.vocab.words, size=(users, length, tokens))
    word_counts = rng.integers(1, tokens + 1, size=(users, length, 1))
    valid = np.arange(length)[None, :] >= (length - counts)[:, None]  # (users, L)
    word_ok = valid[..., None] & (np.arange(tokens)[None, None, :] < word_counts)
    ages = np.where(valid, rng.integers(1, 10, size=(users, length)), 0)
    return np.where(word_ok, words, 0).astype(np.int64), ages.astype(np.int64)


def draw_ctr_inputs(
    model: CTRModel, users: int, pairs: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random user rows and pairs in the CTR graph's layout (without the query input); the
    profile rows are the users' own (features/users.parquet), as the service sends them."""
    cfg, v = model.cfg, model.cfg.vocab
    history = rng.integers(1, v.items, size=(users, cfg.click_history))
    kept = rng.integers(0, cfg.click_history + 1, size=users)
    history[np.arange(cfg.click_history)[None, :] < (cfg.click_history - kept)[:, None]] = 0
    user = rng.integers(1, v.users, size=users)
    return {
        "user": user,
        "hour": rng.integers(0, 24, size=users),
        # The model reads a user's profile from its table; the graph takes it as input.
        "profile": model.user_profile[torch.from_numpy(user)].numpy(),
        "click_history": history,
        "pair_user": np.sort(rng.integers(0, users, size=pairs)),
        "item": rng.integers(1, v.items, size=pairs),
    }


def check_parity(
    model: CTRModel,
    encoder: GraphSession | None,
    ctr: GraphSession,
    *,
    seed: int = 1234,
    tolerance: float = TOLERANCE,
    platt: tuple[float, float] | None = None,
) -> list[ParityCase]:
    """Run every case; raise ParityError naming the worst one if any exceeds `tolerance`.

    `platt` (a, b): the CTR graph is calibrated (`export.calibration`), so the model's
    probability is compared as sigmoid(a * logit + b)."""
    a, b = platt if platt is not None else (1.0, 0.0)
    rng = np.random.default_rng(seed)
    model.eval()
    cases: list[ParityCase] = []
    with torch.no_grad():
        if encoder is not None:
            for users in ENCODER_BATCHES:
                tokens, ages = draw_query_histories(model, users, rng)
                want = model.query_representation(torch.from_numpy(tokens), torch.from_numpy(ages))
                got = encoder.run(None, {"query_tokens": tokens, "query_age": ages})[0]
                cases.append(_case("query_encoder", f"users={users}", want.numpy(), got))
        for pairs in CTR_CANDIDATES:
            for users in (1, 3):
                feed = draw_ctr_inputs(model, users, pairs, rng)
                tokens, ages = draw_query_histories(model, users, rng)
                rows = feed["pair_user"]
                expected = torch.sigmoid(
                    a
                    * model(
                        torch.from_numpy(feed["user"][rows]),
                        torch.from_numpy(feed["item"]),
                        torch.from_numpy(feed["hour"][rows]),
                        torch.from_numpy(feed["click_history"][rows]),
                        torch.from_numpy(tokens[rows]),
                        torch.from_numpy(ages[rows]),
                    )
                    + b
                ).numpy()
                if model.cfg.use_query:
                    query = model.query_representation(
                        torch.from_numpy(tokens), torch.from_numpy(ages)
                    )
                    feed = {"query_repr": query.numpy(), **feed}
                got = ctr.run(None, feed)[0]
                cases.append(_case("ctr", f"users={users} pairs={pairs}", expected, got))
    worst = max(cases, key=lambda c: c.max_abs_diff)
    if not worst.max_abs_diff <= tolerance:  # also catches NaN
        raise ParityError(
            f"parity check failed: {worst.graph} at {worst.shape}: ONNX Runtime differs from "
            f"PyTorch by {worst.max_abs_diff:.3g} (tolerance {tolerance:g})"
        )
    return cases


def _case(graph: str, shape: str, want: np.ndarray, got: np.ndarray) -> ParityCase:
    if want.shape != got.shape:
        raise ParityError(
            f"parity check failed: {graph} at {shape}: shape {got.shape} != {want.shape}"
        )
    diff = float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64))))
    if not np.isfinite(got).all():
        diff = float("nan")
    return ParityCase(graph, shape, diff)
