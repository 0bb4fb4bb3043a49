"""The one training loop for every model.

Seeded (numpy and torch from `TrainConfig.seed`; the same seed gives the same weights),
mini-batch Adam over batches bucketed by query-history length (`batch_order`), a
progress bar with running loss and throughput, validation AUC after every epoch, early
stopping on it (the best epoch's weights are kept), then test metrics and a checkpoint. Under `torchrun` with WORLD_SIZE > 1 it runs as DDP: every process
draws the same batches and takes an equal, disjoint share of each one, so the processes
stay in lock-step and end with identical weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from queryrec.errors import QueryRecError
from queryrec.evaluation.metrics import auc, logloss
from queryrec.features.dataset import PreparedDataset
from queryrec.features.pseudo_positives import (
    PseudoPositives,
    load_pseudo_positives,
    load_query_positives,
)
from queryrec.features.query_positives import QueryPositives
from queryrec.models.config import ModelConfig
from queryrec.models.ctr_model import CTRModel
from queryrec.models.registry import ModelSpec, build_model, model_config, model_spec
from queryrec.progress import bar as progress_bar
from queryrec.progress import say
from queryrec.training.batch_order import epoch_batches
from queryrec.training.batches import BatchBuilder, SplitArrays
from queryrec.training.checkpoint import save_checkpoint
from queryrec.training.config import TrainConfig
from queryrec.training.distributed import DistributedContext, init_distributed
from queryrec.training.objective import Objective, to_tensors
from queryrec.training.optimizers import TrainingOptimizer, resolve_embedding_updates
from queryrec.training.results import TrainResult, calibration, jsonable, split_metrics


def predict(
    model: CTRModel,
    builder: BatchBuilder,
    arrays: SplitArrays,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """P(click) for every sample of a split, in order."""
    model.eval()
    out = np.empty(len(arrays), dtype=np.float32)
    by_length = np.argsort(arrays.query_count, kind="stable")  # short histories together
    with torch.no_grad():
        for start in range(0, len(arrays), batch_size):
            rows = by_length[start : start + batch_size]
            batch = to_tensors(builder.build(arrays, rows), device)
            logits = model.score(batch.inputs)
            out[rows] = torch.sigmoid(logits).float().cpu().numpy()
    return out


def train(
    data_dir: Path, run_dir: Path, cfg: TrainConfig, dataset: PreparedDataset | None = None
) -> TrainResult:
    """Train `cfg.model` on the dataset in `data_dir`; write the run to `run_dir`.

    The main process writes `checkpoint.pt` (weights, configs, schema hash, metrics) and
    `metrics.json` (metrics, per-epoch history, throughput). The LightGBM rows train in
    `queryrec.training.gbdt` instead (booster file and the same `metrics.json`).
    """
    dataset = dataset or PreparedDataset(Path(data_dir))
    spec = model_spec(cfg.model)
    if spec.architecture == "lightgbm":  # the trees' own fit (no torch model, no epochs)
        from queryrec.training.gbdt import train_gbdt

        return train_gbdt(dataset, Path(run_dir), cfg, with_query=spec.use_query)
    model, model_cfg, result, is_main = fit(dataset, cfg)
    if is_main:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = {"valid": result.valid, "test": result.test, "slices": result.slices}
        save_checkpoint(
            run_dir,
            model,
            cfg.model,
            model_cfg,
            jsonable(dataclasses.asdict(cfg)),
            dataset.content_hash,
            metrics,
            data_dir=dataset.root,
        )
        (run_dir / "metrics.json").write_text(
            json.dumps(jsonable(dataclasses.asdict(result)), indent=2) + "\n"
        )
    return result


def fit(
    dataset: PreparedDataset, cfg: TrainConfig
) -> tuple[CTRModel, ModelConfig, TrainResult, bool]:
    """The training itself: (model with the best epoch's weights, its config, the result,
    whether this is the main process)."""
    ctx = init_distributed(cfg.device)
    spec = model_spec(cfg.model)
    model_cfg = model_config(cfg.model, dataset.schema, **cfg.model_overrides)
    model, step_fn, optimizer = _seeded_model(dataset, cfg, spec, model_cfg, ctx)
    pseudo = _pseudo_positives(dataset, cfg, spec, ctx)
    builder = BatchBuilder(
        dataset,
        model_cfg.history_lengths,
        aux=cfg.aux if (spec.next_loss or spec.contrastive_loss) else None,
        pseudo_positives=pseudo,
        reads=model.reads,
        training_inputs=model.wanted_training_inputs(),
        slot_positives=_slot_positives(dataset, model_cfg.slot_positives),
    )
    train_arrays = builder.split_arrays("train", with_aux=True)
    valid_arrays = builder.split_arrays("valid", with_aux=False)
    run = _Run(cfg, ctx, model, step_fn, optimizer, builder)
    history, best_epoch, train_seconds, trained = _train_epochs(run, train_arrays, valid_arrays)

    valid_probs = predict(model, builder, valid_arrays, cfg.eval_batch_size, ctx.device)
    valid_metrics, _ = split_metrics(dataset, valid_arrays, valid_probs)
    test_arrays = builder.split_arrays("test", with_aux=False)
    test_probs = predict(model, builder, test_arrays, cfg.eval_batch_size, ctx.device)
    test_metrics, slices = split_metrics(dataset, test_arrays, test_probs)
    result = TrainResult(
        model=cfg.model,
        seed=cfg.seed,
        valid=valid_metrics,
        test=test_metrics,
        slices=slices,
        history=history,
        best_epoch=best_epoch,
        train_seconds=train_seconds,
        samples_per_second=trained * ctx.world_size / train_seconds if train_seconds else 0.0,
        calibration=calibration(valid_arrays, valid_probs, test_arrays, test_probs),
        world_size=ctx.world_size,
    )
    return model, model_cfg, result, ctx.is_main


def _seeded_model(
    dataset: PreparedDataset,
    cfg: TrainConfig,
    spec: ModelSpec,
    model_cfg: ModelConfig,
    ctx: DistributedContext,
) -> tuple[CTRModel, torch.nn.Module, TrainingOptimizer]:
    """The model initialised from `cfg.seed` on this process's device, the module a training
    step calls (the objective, wrapped in DDP when distributed) and its optimizer (dense
    Adam, or lazy Adam for the large id tables: `queryrec.training.optimizers`)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, dataset, model_cfg).to(ctx.device)
    updates = resolve_embedding_updates(cfg.embedding_updates, ctx.device, ctx.distributed)
    # Before the DDP wrap: DDP reads which tables give sparse gradients when it is built.
    optimizer = TrainingOptimizer(
        model,
        cfg.learning_rate,
        cfg.weight_decay,
        updates,
        cfg.sparse_min_rows,
        cfg.sparse_decay,
        cfg.sparse_momentum_catch_up,
    )
    if ctx.is_main and cfg.progress and optimizer.sparse_names:
        say(f"[train] sparse updates (lazy Adam) for {', '.join(optimizer.sparse_names)}")
    objective = Objective(
        model,
        spec,
        spec.next_weight if cfg.next_weight is None else cfg.next_weight,
        spec.cl_weight if cfg.cl_weight is None else cfg.cl_weight,
        cfg.temperature,
    )
    step_fn: torch.nn.Module = objective
    if ctx.distributed:
        # Feature-table buffers never change: no need to broadcast them every step.
        step_fn = DistributedDataParallel(objective, broadcast_buffers=False)
    return model, step_fn, optimizer


