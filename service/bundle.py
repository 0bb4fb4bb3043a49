"""The serving side of the model bundle: verified artifacts and ONNX Runtime sessions.

The bundle's layout, its manifest check and the raw-id maps are
`queryrec.features.bundle_format` (shared with the writer, `export.bundle`); this module
adds what only the serving process needs: sessions on the CUDA provider when there is
one, non-spinning thread pools, and the id maps loaded once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort
import polars as pl

from queryrec.features.bundle_format import CTR_FILE, ENCODER_FILE, IdMap, read_manifest
from service.errors import BundleError


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
