"""Score a prepared dataset split with a bundle's ONNX graphs (torch-free).

Used by `export` (AUC before and after INT8 quantization), by the bundle round-trip test
and by `replay` to print the offline AUC of the very graphs the server runs. Features come
from the same `BatchBuilder` that training used, so any difference from the checkpoint's
scores is the graphs' doing.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import polars as pl

from queryrec.evaluation.metrics import evaluate
from queryrec.features.dataset import PreparedDataset
from queryrec.training.batches import BatchBuilder
from service.errors import BundleError


def profile_table(users: pl.DataFrame, fields: list[str]) -> np.ndarray:
    """features/users.parquet -> (n_users, P) int64 profile codes by user index."""
    index = users["index"].to_numpy()
    table = np.zeros((int(index.max()) + 1, len(fields)), dtype=np.int64)
    table[index] = np.stack([users[f].to_numpy().astype(np.int64) for f in fields], axis=1)
    return table


def score_split(
    dataset: PreparedDataset,
    split: str,
    manifest: dict[str, object],
    encoder: ort.InferenceSession | None,
    ctr: ort.InferenceSession,
    *,
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """(P(click), label) for every sample of `split`, in the split's order."""
    data_info = manifest["dataset"]
    assert isinstance(data_info, dict)
    if data_info["schema_hash"] != dataset.content_hash:
        raise BundleError(
            f"{dataset.root}: dataset {dataset.content_hash[:12]} is not the one the bundle was "
            f"trained on ({str(data_info['schema_hash'])[:12]})"
        )
    lengths = manifest["max_lengths"]
    assert isinstance(lengths, dict)
    fields = list(dataset.schema["vocab_sizes"]["profile"])
    profiles = profile_table(pl.read_parquet(dataset.root / "features/users.parquet"), fields)
    builder = BatchBuilder(
        dataset,
        click_history=int(lengths["click_history"]),
        query_history=int(lengths["query_history"]),
        query_tokens=int(lengths["query_tokens"]),
    )
    arrays = builder.split_arrays(split, with_aux=False)
    out = np.empty(len(arrays), dtype=np.float32)
    by_length = np.argsort(arrays.query_count, kind="stable")
    for start in range(0, len(arrays), batch_size):
        rows = by_length[start : start + batch_size]
        batch = builder.build(arrays, rows)
        feed: dict[str, np.ndarray] = {
            "user": batch["user"],
            "hour": batch["hour"],
            "profile": profiles[batch["user"]],
            "click_history": batch["click_history"],
            "pair_user": np.arange(len(rows), dtype=np.int64),
            "item": batch["item"],
        }
        if encoder is not None:
            feed["query_repr"] = encoder.run(
                None, {"query_tokens": batch["query_history"], "query_age": batch["query_age"]}
            )[0]
        out[rows] = ctr.run(None, feed)[0]
    return out, arrays.label


def split_auc(
    dataset: PreparedDataset,
    split: str,
    manifest: dict[str, object],
    encoder: ort.InferenceSession | None,
    ctr: ort.InferenceSession,
) -> dict[str, float]:
    """AUC, GAUC and logloss of the graphs on a split."""
    probs, labels = score_split(dataset, split, manifest, encoder, ctr)
    users = dataset.samples(split)["user"].to_numpy()
    return evaluate(users, labels, probs)
