"""Checkpoints that carry their configs and the dataset's schema hash.

Item and user feature tables are not stored (they are non-trainable and rebuilt from the
dataset); the schema hash guarantees they are the same tables.

A checkpoint is read with `torch.load(weights_only=True)`: the restricted unpickler
builds tensors and plain containers only, so a file that would run code when unpickled
(a hostile or foreign `checkpoint.pt`) is refused without running it. `save_checkpoint`
therefore stores nothing but tensors, str, int, float, bool, None, lists, tuples and
dicts with str keys (`plain_payload`).
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from queryrec.errors import QueryRecError, SchemaMismatchError
from queryrec.features.dataset import PreparedDataset
from queryrec.models.config import ModelConfig
from queryrec.models.ctr_model import CTRModel
from queryrec.models.registry import build_model

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
GBDT_MODEL_FILE = "model.txt"  # a LightGBM run's booster (queryrec.training.gbdt), not a checkpoint
# What every payload holds (`load_checkpoint` and the exporter read them).
REQUIRED_KEYS = ("model_name", "model_config", "schema_hash", "metrics", "state_dict")


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
    """Write `run_dir/checkpoint.pt`: the weights and everything needed to rebuild the
    model, as plain data only, so that `read_checkpoint` can load it with the safe
    (weights-only) unpickler; -> its path."""
    path = Path(run_dir) / CHECKPOINT_FILE
    state = model.state_dict()  # parameters only: feature tables are non-persistent buffers
    payload = plain_payload(
        {
            "format": CHECKPOINT_FORMAT,
            "model_name": model_name,
            "model_config": dataclasses.asdict(model_cfg),
            "train_config": train_cfg,
            "schema_hash": schema_hash,
            "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
            "metrics": metrics,
        }
    )
    payload["state_dict"] = state
    torch.save(payload, path)
    return path


def plain_payload(value: Any, where: str = "checkpoint") -> Any:
    """`value` with numpy scalars and arrays turned into Python numbers and lists and
    paths into str, so that the weights-only unpickler accepts it; tensors, str, int,
    float, bool, None, lists, tuples and dicts with str keys pass through. Any other
    type is a bug in the caller (TypeError naming where it is), not a user error."""
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return plain_payload(value.item(), where)
    if value is None or type(value) in (str, bool, int, float) or isinstance(value, torch.Tensor):
        return value
    # subclasses (IntEnum, StrEnum ...) pickle by their class: store the base value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a str")
            plain[key] = plain_payload(item, f"{where}.{key}")
        return plain
    if isinstance(value, list | tuple):
        items = [plain_payload(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"{where}: a {type(value).__name__} cannot go into a safe checkpoint")


def read_checkpoint(run_dir: Path) -> dict[str, Any]:
    """The checkpoint payload of a run folder (configs, metrics, weights), format-checked."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise QueryRecError(
            f"{path}: no checkpoint (is this a folder written by 'queryrec train'?)"
        )
    try:
        # weights_only: tensors and plain containers only; nothing in the file is run
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():  # a corrupt pickle stream
            raise QueryRecError(f"{path}: not a readable checkpoint ({_one_line(error)})") from None
        # the safe unpickler refused an object
        raise QueryRecError(
            f"{path}: refused: it needs {_refused_object(error)}, which the safe "
            "(weights-only) unpickler does not build (an old-format or untrusted checkpoint; "
            "nothing in it was run); retrain with this version of queryrec"
        ) from None
    except Exception as error:  # a truncated or foreign file: say which, not how
        raise QueryRecError(f"{path}: not a readable checkpoint ({_one_line(error)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise QueryRecError(f"{path}: checkpoint format {found!r} is not {CHECKPOINT_FORMAT}")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise QueryRecError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload


def _refused_object(error: Exception) -> str:
    """The global the weights-only unpickler refused (torch names it in a long,
    multi-line message), or a generic description."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"'{found.group(1)}'" if found else "an object that is not plain data"


def _one_line(error: Exception) -> str:
    """An exception's message on one line (the CLI prints errors as one line)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


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
    cfg = ModelConfig.from_dict(payload["model_config"])
    model = build_model(payload["model_name"], dataset, cfg)
    model.load_state_dict(payload["state_dict"])  # feature tables are non-persistent buffers
    model.eval()
    return model, payload
