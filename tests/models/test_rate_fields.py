"""The "-stats" models: rate fields from the item table at evaluation and serving, from
the out-of-fold codes for training rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from queryrec.features.dataset import PreparedDataset
from queryrec.features.item_statistics import RATE_BUCKETS, rate_bucket_fields
from queryrec.features.model_inputs import ModelInputs
from queryrec.models.registry import build_model, model_config


def test_table_and_out_of_fold_codes_share_their_edges(tiny_data: Path) -> None:
    dataset = PreparedDataset(tiny_data)
    fields = rate_bucket_fields(dataset)
    train_items = dataset.samples("train")["item"].to_numpy()
    assert fields.table.shape == (dataset.schema["vocab_sizes"]["items"], 2)
    assert fields.train_rows.shape == (len(train_items), 2)
    for codes in (fields.table, fields.train_rows):
        assert codes.min() >= 1 and codes.max() <= RATE_BUCKETS
    # Out-of-fold codes move only where a row's own fold changes the rate: most agree.
    agree = (fields.train_rows == fields.table[train_items]).mean()
    assert 0.3 < agree < 1.0


def test_training_rows_read_their_out_of_fold_codes_only_for_the_candidate(
    tiny_data: Path,
) -> None:
    dataset = PreparedDataset(tiny_data)
    torch.manual_seed(0)
    model = build_model("din-stats", dataset, model_config("din-stats", dataset.schema))
    model.eval()
    b = 5
    item = torch.arange(2, 2 + b)
    inputs = ModelInputs(
        user=torch.arange(2, 2 + b),
        hour=torch.zeros(b, dtype=torch.long),
        profile=torch.ones(b, len(model.cfg.vocab.profile), dtype=torch.long),
        click_history=torch.randint(2, 10, (b, 4)),
        query_tokens=torch.zeros(b, 1, 2, dtype=torch.long),
        query_age=torch.zeros(b, 1, dtype=torch.long),
        item=item,
    )
    table = model.items.side_rates[item]
    with torch.no_grad():
        plain = model.forward_with_query(inputs).logits
        same = model.forward_with_query(inputs.replace(candidate_rate_codes=table)).logits
        other = table % RATE_BUCKETS + 1  # every code changed
        moved = model.forward_with_query(inputs.replace(candidate_rate_codes=other)).logits
        # Evaluation and serving read the table: `score` without training codes.
        torch.testing.assert_close(model.score(inputs), plain)
    torch.testing.assert_close(same, plain)
    assert not torch.allclose(moved, plain)
    assert model.wanted_training_inputs() == ("candidate_rate_codes",)
    assert np.array_equal(table.numpy(), rate_bucket_fields(dataset).table[item.numpy()])
