"""Length-bucketed batches, and the cut of empty query columns that makes them pay off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from queryrec.features.dataset import PreparedDataset
from queryrec.models.registry import build_model, model_config
from queryrec.training.batch_order import bucketed_batches, split_for_ranks
from queryrec.training.batches import BatchBuilder
from queryrec.training.objective import to_tensors


def test_every_sample_once_and_batches_bucketed() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 21, size=10_000)
    order = rng.permutation(10_000)[:9_500]
    batches = bucketed_batches(order, lengths, 100, np.random.default_rng(1), chunk_batches=10)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.sort(order))
    assert max(len(b) for b in batches) == 100
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 3  # a uniformly shuffled batch of 100 spans nearly all of 0..20
    again = bucketed_batches(order, lengths, 100, np.random.default_rng(1), chunk_batches=10)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))


def test_ranks_share_every_row_once_in_lock_step() -> None:
    # The 1-row batch is fewer rows than ranks: merged into the batch before it.
    batches = [np.arange(10), np.arange(10, 17), np.arange(17, 18)]
    shares = [split_for_ranks(batches, rank, 2) for rank in range(2)]
    assert [len(b) for b in shares[0]] == [5, 4]
    assert [len(b) for b in shares[1]] == [5, 4]
    together = np.concatenate([np.concatenate(s) for s in shares])
    np.testing.assert_array_equal(np.sort(together), np.arange(18))


def test_three_ranks_shares_differ_by_at_most_one_row() -> None:
    batches = [np.arange(7), np.arange(7, 9)]  # 2 rows < 3 ranks: merged
    shares = [split_for_ranks(batches, rank, 3) for rank in range(3)]
    assert [len(s) for s in shares] == [1, 1, 1]
    assert sorted(len(s[0]) for s in shares) == [3, 3, 3]
    together = np.concatenate([s[0] for s in shares])
    np.testing.assert_array_equal(np.sort(together), np.arange(9))


@pytest.mark.parametrize("name", ["queryrec-paper", "queryrec"])
def test_cutting_empty_query_columns_changes_no_output(name: str, tiny_data: Path) -> None:
    dataset = PreparedDataset(tiny_data)
    cfg = model_config(name, dataset.schema)
    torch.manual_seed(0)
    model = build_model(name, dataset, cfg).eval()
    builder = BatchBuilder(dataset, cfg.history_lengths, reads=model.reads)
    arrays = builder.split_arrays("test", with_aux=False)
    rows = np.argsort(arrays.query_count)[:300]  # short histories: most columns empty
    inputs = to_tensors(builder.build(arrays, rows), torch.device("cpu")).inputs
    cut = inputs.query_tokens.shape[1]
    assert 1 <= cut < cfg.query_history
    pad = cfg.query_history - cut
    # Every per-slot input is cut together; padded back in front, nothing changes.
    full = inputs.replace(
        query_tokens=torch.nn.functional.pad(inputs.query_tokens, (0, 0, pad, 0)),
        query_age=torch.nn.functional.pad(inputs.query_age, (pad, 0)),
    )
    if inputs.query_clicks is not None:
        assert inputs.query_clicks.shape[1] == cut
        full = full.replace(
            query_clicks=torch.nn.functional.pad(inputs.query_clicks, (0, 0, pad, 0))
        )
    if inputs.query_click_source is not None:
        assert inputs.query_click_source.shape[1] == cut
        full = full.replace(
            query_click_source=torch.nn.functional.pad(inputs.query_click_source, (pad, 0))
        )
    with torch.no_grad():
        short, padded = model(inputs), model(full)
    torch.testing.assert_close(short, padded, atol=1e-6, rtol=0)
