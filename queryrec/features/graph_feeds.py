"""The bundle graphs' input layouts, built from model inputs (torch-free).

`query_encoder.onnx` takes a batch of query histories; `ctr.onnx` takes U user rows and
N flat (user row, item) pairs (`export.bundle` writes the layout into the manifest). The
service (many requests per call) and offline scoring of a bundle (one pair per sample)
both build their feeds here, so the layout is written once.
"""

from __future__ import annotations

import numpy as np

from queryrec.features.model_inputs import trim_query_columns


def encoder_feed(query_tokens: np.ndarray, query_age: np.ndarray) -> dict[str, np.ndarray]:
    """(B, L, T) word indices and (B, L) age buckets -> the encoder's inputs, with the
    slots that are empty in the whole batch cut off (`trim_query_columns`)."""
    tokens, ages = trim_query_columns(query_tokens, query_age)
    return {"query_tokens": tokens, "query_age": ages}


def ctr_feed(
    user: np.ndarray,
    hour: np.ndarray,
    profile: np.ndarray,
    click_history: np.ndarray,
    pair_user: np.ndarray,
    item: np.ndarray,
    query_repr: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """User rows (U,), (U,), (U, P), (U, H), pairs (N,) user row of each pair and (N,)
    candidate items, and the rows' query vectors (U, d) (None: a model without a query
    tower) -> the CTR graph's inputs."""
    # np.asarray: no copy when the dtype is already right (this runs per CTR batch)
    feed = {
        "user": np.asarray(user, dtype=np.int64),
        "hour": np.asarray(hour, dtype=np.int64),
        "profile": np.asarray(profile, dtype=np.int64),
        "click_history": np.asarray(click_history, dtype=np.int64),
        "pair_user": np.asarray(pair_user, dtype=np.int64),
        "item": np.asarray(item, dtype=np.int64),
    }
    if query_repr is not None:
        feed = {"query_repr": np.asarray(query_repr, dtype=np.float32), **feed}
    return feed
