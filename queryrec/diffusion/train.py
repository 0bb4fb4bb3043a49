"""Fit the denoiser on training-split queries that have clicks (`queryrec diffusion train`;
the command itself, which also writes the quality table, is `commands.py`).

What is noised (a choice, stated): DiffRec noises x0 itself and reads the denoiser's
output on items the input did not have. Here the input a click-less query brings at
augmentation is -1 on every shown item and nothing else, which says nothing about which
item its user would have clicked; a denoiser trained only on full x0 (clicks visible)
then ranks shown items no better than chance (held-out recall@4 0.69 vs random 0.70 on
`small`). So the forward process noises the click-less view of each training query
(`hide_clicks`, clicks encoded as shown-not-clicked) and the target stays the full x0:
the denoiser learns p(x0 | noisy click-less view), i.e. what a click-less query's user
would have clicked, which is exactly what augmentation asks of it.

Which unshown items (a second choice, stated): augmentation ranks the items a query did
*not* show, but with the view above an item the view does not show is never-shown in the
target too, so nothing teaches which of them the query is about. Worse, DiffRec's input
dropout hides shown items while their target stays negative, which teaches that a hidden
item of the query's topic is a *negative* one: on the long-tail data three in four
pseudo-positives fell outside the query's topic. So `hide_share` of each training query's
shown items are taken out of the view (encoded never-shown), and in the target such an
item is never-shown as well unless it was clicked (`training_pair`): an item the view
does not show is learned as "clicked or not", never as "negative". The denoiser's own
input dropout is then off (0 by default).

Inference reads x̃0 after `sampling_steps` reverse steps (DiffRec's T'). With T' = 0
every step runs from x0 itself and each later step sees the previous step's guess in
place of the input, so the display grading of x0 fades; one step from the lightly
noised x0 (T' = 1) scored best on the held-out training queries for both denoisers
probed (docs/RESULTS.md), and is the default.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from queryrec.device import resolve_device
from queryrec.diffusion.denoiser import Denoiser, DenoiserConfig
from queryrec.diffusion.query_units import UNITS, diffusion_view
from queryrec.diffusion.sampler import reconstruct, training_loss
from queryrec.diffusion.schedule import DiffusionSchedule, ScheduleConfig
from queryrec.diffusion.x0 import (
    CLICKED,
    UNSEEN,
    ItemUniverse,
    build_x0,
    clicked_lists,
    sessions_in,
)
from queryrec.errors import QueryRecError
from queryrec.features.dataset import PreparedDataset
from queryrec.progress import bar as progress_bar

MODEL_FILE, UNIVERSE_FILE, CONFIG_FILE = "denoiser.pt", "universe.npy", "diffusion.json"


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """What `diffusion train` fits and how."""

    max_items: int = 4096  # universe size (x0 width)
    hidden: tuple[int, ...] = (1000,)  # DiffRec's width; 256 peaked below popularity
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    # DiffRec's sampling steps T': x0 noised T' - 1 steps, then T' reverse steps; 0 = all
    # steps from x0 itself. Chosen on the held-out training queries (docs/RESULTS.md):
    # 1 keeps the position-graded input in view, more steps feed back the model's guess.
    sampling_steps: int = 1
    epochs: int = 15  # hidden-click recall peaked by epoch 5 on `small`
    batch_size: int = 256
    learning_rate: float = 1e-3
    holdout: float = 0.1  # share of clicked training sessions kept for validation
    k: int = 4  # positives per query (the L_cl K) and the @K of the metrics
    noise: bool = True  # False: the plain autoencoder reference
    hide_clicks: bool = True  # noise the click-less view of x0, predict x0 itself
    position_weight: float = 0.5  # shown items graded by display position (x0.py); 0: flat -1
    pointwise: int = 16  # width of the denoiser's per-item path (denoiser.py); 0: none
    hide_share: float = 0.5  # shown items taken out of each training view (training_pair)
    dropout: float = 0.0  # DiffRec's input dropout (DenoiserConfig.dropout); hide_share instead
    query_words: bool = False  # condition the denoiser on the query's word bag
    # What one x0 is: "session" (one search session) or "query" (every session of the
    # normalised query in the period, by any user; query_units.py, the paper's unit).
    unit: str = "session"
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.position_weight < 1.0:
            raise ValueError(
                f"position weight must be in [0, 1) so that shown items stay negative, "
                f"got {self.position_weight}"
            )
        for name in ("max_items", "epochs", "batch_size", "k"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}"
                )
        if not 0.0 <= self.hide_share < 1.0:
            raise ValueError(f"hide share must be in [0, 1), got {self.hide_share}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be session or query, got {self.unit!r}")
        if self.pointwise < 0:
            raise ValueError(f"pointwise width must be >= 0, got {self.pointwise}")
        if not 0 <= self.sampling_steps <= self.schedule.steps:
            raise ValueError(
                f"sampling steps must be in [0, {self.schedule.steps}], got {self.sampling_steps}"
            )


@dataclass
class DiffusionModel:
    """A trained denoiser with everything needed to use it."""

    schedule: DiffusionSchedule
    denoiser: Denoiser
    universe: ItemUniverse
    info: dict[str, Any]

    @property
    def unit(self) -> str:
        return str(self.info["train"].get("unit", "session"))

    @property
    def position_weight(self) -> float:
        return float(self.info["train"].get("position_weight", 0.0))

    def x0(self, dataset: PreparedDataset, rows: np.ndarray, *, hide_clicks: bool) -> np.ndarray:
        """x0 (B, U) of search-session rows in this model's encoding."""
        return build_x0(
            dataset,
            self.universe,
            rows,
            hide_clicks=hide_clicks,
            position_weight=self.position_weight,
        )

    def words(self, dataset: PreparedDataset, rows: np.ndarray) -> np.ndarray | None:
        """(B, V) mean word bag of each session's query when the denoiser is conditioned
        on it, else None."""
        vocabulary = self.denoiser.config.words
        if not vocabulary:
            return None
        bags = np.zeros((len(rows), vocabulary), dtype=np.float32)
        for i, row in enumerate(rows):
            words = dataset.query_words[dataset.query_offsets[row] : dataset.query_offsets[row + 1]]
            if len(words):
                np.add.at(bags[i], words.astype(np.int64), 1.0 / len(words))
        return bags

    def scores(
        self, x0: np.ndarray, device: torch.device, words: np.ndarray | None = None
    ) -> np.ndarray:
        """x0 (B, U) -> x̃0 (B, U): the reverse process from x0 (DiffRec's inference),
        or the autoencoder's single pass when trained without noise."""
        x = torch.from_numpy(x0).to(device)
        bag = None if words is None else torch.from_numpy(words).to(device)
        if not self.info["train"]["noise"]:
            self.denoiser.eval()
            with torch.no_grad():
                return (
                    self.denoiser(x, torch.zeros(len(x0), dtype=torch.long, device=device), bag)
                    .cpu()
                    .numpy()
                )
        generator = torch.Generator(device).manual_seed(int(self.info["train"].get("seed", 0)))
        steps = int(self.info["train"].get("sampling_steps", 0))
        return (
            reconstruct(
                self.schedule, self.denoiser, x, start_step=steps, generator=generator, words=bag
            )
            .cpu()
            .numpy()
        )


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
    """Fit the denoiser on the clicked training-split sessions (module docstring), keep the
    epoch with the best held-out hidden-click recall and save the model into `out_dir`."""
    dataset = diffusion_view(PreparedDataset(data_dir), cfg.unit)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    fit_rows, held_out = split_sessions(dataset, cfg.holdout, cfg.seed)
    if len(fit_rows) == 0 or len(held_out) == 0:
        raise QueryRecError(f"{data_dir}: too few clicked search sessions in the training split")
    job = _Job(dataset, _new_model(dataset, cfg, device), cfg, device)
    start = time.perf_counter()
    history, best_epoch = _fit_epochs(job, fit_rows, held_out)
    job.model.info = _run_info(
        job, data_dir, fit_rows, held_out, history, best_epoch, time.perf_counter() - start
    )
    save_model(job.model, out_dir)
    return job.model