def _pseudo_positives(
    dataset: PreparedDataset, cfg: TrainConfig, spec: ModelSpec, ctx: DistributedContext
) -> PseudoPositives | None:
    """The diffusion pseudo-positives when the model's L_cl uses them and the dataset was
    augmented (else None, said once when progress is on)."""
    if not (spec.contrastive_loss and spec.diffusion_positives):
        return None
    pseudo = load_pseudo_positives(dataset)
    if pseudo is None and ctx.is_main and cfg.progress:
        say(
            f"[train] {dataset.root} has no diffusion pseudo-positives: L_cl uses clicked "
            "queries only (run 'queryrec diffusion augment' first)"
        )
    return pseudo


def _slot_positives(dataset: PreparedDataset, wanted: bool) -> QueryPositives | None:
    """The diffusion job's table by query when the model reads it (`slot_positives`);
    QueryRecError when the dataset has none."""
    if not wanted:
        return None
    table = load_query_positives(dataset)
    if table is None:
        raise QueryRecError(
            f"{dataset.root}: the model reads the diffusion pseudo-positives by query, and "
            "the dataset has no augment/query_positives.parquet (run 'queryrec diffusion "
            "augment' first)"
        )
    return table


@dataclass
class _Run:
    """What the epochs of `fit` work with: the config, where this process sits, the model
    with its training step and optimizer, and the batch builder."""

    cfg: TrainConfig
    ctx: DistributedContext
    model: CTRModel
    step_fn: torch.nn.Module
    optimizer: TrainingOptimizer
    builder: BatchBuilder


