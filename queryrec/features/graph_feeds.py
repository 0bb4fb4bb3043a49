"""A bundle graph's feed from `ModelInputs`, by input name (torch-free).

Every input of `query_encoder.onnx` and `ctr.onnx` is a `ModelInputs` field of the same
name or an output of the encoder graph (`query_repr`, `query_states`); the manifest lists
each graph's inputs in order (`export.bundle` writes them, `export.graphs` defines them).
The service (many requests per call), offline scoring of a bundle and the parity check
build their feeds here, so the layout is written once:
- the CTR graph takes U user rows and N flat (user row, item) pairs; `pair_user` None
  (one candidate per row, a training-style batch) is fed as 0..N-1;
- ids are int64, encoder outputs float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from queryrec.features.model_inputs import ModelInputs

ENCODER_OUTPUTS = ("query_repr", "query_states")
"""The encoder outputs a CTR graph may take as inputs."""
USER_SIDE = ("user_first", "history_rows", "count_keys", "click_total")
"""The split CTR graph's user side (`export.graphs.CTRUserGraph` outputs, all float32),
inputs of its pair graph."""
COMPUTED_INPUTS = (*ENCODER_OUTPUTS, *USER_SIDE)
"""Graph inputs that another graph computes (float32), not `ModelInputs` fields."""


def graph_feed(
    names: Sequence[str],
    inputs: ModelInputs[np.ndarray],
    encoded: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The feed of a graph whose inputs are `names`: each from `encoded` (what another
    graph computed for the same user rows: the encoder's outputs, the split CTR graph's
    user side) or the `ModelInputs` field of that name."""
    feed: dict[str, np.ndarray] = {}
    for name in names:
        if name in COMPUTED_INPUTS:
            if encoded is None or name not in encoded:
                raise ValueError(f"the graph reads the computed input {name!r}, not given")
            # np.asarray: no copy when the dtype is already right (this runs per batch)
            feed[name] = np.asarray(encoded[name], dtype=np.float32)
            continue
        value = getattr(inputs, name, None)
        if name == "pair_user" and value is None:
            value = np.arange(inputs.batch_size, dtype=np.int64)
        if value is None:
            raise ValueError(f"the graph reads the input {name!r}, which these inputs lack")
        feed[name] = np.asarray(value, dtype=np.int64)
    return feed


def cut_history_padding(history_rows: np.ndarray, click_history: np.ndarray) -> np.ndarray:
    """The split CTR graph's `history_rows` (U, H, d + 1) of user rows whose left-padded
    click histories are `click_history` (U, H) -> (U, k, d + 1): the last k rows, k the
    longest click history among them (at least 1). A padding row adds nothing to the
    pooled interest (its vector part is zero), and the activation unit's per-pair work
    grows with the rows fed, so the pair graph takes only these (its H axis is dynamic)."""
    clicks = max(1, int(np.count_nonzero(click_history, axis=1).max(initial=0)))
    return np.ascontiguousarray(history_rows[:, history_rows.shape[1] - clicks :])