@dataclass
class _Job:
    """What every step of `train_diffusion` reads: the data, the model being fitted (its
    denoiser trains in place), the config and the device."""

    dataset: PreparedDataset
    model: DiffusionModel
    cfg: DiffusionTrainConfig
    device: torch.device

    def score(self, x0: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """x̃0 (B, U) of x0 (B, U) for session rows (B,): how each epoch's model ranks the
        held-out sessions' items."""
        return self.model.scores(x0, self.device, self.model.words(self.dataset, rows))


def _new_model(
    dataset: PreparedDataset, cfg: DiffusionTrainConfig, device: torch.device
) -> DiffusionModel:
    """The untrained model: the universe (the `max_items` most shown items of the training
    split), the noise schedule and a freshly initialised denoiser (torch's global RNG,
    seeded by the caller) on `device`."""
    valid_start = int(dataset.schema["split"]["valid_start_ms"])
    sessions = getattr(dataset, "base", dataset)  # the universe counts shows per session
    every = np.flatnonzero(sessions.search_ts < valid_start)
    universe = ItemUniverse.most_shown(sessions, every, cfg.max_items)
    schedule = DiffusionSchedule(cfg.schedule)
    denoiser = Denoiser(
        DenoiserConfig(
            items=len(universe),
            hidden=cfg.hidden,
            pointwise=cfg.pointwise,
            dropout=cfg.dropout,
            words=int(dataset.schema["vocab_sizes"]["words"]) if cfg.query_words else 0,
        )
    ).to(device)
    return DiffusionModel(schedule, denoiser, universe, {"train": asdict(cfg)})


def _fit_epochs(
    job: _Job, fit_rows: np.ndarray, held_out: np.ndarray
) -> tuple[list[dict[str, float]], int]:
    """All epochs: train on `fit_rows`, score the hidden clicks of `held_out`, and leave the
    weights of the epoch with the best recall in the denoiser; -> (per-epoch history, best
    epoch). One numpy RNG (seeded by `cfg.seed`) draws every epoch's order and views."""
    cfg, model = job.cfg, job.model
    optimizer = torch.optim.Adam(model.denoiser.parameters(), lr=cfg.learning_rate)
    rng = np.random.default_rng(cfg.seed)
    history: list[dict[str, float]] = []
    best, best_epoch, best_state = -1.0, 0, None
    for epoch in range(cfg.epochs):
        loss = _train_epoch(job, fit_rows, optimizer, rng, epoch)
        metrics = hidden_click_metrics(job.dataset, model, held_out, cfg.k, job.score)
        history.append({"epoch": epoch + 1, "loss": loss, **metrics})
        if cfg.progress:
            print(
                f"diffusion epoch {epoch + 1}: loss {loss:.5f}, held-out recall@{cfg.k} {metrics['recall']:.4f}"
            )
        if metrics["recall"] > best:
            best, best_state = (
                metrics["recall"],
                {k: v.detach().clone() for k, v in model.denoiser.state_dict().items()},
            )
            best_epoch = epoch + 1
    assert best_state is not None
    model.denoiser.load_state_dict(best_state)
    return history, best_epoch


def _train_epoch(
    job: _Job,
    fit_rows: np.ndarray,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    epoch: int,
) -> float:
    """One pass over `fit_rows` in an `rng` order, one Adam step per batch; -> the mean
    batch loss."""
    cfg = job.cfg
    job.model.denoiser.train()
    order = rng.permutation(fit_rows)
    losses = []
    bar = progress_bar(
        range(0, len(order), cfg.batch_size),
        desc=f"diffusion epoch {epoch + 1}/{cfg.epochs}",
        enabled=cfg.progress,
        leave=False,
    )
    for lo in bar:
        loss = _batch_loss(job, order[lo : lo + cfg.batch_size], rng)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def _batch_loss(job: _Job, rows: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """The loss of one batch of session rows: the diffusion loss on its (view, target)
    pairs (`training_pair`), or the autoencoder's reconstruction MSE without noise."""
    model, device = job.model, job.device
    view_np, x0_np = training_pair(model, job.dataset, rows, job.cfg, rng)
    x0, view = torch.from_numpy(x0_np).to(device), torch.from_numpy(view_np).to(device)
    bag = model.words(job.dataset, rows)
    words = None if bag is None else torch.from_numpy(bag).to(device)
    if job.cfg.noise:
        return training_loss(model.schedule, model.denoiser, x0, observed=view, words=words)
    t0 = torch.zeros(len(x0), dtype=torch.long, device=device)
    return F.mse_loss(model.denoiser(view, t0, words), x0)


def _run_info(
    job: _Job,
    data_dir: Path,
    fit_rows: np.ndarray,
    held_out: np.ndarray,
    history: list[dict[str, float]],
    best_epoch: int,
    seconds: float,
) -> dict[str, Any]:
    """What `diffusion.json` records about the run: dataset hash and folder, the config,
    the universe and the share of fit clicks inside it, session counts, history, timing."""
    dataset, universe = job.dataset, job.model.universe
    clicks = clicked_lists(dataset, universe, fit_rows)
    total = int(sum(dataset.clicked_offsets[r + 1] - dataset.clicked_offsets[r] for r in fit_rows))
    return {
        "schema_hash": dataset.content_hash,
        "data_dir": str(Path(data_dir).resolve()),
        "train": asdict(job.cfg),
        "universe_items": len(universe),
        "clicks_in_universe": sum(len(c) for c in clicks) / max(total, 1),
        "fit_sessions": len(fit_rows),
        "held_out_sessions": len(held_out),
        "history": history,
        "best_epoch": best_epoch,
        "seconds": seconds,
    }


def training_pair(
    model: DiffusionModel,
    dataset: PreparedDataset,
    rows: np.ndarray,
    cfg: DiffusionTrainConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(B,) training session rows -> (view, target), (B, U) float32 each.

    target = x0 (clicks visible). view = the click-less x0 when `cfg.hide_clicks`, else x0.
    With `cfg.hide_share` > 0, each shown item of the view is independently taken out of it
    (set never-shown) with that probability, and in the target such an item becomes
    never-shown too unless it was clicked: the denoiser learns, for items a query does not
    show, whether they would be clicked (module docstring)."""
    target = model.x0(dataset, rows, hide_clicks=False)
    view = model.x0(dataset, rows, hide_clicks=True) if cfg.hide_clicks else target.copy()
    if cfg.hide_share > 0:
        hidden = (view != UNSEEN) & (rng.random(view.shape) < cfg.hide_share)  # (B, U)
        view[hidden] = UNSEEN
        target[hidden & (target != CLICKED)] = UNSEEN
    return view, target


def hidden_click_metrics(
    dataset: PreparedDataset,
    model: DiffusionModel,
    sessions: np.ndarray,
    k: int,
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> dict[str, float]:
    """Mean recall@K and NDCG@K of `hidden_clicks_per_session`."""
    recalls, ndcgs = hidden_clicks_per_session(dataset, model, sessions, k, score)
    return {
        "recall": float(np.mean(recalls)),
        "ndcg": float(np.mean(ndcgs)),
        "sessions": float(len(recalls)),
    }


def hidden_clicks_per_session(
    dataset: PreparedDataset,
    model: DiffusionModel,
    sessions: np.ndarray,
    k: int,
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    unshown: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Clicks hidden (x0 as if click-less, in `model`'s encoding), each session's shown
    items ranked by `score(x0 (B, U), session rows (B,)) -> (B, U)`: recall@K and NDCG@K
    of the hidden clicks, (S,) each, for the S sessions with a click and a shown item
    inside the universe (the same sessions whatever `score` is).

    `unshown`: the clicked items are taken out of x0 altogether (as if never shown) and
    the candidates are every item x0 does not show, the task augmentation really has
    (its pseudo-positives are items the query did not show)."""
    recalls, ndcgs = [], []
    for lo in range(0, len(sessions), 1024):
        rows = sessions[lo : lo + 1024]
        x0 = model.x0(dataset, rows, hide_clicks=True)
        if unshown:
            x0[model.x0(dataset, rows, hide_clicks=False) == CLICKED] = UNSEEN
        scores = score(x0, rows)
        pool = x0 == UNSEEN if unshown else x0 < UNSEEN
        for i, truth in enumerate(clicked_lists(dataset, model.universe, rows)):
            candidates = np.flatnonzero(pool[i])
            if len(truth) == 0 or len(candidates) == 0:
                continue
            top = candidates[np.argsort(-scores[i, candidates], kind="stable")[:k]]
            hits = np.isin(top, truth)
            recalls.append(hits.sum() / len(truth))
            gains = (hits / np.log2(np.arange(2, len(top) + 2))).sum()
            ideal = (1 / np.log2(np.arange(2, min(len(truth), k) + 2))).sum()
            ndcgs.append(gains / ideal)
    return np.asarray(recalls, dtype=np.float64), np.asarray(ndcgs, dtype=np.float64)


def save_model(model: DiffusionModel, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.denoiser.state_dict(), out_dir / MODEL_FILE)
    model.universe.save(out_dir / UNIVERSE_FILE)
    info = {
        **model.info,
        "schedule": asdict(model.schedule.config),
        "hidden": list(model.denoiser.config.hidden),
        "pointwise": model.denoiser.config.pointwise,
        "words": model.denoiser.config.words,
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
    denoiser = Denoiser(
        DenoiserConfig(
            items=len(universe),
            hidden=tuple(info["hidden"]),
            pointwise=int(info.get("pointwise", 0)),
            words=int(info.get("words", 0)),
        )
    )
    denoiser.load_state_dict(torch.load(model_dir / MODEL_FILE, map_location="cpu"))
    schedule = DiffusionSchedule(ScheduleConfig(**info["schedule"]))
    return DiffusionModel(schedule, denoiser.to(device), universe, info)
