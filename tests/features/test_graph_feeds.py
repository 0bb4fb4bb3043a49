"""`graph_feeds.cut_history_padding`: the split pair graph's history rows without the left
padding that no user row of the batch needs."""

from __future__ import annotations

import numpy as np

from queryrec.features.graph_feeds import cut_history_padding


def rows_and_history(clicks: list[int], horizon: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """History rows (U, H, 3) numbered by position, and left-padded click histories."""
    history = np.zeros((len(clicks), horizon), dtype=np.int64)
    for u, count in enumerate(clicks):
        history[u, horizon - count :] = 7 if count else 0
    rows = np.arange(len(clicks) * horizon * 3, dtype=np.float32).reshape(len(clicks), horizon, 3)
    return rows, history


def test_the_longest_history_of_the_batch_is_kept() -> None:
    rows, history = rows_and_history([2, 4, 0])
    cut = cut_history_padding(rows, history)
    assert cut.shape == (3, 4, 3)
    np.testing.assert_array_equal(cut, rows[:, 2:])
    assert cut.flags.c_contiguous  # fed to ONNX Runtime as is


def test_a_batch_without_any_click_keeps_one_row() -> None:
    rows, history = rows_and_history([0, 0])
    np.testing.assert_array_equal(cut_history_padding(rows, history), rows[:, -1:])


def test_a_full_history_is_not_cut() -> None:
    rows, history = rows_and_history([6])
    np.testing.assert_array_equal(cut_history_padding(rows, history), rows)
