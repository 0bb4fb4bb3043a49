"""The diffusion CLI commands that span modules: `queryrec diffusion train` fits the model
(`train`) and, with the references, also the autoencoder and the quality table
(`quality`). Kept apart so that `train` never imports `quality`, which reads `train`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from queryrec.diffusion.quality import run_quality
from queryrec.diffusion.train import DiffusionModel, DiffusionTrainConfig, train_diffusion


def run_diffusion_train(
    data_dir: Path,
    out_dir: Path,
    cfg: DiffusionTrainConfig,
    references: bool,
    *,
    autoencoder: bool = True,
) -> DiffusionModel:
    """`queryrec diffusion train`: the model, and with `references` the quality table
    (OUT/results.json, RESULTS.md) against popular items, random items, display position
    and the category reference; with `autoencoder` too, the table also holds the same
    network trained without noise (OUT/autoencoder), which costs as much as the model."""
    model = train_diffusion(data_dir, out_dir, cfg)
    best = model.info["history"][model.info["best_epoch"] - 1]
    print(
        f"diffusion model in {out_dir}: {len(model.universe):,} items, best epoch "
        f"{model.info['best_epoch']}, held-out hidden-click recall@{cfg.k} {best['recall']:.4f}, "
        f"NDCG@{cfg.k} {best['ndcg']:.4f}"
    )
    if references:
        if autoencoder:
            train_diffusion(data_dir, Path(out_dir) / "autoencoder", replace(cfg, noise=False))
        print(run_quality(data_dir, out_dir, cfg.device))
    return model
