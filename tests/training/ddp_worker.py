"""Run under torchrun by test_ddp.py: train briefly, then save this rank's weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from queryrec.features.dataset import PreparedDataset
from queryrec.models.registry import build_model, model_config
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
    )
    dataset = PreparedDataset(data)
    torch.manual_seed(cfg.seed)  # the initial weights, as fit() draws them
    initial = build_model(cfg.model, dataset, model_config(cfg.model, dataset.schema))
    model, _, _, _ = fit(dataset, cfg)
    rank = os.environ["RANK"]
    torch.save(model.state_dict(), out / f"rank{rank}.pt")
    torch.save(initial.state_dict(), out / f"initial{rank}.pt")
    shutdown_distributed()


if __name__ == "__main__":
    main()
