"""What a training run produced, for the torch loop and the LightGBM rows alike: the
`TrainResult` written to RUN_DIR/metrics.json, the split metrics (overall and the
"no click on the recent queries" slice) and the calibration report."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from queryrec.evaluation.metrics import evaluate
from queryrec.evaluation.slices import last_query_without_click
from queryrec.features.dataset import PreparedDataset
from queryrec.progress import say
from queryrec.training.batches import SplitArrays
from queryrec.training.calibration import CalibrationError, calibration_report


@dataclass
class TrainResult:
    """What a training run produced (also written to RUN_DIR/metrics.json)."""

    model: str
    seed: int
    valid: dict[str, float]
    test: dict[str, float]
    slices: dict[str, dict[str, float]]
    history: list[dict[str, float]]
    best_epoch: int
    train_seconds: float
    samples_per_second: float
    # Platt scaling fitted on validation, measured on test (queryrec.training.calibration);
    # empty when a split has one class only.
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    world_size: int = 1  # processes that trained it (DDP under torchrun)


def split_metrics(
    dataset: PreparedDataset, arrays: SplitArrays, probabilities: np.ndarray
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Overall metrics and the slice "last query before t had no click"."""
    overall = evaluate(arrays.user, arrays.label, probabilities)
    in_slice = last_query_without_click(dataset, arrays.user, arrays.search_end)
    sliced = evaluate(arrays.user[in_slice], arrays.label[in_slice], probabilities[in_slice])
    return overall, {"no_click_recent_queries": sliced}


def calibration(
    valid: SplitArrays, valid_probs: np.ndarray, test: SplitArrays, test_probs: np.ndarray
) -> dict[str, Any]:
    """The run's calibration report; empty (and said) when it cannot be fitted."""
    try:
        return calibration_report(valid_probs, valid.label, test_probs, test.label)
    except CalibrationError as error:
        say(f"[train] no calibration report: {error}")
        return {}


def jsonable(value: Any) -> Any:
    """Config/result dicts with tuples and numpy scalars made JSON-friendly."""
    return json.loads(
        json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    )
