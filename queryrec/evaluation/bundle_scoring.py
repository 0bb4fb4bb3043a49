"""Score a prepared dataset split with a bundle's ONNX graphs (torch-free).

Used by `export` (AUC before and after INT8 quantization), by the bundle round-trip test
and by `queryrec replay` (the offline score of every impression, compared with what the
server answered for it). The inputs come from the one feature path
(`queryrec.features.model_inputs`) that training and the service use, so any difference
from the checkpoint's scores is the graphs' doing, and any difference from the served
scores is the service's.

ONNX Runtime is imported only when a session is opened: the module itself needs numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from queryrec.errors import BundleError
from queryrec.evaluation.metrics import evaluate
from queryrec.features.bundle_format import (
    CTR_FILE,
    ENCODER_FILE,
    history_lengths,
    read_manifest,
    read_query_positives,
)
from queryrec.features.dataset import PreparedDataset
from queryrec.features.graph_feeds import graph_feed
from queryrec.features.model_inputs import model_inputs, trim_query_columns
from queryrec.features.query_positives import QueryPositives


class GraphSession(Protocol):
    """What scoring needs of an ONNX Runtime InferenceSession."""

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[Any]: ...


@dataclass(frozen=True)
class BundleGraphs:
    """A verified bundle's manifest and its graphs on one CPU thread."""

    manifest: dict[str, Any]
    encoder: GraphSession | None
    ctr: GraphSession
    query_positives: QueryPositives | None = None  # the bundle's table by query, if any


def cpu_session(path: Path) -> GraphSession:
    """An ONNX Runtime session on one CPU thread (offline scoring, export checks)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session: GraphSession = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # ORT raises its own types for bad graphs
        raise BundleError(f"{path}: ONNX Runtime cannot load it ({error})") from None
    return session


def open_bundle_graphs(root: Path) -> BundleGraphs:
    """Verify a bundle (format version, every hash) and open its graphs on the CPU."""
    manifest = read_manifest(Path(root))
    encoder = cpu_session(Path(root) / ENCODER_FILE) if ENCODER_FILE in manifest["files"] else None
    table = read_query_positives(Path(root), manifest)
    return BundleGraphs(manifest, encoder, cpu_session(Path(root) / CTR_FILE), table)


def score_split(
    dataset: PreparedDataset,
    split: str,
    manifest: dict[str, Any],
    encoder: GraphSession | None,
    ctr: GraphSession,
    *,
    batch_size: int = 4096,
    query_positives: QueryPositives | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(P(click), label) for every sample of `split`, in the split's order;
    `query_positives`: the bundle's table by query when its model reads one."""
    data_info = manifest["dataset"]
    if data_info["schema_hash"] != dataset.content_hash:
        raise BundleError(
            f"{dataset.root}: dataset {dataset.content_hash[:12]} is not the one the bundle was "
            f"trained on ({str(data_info['schema_hash'])[:12]})"
        )
    lengths = history_lengths(manifest)
    graphs = manifest["graphs"]
    reads = frozenset(manifest["reads"])
    events = dataset.timelines()
    samples = dataset.samples(split)
    users = samples["user"].to_numpy().astype(np.int64)
    ts = samples["ts"].to_numpy()
    items = samples["item"].to_numpy().astype(np.int64)
    _, search_end = events.history_ends(users, ts)
    by_length = np.argsort(search_end - events.query_start[users], kind="stable")
    out = np.empty(len(users), dtype=np.float32)
    for start in range(0, len(users), batch_size):
        rows = by_length[start : start + batch_size]  # short histories together
        inputs = trim_query_columns(
            model_inputs(
                events,
                users[rows],
                ts[rows],
                lengths,
                items[rows],
                reads=reads,
                query_positives=query_positives,
            )
        )
        encoded: dict[str, np.ndarray] = {}
        if encoder is not None:
            outputs = graphs["query_encoder"]["outputs"]
            values = encoder.run(None, graph_feed(list(graphs["query_encoder"]["inputs"]), inputs))
            encoded = dict(zip(outputs, values, strict=True))
        out[rows] = ctr.run(None, graph_feed(list(graphs["ctr"]["inputs"]), inputs, encoded))[0]
    return out, samples["label"].to_numpy().astype(np.float32)


def split_auc(
    dataset: PreparedDataset,
    split: str,
    manifest: dict[str, Any],
    encoder: GraphSession | None,
    ctr: GraphSession,
    query_positives: QueryPositives | None = None,
) -> dict[str, float]:
    """AUC, GAUC and logloss of the graphs on a split."""
    probs, labels = score_split(
        dataset, split, manifest, encoder, ctr, query_positives=query_positives
    )
    users = dataset.samples(split)["user"].to_numpy()
    return evaluate(users, labels, probs)