class _BestEpoch:
    """Early stopping on validation AUC: the best epoch so far, its weights (the initial
    ones until an epoch is seen) and the count of epochs since it without a gain."""

    def __init__(self, model: CTRModel, patience: int) -> None:
        self.patience = patience
        self.auc, self.epoch, self.stale = -1.0, -1, 0
        self.state = copy.deepcopy(model.state_dict())

    def stop_after(self, model: CTRModel, valid_auc: float, epoch: int) -> bool:
        """Record `epoch` (1-based) and its validation AUC; -> whether to stop now."""
        if valid_auc > self.auc:
            self.auc, self.epoch, self.stale = valid_auc, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
            return False
        self.stale += 1
        return self.stale >= self.patience


def _train_epochs(
    run: _Run, train_arrays: SplitArrays, valid_arrays: SplitArrays
) -> tuple[list[dict[str, float]], int, float, int]:
    """Train and validate epoch by epoch until `cfg.epochs` or early stopping, then load the
    best epoch's weights; -> (per-epoch history, best epoch, training seconds, samples this
    process trained on). The batch order of every epoch comes from one RNG seeded by
    `cfg.seed`, the auxiliary draws from one RNG per (seed, epoch, rank)."""
    cfg, ctx = run.cfg, run.ctx
    order_rng = np.random.default_rng(cfg.seed)
    history: list[dict[str, float]] = []
    best = _BestEpoch(run.model, cfg.patience)
    train_seconds, trained = 0.0, 0
    for epoch in range(cfg.epochs):
        batches = epoch_batches(
            order_rng,
            train_arrays.query_count,
            cfg.batch_size,
            ctx.rank,
            ctx.world_size,
            cfg.max_train_samples,
        )
        share = sum(len(rows) for rows in batches)
        aux_rng = np.random.default_rng([cfg.seed, epoch, ctx.rank])
        running, epoch_seconds = _train_epoch(run, train_arrays, batches, aux_rng, epoch)
        run.optimizer.settle()  # lazily updated rows up to date before they are read
        train_seconds += epoch_seconds
        trained += share
        valid_metrics = _validation_metrics(run, valid_arrays)
        history.append(
            {
                "epoch": epoch + 1,
                "valid_auc": valid_metrics["auc"],
                "valid_logloss": valid_metrics["logloss"],
                "train_seconds": epoch_seconds,
                **{f"train_{k}": v for k, v in running.items()},
            }
        )
        if ctx.is_main and cfg.progress:
            say(
                f"[train] {cfg.model} seed {cfg.seed} epoch {epoch + 1}: valid AUC "
                f"{valid_metrics['auc']:.4f}, loss {running.get('total', float('nan')):.4f}, "
                f"{share * ctx.world_size / epoch_seconds:,.0f} samples/s"
            )
        if best.stop_after(run.model, valid_metrics["auc"], epoch + 1):
            break
    run.model.load_state_dict(best.state)
    return history, best.epoch, train_seconds, trained


def _train_epoch(
    run: _Run,
    train_arrays: SplitArrays,
    batches: list[np.ndarray],
    aux_rng: np.random.Generator,
    epoch: int,
) -> tuple[dict[str, float], float]:
    """One Adam step per batch, with a progress bar; -> (running mean of every loss term,
    seconds)."""
    cfg, ctx = run.cfg, run.ctx
    run.model.train()
    started = time.perf_counter()
    running: dict[str, float] = {}
    bar = progress_bar(
        batches,
        desc=f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}",
        enabled=cfg.progress and ctx.is_main,
        unit="batch",
    )
    done = 0
    for rows in bar:
        batch = to_tensors(run.builder.build(train_arrays, rows, aux_rng), ctx.device)
        losses = run.step_fn(batch)
        run.optimizer.zero_grad()
        losses["total"].backward()
        run.optimizer.step()
        for name, value in losses.items():
            value_f = float(value.detach())
            running[name] = 0.98 * running.get(name, value_f) + 0.02 * value_f
        done += len(rows) * ctx.world_size  # every process trains an equal share
        elapsed = time.perf_counter() - started
        bar.set_postfix(
            loss=f"{running['total']:.4f}",
            samples_s=f"{done / elapsed:,.0f}",
            refresh=False,
        )
    return running, time.perf_counter() - started


def _validation_metrics(run: _Run, valid_arrays: SplitArrays) -> dict[str, float]:
    """Validation AUC and log loss of the current weights: early stopping needs AUC only;
    GAUC and the slice are computed once at the end."""
    probs = predict(run.model, run.builder, valid_arrays, run.cfg.eval_batch_size, run.ctx.device)
    return {"auc": auc(valid_arrays.label, probs), "logloss": logloss(valid_arrays.label, probs)}
