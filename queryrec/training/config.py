"""Training configuration (typed, frozen); saved inside every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from queryrec.errors import QueryRecError
from queryrec.training.batches import AuxiliaryConfig
from queryrec.training.optimizers import SPARSE_MIN_ROWS, check_embedding_updates


@dataclass(frozen=True)
class TrainConfig:
    """What `queryrec train` does; every field has a documented default."""

    model: str = "queryrec"
    seed: int = 0
    epochs: int = 4  # upper bound; early stopping on validation AUC usually stops sooner
    patience: int = 1  # epochs without a validation-AUC gain before stopping
    batch_size: int = 1024  # per process
    eval_batch_size: int = 4096
    learning_rate: float = 1e-3
    # Chosen on validation AUC of `small` (docs/BENCHMARKS.md "Training"): without
    # weight decay every model overfits the id embeddings by epoch 2.
    weight_decay: float = 3e-5
    # lambda_2 (L_next) and lambda_3 (L_cl); None: the model's own (`ModelSpec.next_weight`,
    # `ModelSpec.cl_weight`, chosen per model on validation: docs/RESULTS.md).
    next_weight: float | None = None
    cl_weight: float | None = None
    temperature: float = 0.1  # beta of L_cl (PAPER.md: s(q, i) / beta); `--cl-temperature`
    aux: AuxiliaryConfig = field(default_factory=AuxiliaryConfig)
    device: str = "auto"  # auto | cpu | cuda
    # auto | dense | sparse: lazy Adam for the large id tables (queryrec.training.optimizers);
    # auto = sparse on the CPU, dense on CUDA.
    embedding_updates: str = "auto"
    # Tables of at least this many rows get the sparse updates (optimizers.SPARSE_MIN_ROWS).
    sparse_min_rows: int = SPARSE_MIN_ROWS
    # Decoupled (AdamW) decay of the sparse tables' rows, every step, caught up lazily
    # (queryrec.training.lazy_adam); 0 = off. 10 (1 % a step at lr 1e-3) brings the rows
    # a batch rarely touches towards zero as dense Adam's coupled L2 does: the better of
    # 0 and 10 on kuaisar-small's validation AUC (docs/BENCHMARKS.md "Scale").
    sparse_decay: float = 10.0
    # Lazy Adam also takes the momentum steps a row missed between batches that touch it,
    # as dense Adam does (queryrec.training.lazy_adam).
    sparse_momentum_catch_up: bool = False
    max_train_samples: int | None = None  # cap for quick runs (a random subset)
    progress: bool = True
    # ModelConfig fields (a baseline's loss weights: its typed settings, e.g.
    # {"ple": PLEConfig(search_weight=0.2)}); for the LightGBM rows GBDTParams fields.
    # Set from an experiment file's [model] / [lightgbm] tables (app.experiment_file).
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise QueryRecError(f"--device must be auto, cpu or cuda, not '{self.device}'")
        check_embedding_updates(self.embedding_updates)
        if self.epochs < 1 or self.batch_size < 1:
            raise QueryRecError("epochs and batch size must be positive")
        if self.patience < 0 or self.eval_batch_size < 1:
            raise QueryRecError("patience must be >= 0 and eval_batch_size positive")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise QueryRecError("learning_rate must be > 0 and weight_decay >= 0")
        for name in ("next_weight", "cl_weight"):
            weight = getattr(self, name)
            if weight is not None and weight < 0:
                raise QueryRecError(f"{name} must be >= 0, not {weight}")
        if not self.temperature > 0:
            raise QueryRecError(f"temperature (beta of L_cl) must be > 0, not {self.temperature}")
        if self.sparse_decay < 0 or self.sparse_decay * self.learning_rate >= 1:
            raise QueryRecError("sparse_decay must be >= 0 with sparse_decay * learning_rate < 1")
        if self.sparse_min_rows < 1:
            raise QueryRecError("sparse_min_rows must be positive")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise QueryRecError("--max-train-samples must be positive")
