"""The model bundle: its layout (shared with the writer in `export.bundle`) and its reader.

A bundle is a directory:

| file | what |
|---|---|
| `manifest.json` | format version, model version and name, created time, graph inputs/outputs (names, dtypes, shapes), max lengths, offline metrics, exporter settings, parity results, sha256 of every other file |
| `query_encoder.onnx` | query histories -> query representations (models with a query tower) |
| `ctr.onnx` | user rows + flat (user row, item) pairs -> P(click) (`export.graphs.CTRGraph`) |
| `schema.json` | the training dataset's schema (vocab sizes, codes, split) |
| `maps/{users,items,words}.parquet` | raw id -> model index (`raw_id`, `index`); anything absent maps to the unknown index 1 |
| `features/users.parquet` | profile codes per user index (what `state load` writes to Redis) |
| `features/items.parquet` | item side features per item index (for reference: `ctr.onnx` already holds every item's vectors) |

`load_bundle` verifies the format version and every hash before it builds the ONNX
Runtime sessions; any mismatch is a `BundleError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import polars as pl

from service.errors import BundleError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODER_FILE = "query_encoder.onnx"
CTR_FILE = "ctr.onnx"
UNKNOWN_INDEX = 1
ARTIFACTS = (
    "schema.json",
    "maps/users.parquet",
    "maps/items.parquet",
    "maps/words.parquet",
    "features/users.parquet",
    "features/items.parquet",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class IdMap:
    """Raw ids -> model indices, vectorised; ids not in the map give the unknown index."""

    def __init__(self, raw_ids: np.ndarray, indices: np.ndarray):
        order = np.argsort(raw_ids, kind="stable")
        self.raw = raw_ids[order].astype(np.int64)
        self.index = indices[order].astype(np.int64)

    @classmethod
    def read(cls, path: Path) -> IdMap:
        frame = pl.read_parquet(path)
        return cls(frame["raw_id"].to_numpy(), frame["index"].to_numpy())

    def __len__(self) -> int:
        return len(self.raw)

    def __call__(self, raw_ids: np.ndarray | list[int]) -> np.ndarray:
        ids = np.asarray(raw_ids, dtype=np.int64)
        if len(self.raw) == 0:
            return np.full(ids.shape, UNKNOWN_INDEX, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.raw, ids), 0, len(self.raw) - 1)
        return np.where(self.raw[pos] == ids, self.index[pos], UNKNOWN_INDEX)


def read_manifest(root: Path) -> dict[str, Any]:
    """manifest.json of a bundle, with its format version and every file hash verified."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (is {root} a bundle from 'queryrec export'?)")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version!r} is not supported (this code reads "
            f"{FORMAT_VERSION}); re-export the model with this version of queryrec"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path}: manifest lists no files")
    unlisted = [name for name in (CTR_FILE, *ARTIFACTS) if name not in files]
    if unlisted:
        raise BundleError(f"{path}: manifest does not list {', '.join(unlisted)}")
    for name, expected in sorted(files.items()):
        file = root / name
        if not file.is_file():
            raise BundleError(f"{file}: missing from the bundle")
        if sha256_file(file) != expected:
            raise BundleError(f"{file}: sha256 does not match the manifest (file altered)")
    return manifest


def session_options(threads: int) -> ort.SessionOptions:
    """One small intra-op pool per session, not spinning: two spinning pools in one
    process fight each other and the gRPC event loop for the CPU (MEASURED.md)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def providers(device: str = "auto") -> list[str]:
    """CUDA when asked for or available (device auto), else CPU; CPU is always the fallback."""
    available = ort.get_available_providers()
    if device not in ("auto", "cpu", "cuda"):
        raise BundleError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise BundleError("device cuda asked for, but onnxruntime has no CUDA provider here")
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class Bundle:
    """A verified bundle: manifest, ONNX Runtime sessions and id maps."""

    root: Path
    manifest: dict[str, Any]
    encoder: ort.InferenceSession | None
    ctr: ort.InferenceSession
    users: IdMap
    items: IdMap
    words: IdMap
    schema: dict[str, Any]

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def uses_query(self) -> bool:
        return self.encoder is not None

    def profiles(self) -> pl.DataFrame:
        """Profile codes per user index (features/users.parquet)."""
        return pl.read_parquet(self.root / "features/users.parquet")


def load_bundle(root: Path, *, device: str = "auto", threads: int = 1) -> Bundle:
    """Verify a bundle and build its sessions; BundleError on any mismatch."""
    root = Path(root)
    manifest = read_manifest(root)
    chosen = providers(device)
    options = session_options(threads)

    def session(name: str) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(root / name), options, providers=chosen)
        except Exception as error:  # ORT raises its own types for bad graphs
            raise BundleError(f"{root / name}: ONNX Runtime cannot load it ({error})") from None

    encoder = session(ENCODER_FILE) if ENCODER_FILE in manifest["files"] else None
    return Bundle(
        root=root,
        manifest=manifest,
        encoder=encoder,
        ctr=session(CTR_FILE),
        users=IdMap.read(root / "maps/users.parquet"),
        items=IdMap.read(root / "maps/items.parquet"),
        words=IdMap.read(root / "maps/words.parquet"),
        schema=json.loads((root / "schema.json").read_text()),
    )
