"""Checkpoints that carry their configs and the dataset's schema hash.

Item and user feature tables are not stored (they are non-trainable and rebuilt from the
dataset); the schema hash guarantees they are the same tables.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from queryrec.errors import QueryRecError, SchemaMismatchError
from queryrec.features.dataset import PreparedDataset
from queryrec.models.config import ModelConfig, Vocab
from queryrec.models.ctr_model import CTRModel
from queryrec.models.registry import build_model

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def save_checkpoint(
    run_dir: Path,
    model: CTRModel,
    model_name: str,
    model_cfg: ModelConfig,
    train_cfg: dict[str, Any],
    schema_hash: str,
    metrics: dict[str, Any],
) -> Path:
    path = Path(run_dir) / CHECKPOINT_FILE
    state = model.state_dict()  # parameters only: feature tables are non-persistent buffers
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_name": model_name,
            "model_config": dataclasses.asdict(model_cfg),
            "train_config": train_cfg,
            "schema_hash": schema_hash,
            "metrics": metrics,
            "state_dict": state,
        },
        path,
    )
    return path


def load_checkpoint(run_dir: Path, dataset: PreparedDataset) -> tuple[CTRModel, dict[str, Any]]:
    """Rebuild the model of a run; refuse a dataset whose schema hash differs."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise QueryRecError(
            f"{path}: no checkpoint (is this a folder written by 'queryrec train'?)"
        )
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise QueryRecError(
            f"{path}: checkpoint format {payload.get('format')!r} is not {CHECKPOINT_FORMAT}"
        )
    if payload["schema_hash"] != dataset.content_hash:
        raise SchemaMismatchError(
            f"{path}: trained on dataset {payload['schema_hash'][:12]}, "
            f"but {dataset.root} is {dataset.content_hash[:12]}"
        )
    raw_cfg = dict(payload["model_config"])
    vocab = raw_cfg.pop("vocab")
    vocab["categories"] = tuple(vocab["categories"])
    vocab["profile"] = tuple(vocab["profile"])
    for key in ("mlp", "attention_mlp"):
        raw_cfg[key] = tuple(raw_cfg[key])
    cfg = ModelConfig(vocab=Vocab(**vocab), **raw_cfg)
    model = build_model(payload["model_name"], dataset, cfg)
    model.load_state_dict(payload["state_dict"])  # feature tables are non-persistent buffers
    model.eval()
    return model, payload
