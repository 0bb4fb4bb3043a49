"""Run under torchrun by test_ddp.py: train briefly (sparse embedding updates, gloo), then
save this rank's weights and the rows of two full epochs' batches as this rank draws them."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from queryrec.features.dataset import PreparedDataset
from queryrec.models.registry import build_model, model_config
from queryrec.training.batch_order import epoch_batches
from queryrec.training.batches import BatchBuilder
from queryrec.training.config import TrainConfig
from queryrec.training.distributed import shutdown_distributed
from queryrec.training.loop import fit


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = TrainConfig(
        model="queryrec",
        epochs=2,
        patience=2,
        batch_size=256,
        max_train_samples=2048,
        progress=False,
        device="cpu",
        # `tiny` has about 1,600 items: below the default threshold no table is sparse.
        sparse_min_rows=1_000,
    )
    dataset = PreparedDataset(data)
    torch.manual_seed(cfg.seed)  # the initial weights, as fit() draws them
    initial = build_model(cfg.model, dataset, model_config(cfg.model, dataset.schema))
    model, _, _, _ = fit(dataset, cfg)
    rank = os.environ["RANK"]
    sparse = sorted(n for n, m in model.named_modules() if getattr(m, "sparse", False))
    (out / f"sparse{rank}.json").write_text(json.dumps(sparse))
    torch.save(model.state_dict(), out / f"rank{rank}.pt")
    torch.save(initial.state_dict(), out / f"initial{rank}.pt")
    # The loop's sharding over whole epochs of the training split (no cap), as fit draws it.
    model_cfg = model_config(cfg.model, dataset.schema)
    builder = BatchBuilder(dataset, model_cfg.history_lengths)
    lengths = builder.split_arrays("train", with_aux=False).query_count
    order_rng = np.random.default_rng(cfg.seed)
    world = int(os.environ["WORLD_SIZE"])
    epochs = [epoch_batches(order_rng, lengths, 100, int(rank), world) for _ in range(2)]
    steps = [len(epoch) for epoch in epochs]
    np.savez(out / f"shards{rank}.npz", *[np.concatenate(e) for e in epochs], steps=steps)
    shutdown_distributed()


if __name__ == "__main__":
    main()
