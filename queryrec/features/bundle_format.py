"""The model bundle's layout and its verified manifest (torch-free, ONNX-Runtime-free).

One definition for the writer (`export.bundle`), the serving reader (`service.bundle`)
and offline scoring (`queryrec.evaluation.bundle_scoring`). A bundle is a directory:

| file | what |
|---|---|
| `manifest.json` | format version, model version and name, created time, graph inputs/outputs (names, dtypes, shapes), max lengths, offline metrics, exporter settings, parity results, sha256 of every other file |
| `query_encoder.onnx` | query histories -> query representations (models with a query tower) |
| `ctr.onnx` | user rows + flat (user row, item) pairs -> P(click) (`export.graphs.CTRGraph`) |
| `schema.json` | the training dataset's schema (vocab sizes, codes, split) |
| `maps/{users,items,words}.parquet` | raw id -> model index (`raw_id`, `index`); anything absent maps to the unknown index 1 |
| `features/users.parquet` | profile codes per user index (what `state load` writes to Redis) |
| `features/items.parquet` | item side features per item index (for reference: `ctr.onnx` already holds every item's vectors) |

`read_manifest` verifies the format version and every hash; any mismatch is a
`BundleError` naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from queryrec.errors import BundleError
from queryrec.features.model_inputs import HistoryLengths
from queryrec.features.schema import UNKNOWN_INDEX, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODER_FILE = "query_encoder.onnx"
CTR_FILE = "ctr.onnx"
ARTIFACTS = (
    "schema.json",
    "maps/users.parquet",
    "maps/items.parquet",
    "maps/words.parquet",
    "features/users.parquet",
    "features/items.parquet",
)


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
        # (np.minimum, not np.clip: clip costs microseconds per call, this runs per request)
        pos = np.minimum(np.searchsorted(self.raw, ids), len(self.raw) - 1)
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


def history_lengths(manifest: dict[str, Any]) -> HistoryLengths:
    """The max history lengths the bundle's model was trained with."""
    lengths = manifest["max_lengths"]
    return HistoryLengths(
        clicks=int(lengths["click_history"]),
        queries=int(lengths["query_history"]),
        tokens=int(lengths["query_tokens"]),
    )
