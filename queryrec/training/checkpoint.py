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
    data_dir: Path | None = None,
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
            "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
            "metrics": metrics,
            "state_dict": state,
        },
        path,
    )
    return path


def read_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint payload of a run folder (configs, metrics, weights), format-checked."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise QueryRecError(
            f"{path}: no checkpoint (is this a folder written by 'queryrec train'?)"
        )
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which, not how
        raise QueryRecError(f"{path}: not a readable checkpoint ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise QueryRecError(f"{path}: checkpoint format {found!r} is not {CHECKPOINT_FORMAT}")
    return payload


def load_checkpoint(
    run_dir: Path, dataset: PreparedDataset, payload: dict[str, Any] | None = None
) -> tuple[CTRModel, dict[str, Any]]:
    """Rebuild the model of a run; refuse a dataset whose schema hash differs.

    `payload`: the run's checkpoint if the caller has already read it (`read_checkpoint`).
    """
    path = Path(run_dir) / CHECKPOINT_FILE
    payload = payload if payload is not None else read_checkpoint(run_dir)
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
