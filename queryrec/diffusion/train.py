"""`queryrec diffusion train`: fit the denoiser on training-split queries that have clicks.

What is noised (a choice, stated): DiffRec noises x0 itself and reads the denoiser's
output on items the input did not have. Here the input a click-less query brings at
augmentation is -1 on every shown item and nothing else, which says nothing about which
item its user would have clicked; a denoiser trained only on full x0 (clicks visible)
then ranks shown items no better than chance (held-out recall@4 0.69 vs random 0.70 on
`small`). So the forward process noises the click-less view of each training query
(`hide_clicks`, clicks encoded as shown-not-clicked) and the target stays the full x0:
the denoiser learns p(x0 | noisy click-less view), i.e. what a click-less query's user
would have clicked, which is exactly what augmentation asks of it.

Data: search sessions of the training split (ts < valid start) with at least one click;
a seeded `holdout` share of them is kept aside for validation: every epoch, their clicks
are hidden (encoded as if click-less) and the reconstruction ranks each session's shown
items; recall@K of the hidden clicks picks the best epoch. The same recipe without noise
(x_t = x0 at t = 0) trains the autoencoder reference of the quality table.

Output folder: `denoiser.pt` (weights), `universe.npy` (item indices of the columns),
`diffusion.json` (configs, dataset schema hash, per-epoch metrics, best epoch).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from queryrec.diffusion.denoiser import Denoiser, DenoiserConfig
from queryrec.diffusion.sampler import reconstruct, training_loss
from queryrec.diffusion.schedule import DiffusionSchedule, ScheduleConfig
from queryrec.diffusion.x0 import ItemUniverse, build_x0, clicked_lists, sessions_in, shown_mask
from queryrec.errors import QueryRecError
from queryrec.features.dataset import PreparedDataset

MODEL_FILE, UNIVERSE_FILE, CONFIG_FILE = "denoiser.pt", "universe.npy", "diffusion.json"


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """What `diffusion train` fits and how."""

    max_items: int = 4096  # universe size (x0 width)
    hidden: tuple[int, ...] = (1000,)  # DiffRec's width; 256 peaked below popularity
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 25
    batch_size: int = 256
    learning_rate: float = 1e-3
    holdout: float = 0.1  # share of clicked training sessions kept for validation
    k: int = 4  # positives per query (the L_cl K) and the @K of the metrics
    noise: bool = True  # False: the plain autoencoder reference
    hide_clicks: bool = True  # noise the click-less view of x0, predict x0 itself
    seed: int = 0
    device: str = "auto"
    progress: bool = True


@dataclass
class DiffusionModel:
    """A trained denoiser with everything needed to use it."""

    schedule: DiffusionSchedule
    denoiser: Denoiser
    universe: ItemUniverse
    info: dict[str, Any]

    def scores(self, x0: np.ndarray, device: torch.device) -> np.ndarray:
        """x0 (B, U) -> x̃0 (B, U): the reverse process from x0 (DiffRec's inference),
        or the autoencoder's single pass when trained without noise."""
        x = torch.from_numpy(x0).to(device)
        if not self.info["train"]["noise"]:
            self.denoiser.eval()
            with torch.no_grad():
                return (
                    self.denoiser(x, torch.zeros(len(x0), dtype=torch.long, device=device))
                    .cpu()
                    .numpy()
                )
        return reconstruct(self.schedule, self.denoiser, x, start_step=0).cpu().numpy()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def split_sessions(
    dataset: PreparedDataset, holdout: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Clicked training-split sessions -> (fit rows, held-out rows)."""
    valid_start = int(dataset.schema["split"]["valid_start_ms"])
    clicked = sessions_in(dataset, 0, valid_start, clicked=True)
    order = np.random.default_rng(seed).permutation(len(clicked))
    cut = round(len(clicked) * holdout)
    return np.sort(clicked[order[cut:]]), np.sort(clicked[order[:cut]])


def train_diffusion(data_dir: Path, out_dir: Path, cfg: DiffusionTrainConfig) -> DiffusionModel:
    dataset = PreparedDataset(data_dir)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    fit_rows, held_out = split_sessions(dataset, cfg.holdout, cfg.seed)
    if len(fit_rows) == 0 or len(held_out) == 0:
        raise QueryRecError(f"{data_dir}: too few clicked search sessions in the training split")
    valid_start = int(dataset.schema["split"]["valid_start_ms"])
    every = np.flatnonzero(dataset.search_ts < valid_start)
    universe = ItemUniverse.most_shown(dataset, every, cfg.max_items)
    schedule = DiffusionSchedule(cfg.schedule)
    denoiser = Denoiser(DenoiserConfig(items=len(universe), hidden=cfg.hidden)).to(device)
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=cfg.learning_rate)
    rng = np.random.default_rng(cfg.seed)
    model = DiffusionModel(schedule, denoiser, universe, {"train": {"noise": cfg.noise}})
    history: list[dict[str, float]] = []
    best, best_epoch, best_state = -1.0, 0, None
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        denoiser.train()
        order = rng.permutation(fit_rows)
        losses = []
        bar = tqdm(
            range(0, len(order), cfg.batch_size),
            desc=f"diffusion epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
        )
        for lo in bar:
            rows = order[lo : lo + cfg.batch_size]
            x0 = torch.from_numpy(build_x0(dataset, universe, rows, hide_clicks=False)).to(device)
            view = x0
            if cfg.hide_clicks:
                hidden = build_x0(dataset, universe, rows, hide_clicks=True)
                view = torch.from_numpy(hidden).to(device)
            if cfg.noise:
                loss = training_loss(schedule, denoiser, x0, observed=view)
            else:
                t0 = torch.zeros(len(x0), dtype=torch.long, device=device)
                loss = F.mse_loss(denoiser(view, t0), x0)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(float(loss.detach()))
        metrics = hidden_click_metrics(
            dataset, universe, held_out, cfg.k, lambda x0, _: model.scores(x0, device)
        )
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **metrics})
        if cfg.progress:
            print(
                f"diffusion epoch {epoch + 1}: loss {np.mean(losses):.5f}, held-out recall@{cfg.k} {metrics['recall']:.4f}"
            )
        if metrics["recall"] > best:
            best, best_state = (
                metrics["recall"],
                {k: v.detach().clone() for k, v in denoiser.state_dict().items()},
            )
            best_epoch = epoch + 1
    assert best_state is not None
    denoiser.load_state_dict(best_state)
    clicks = clicked_lists(dataset, universe, fit_rows)
    total = int(sum(dataset.clicked_offsets[r + 1] - dataset.clicked_offsets[r] for r in fit_rows))
    info = {
        "schema_hash": dataset.content_hash,
        "data_dir": str(Path(data_dir).resolve()),
        "train": {**asdict(cfg), "noise": cfg.noise},
        "universe_items": len(universe),
        "clicks_in_universe": sum(len(c) for c in clicks) / max(total, 1),
        "fit_sessions": len(fit_rows),
        "held_out_sessions": len(held_out),
        "history": history,
        "best_epoch": best_epoch,
        "seconds": time.perf_counter() - start,
    }
    model.info = info
    save_model(model, out_dir)
    return model


def hidden_click_metrics(
    dataset: PreparedDataset,
    universe: ItemUniverse,
    sessions: np.ndarray,
    k: int,
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> dict[str, float]:
    """Clicks hidden (x0 as if click-less), each session's shown items ranked by
    `score(x0 (B, U), session rows (B,)) -> (B, U)`: mean recall@K and NDCG@K of the
    hidden clicks."""
    recalls, ndcgs = [], []
    for lo in range(0, len(sessions), 1024):
        rows = sessions[lo : lo + 1024]
        x0 = build_x0(dataset, universe, rows, hide_clicks=True)
        scores = score(x0, rows)
        shown = shown_mask(dataset, universe, rows)
        for i, truth in enumerate(clicked_lists(dataset, universe, rows)):
            candidates = np.flatnonzero(shown[i])
            if len(truth) == 0 or len(candidates) == 0:
                continue
            top = candidates[np.argsort(-scores[i, candidates], kind="stable")[:k]]
            hits = np.isin(top, truth)
            recalls.append(hits.sum() / len(truth))
            gains = (hits / np.log2(np.arange(2, len(top) + 2))).sum()
            ideal = (1 / np.log2(np.arange(2, min(len(truth), k) + 2))).sum()
            ndcgs.append(gains / ideal)
    return {
        "recall": float(np.mean(recalls)),
        "ndcg": float(np.mean(ndcgs)),
        "sessions": float(len(recalls)),
    }


def save_model(model: DiffusionModel, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.denoiser.state_dict(), out_dir / MODEL_FILE)
    model.universe.save(out_dir / UNIVERSE_FILE)
    info = {
        **model.info,
        "schedule": asdict(model.schedule.config),
        "hidden": list(model.denoiser.config.hidden),
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")


def load_model(model_dir: Path, dataset: PreparedDataset, device: torch.device) -> DiffusionModel:
    """A saved model; QueryRecError when it was trained on another dataset."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise QueryRecError(
            f"{model_dir}: no {CONFIG_FILE} (is it a 'queryrec diffusion train' output?)"
        )
    info = json.loads(path.read_text())
    if info["schema_hash"] != dataset.content_hash:
        raise QueryRecError(
            f"{model_dir}: trained on dataset {info['schema_hash'][:12]}, not on {dataset.root} "
            f"({dataset.content_hash[:12]})"
        )
    universe = ItemUniverse.load(
        model_dir / UNIVERSE_FILE, int(dataset.schema["vocab_sizes"]["items"])
    )
    denoiser = Denoiser(DenoiserConfig(items=len(universe), hidden=tuple(info["hidden"])))
    denoiser.load_state_dict(torch.load(model_dir / MODEL_FILE, map_location="cpu"))
    schedule = DiffusionSchedule(ScheduleConfig(**info["schedule"]))
    return DiffusionModel(schedule, denoiser.to(device), universe, info)


def run_diffusion_train(
    data_dir: Path,
    out_dir: Path,
    epochs: int,
    max_items: int,
    k: int,
    seed: int,
    device: str,
    references: bool,
) -> DiffusionModel:
    """`queryrec diffusion train`: the model, and with `references` the autoencoder
    reference (in OUT/autoencoder) and the quality table (OUT/results.json, RESULTS.md)."""
    from queryrec.diffusion.quality import augmentation_quality, write_quality

    cfg = DiffusionTrainConfig(epochs=epochs, max_items=max_items, k=k, seed=seed, device=device)
    model = train_diffusion(data_dir, out_dir, cfg)
    best = model.info["history"][model.info["best_epoch"] - 1]
    print(
        f"diffusion model in {out_dir}: {len(model.universe):,} items, best epoch "
        f"{model.info['best_epoch']}, held-out hidden-click recall@{k} {best['recall']:.4f}, "
        f"NDCG@{k} {best['ndcg']:.4f}"
    )
    if references:
        autoencoder = train_diffusion(
            data_dir, Path(out_dir) / "autoencoder", replace(cfg, noise=False)
        )
        dataset = PreparedDataset(data_dir)
        quality = augmentation_quality(dataset, model, autoencoder, pick_device(device))
        write_quality(quality, Path(out_dir))
        print((Path(out_dir) / "RESULTS.md").read_text())
    return model
