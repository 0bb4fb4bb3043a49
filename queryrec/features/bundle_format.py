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
| `features/query_positives.parquet` | models with `slot_positives` only: the diffusion job's pseudo-positives by query (`features.query_positives`), which the feature path gives searches without clicked results |

`read_manifest` verifies the format version, every hash and the manifest's own fields
(`check_manifest_fields`: the max lengths and profile fields agree with the shapes the
graphs are declared with); `read_schema`, `read_table` (behind `IdMap.read` and
`read_profiles`) check the other artifacts' contents. Any problem is a `BundleError`
of one line naming the file and the field, so that a broken bundle is refused when it
is loaded, not when the first request meets it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from queryrec.errors import BundleError
from queryrec.features.graph_feeds import ENCODER_OUTPUTS
from queryrec.features.model_inputs import OPTIONAL_INPUTS, USER_INPUTS, HistoryLengths
from queryrec.features.query_positives import QueryPositives
from queryrec.features.schema import UNKNOWN_INDEX, sha256_file

FORMAT_VERSION = 2  # 2: graph inputs are ModelInputs fields by name; search clicks
MANIFEST = "manifest.json"
QUERY_POSITIVES_FILE = "features/query_positives.parquet"
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
# Element types a manifest may declare for a graph input or output (numpy names).
DTYPES = frozenset({"bool", "int32", "int64", "float16", "float32", "float64"})
# The graph axes other manifest fields fix, where a graph has the input: (input, axis)
# -> the field that gives the size ("profile_fields": its length). The service builds
# its feeds at these sizes.
FIXED_AXES: dict[tuple[str, int], str] = {
    ("query_tokens", 2): "max_lengths.query_tokens",
    ("query_clicks", 2): "max_lengths.query_clicks",
    ("click_history", 1): "max_lengths.click_history",
    ("click_minutes", 1): "max_lengths.click_history",
    ("profile", 1): "profile_fields",
}
GRAPH_INPUTS = frozenset({*USER_INPUTS, *OPTIONAL_INPUTS, "pair_user", "item", *ENCODER_OUTPUTS})
"""The names a graph input may have: `ModelInputs` fields and the encoder's outputs."""


class IdMap:
    """Raw ids -> model indices, vectorised; ids not in the map give the unknown index."""

    def __init__(self, raw_ids: np.ndarray, indices: np.ndarray):
        order = np.argsort(raw_ids, kind="stable")
        self.raw = raw_ids[order].astype(np.int64)
        self.index = indices[order].astype(np.int64)

    @classmethod
    def read(cls, path: Path, size: int | None = None) -> IdMap:
        """A `maps/*.parquet` file (integer `raw_id` and `index` columns, no nulls);
        `size`: the vocabulary size every index must be below. BundleError naming the
        file and the column when it is unreadable or does not hold such a map."""
        frame = read_table(path, ["raw_id", "index"])
        _check_range(path, frame["index"], "index", size)
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
    check_manifest_fields(manifest, path)
    return manifest


def check_manifest_fields(manifest: dict[str, Any], path: Path) -> None:
    """The fields readers of a bundle rely on exist, have the right types and agree with
    each other; BundleError `path: field: problem` otherwise.

    Checked: `model_version`; `max_lengths` (positive ints); `profile_fields` (distinct
    names) and `vocab_sizes` (users, items, words, one profile size per field); `graphs`
    (`ctr`, and `query_encoder` exactly when the bundle has its file), each with its
    file name and inputs/outputs of a known dtype and a shape of fixed sizes and named
    dynamic axes; the axes in `FIXED_AXES` equal the lengths the feature builder pads
    to, and the encoder's output width is the CTR graph's `query_repr` width. That the
    graph files themselves have these inputs is the service's check (`service.bundle`):
    this module does not load ONNX.
    """
    _field(manifest, path, "model_version", str)
    lengths = _field(manifest, path, "max_lengths", dict)
    for name in ("click_history", "query_history", "query_tokens", "query_clicks"):
        _positive(lengths.get(name), path, f"max_lengths.{name}")
    reads = _field(manifest, path, "reads", list)
    if not set(reads) <= set(OPTIONAL_INPUTS):
        raise BundleError(
            f"{path}: reads lists {reads}; the feature path builds only {list(OPTIONAL_INPUTS)}"
        )
    fields = _field(manifest, path, "profile_fields", list)
    if not all(isinstance(f, str) for f in fields) or len(set(fields)) != len(fields):
        raise BundleError(f"{path}: profile_fields must be distinct column names, not {fields}")
    vocab = _field(manifest, path, "vocab_sizes", dict)
    for name in ("users", "items", "words"):
        _positive(vocab.get(name), path, f"vocab_sizes.{name}")
    profile_sizes = vocab.get("profile")
    if not isinstance(profile_sizes, list) or len(profile_sizes) != len(fields):
        raise BundleError(
            f"{path}: vocab_sizes.profile must list one size per profile field "
            f"({len(fields)}), not {profile_sizes!r}"
        )
    for i, size in enumerate(profile_sizes):
        _positive(size, path, f"vocab_sizes.profile[{i}]")
    graphs = _field(manifest, path, "graphs", dict)
    expected = {"ctr": CTR_FILE}
    if ENCODER_FILE in manifest["files"]:
        expected["query_encoder"] = ENCODER_FILE
    if set(graphs) != set(expected):
        raise BundleError(
            f"{path}: graphs lists {sorted(graphs)}, but the bundle's files make it "
            f"{sorted(expected)}"
        )
    for key, file in expected.items():
        graph = _field(graphs, path, key, dict, prefix="graphs.")
        if graph.get("file") != file:
            raise BundleError(f"{path}: graphs.{key}.file is {graph.get('file')!r}, not {file!r}")
        for kind in ("inputs", "outputs"):
            _check_tensors(graph.get(kind), path, f"graphs.{key}.{kind}")
    for key in expected:
        unknown = sorted(set(graphs[key]["inputs"]) - GRAPH_INPUTS)
        if unknown:
            raise BundleError(
                f"{path}: graphs.{key}.inputs names {unknown}, which the service cannot feed"
            )
    sizes = {
        "max_lengths.query_tokens": lengths["query_tokens"],
        "max_lengths.query_clicks": lengths["query_clicks"],
        "max_lengths.click_history": lengths["click_history"],
        "profile_fields": len(fields),
    }
    for key in expected:
        for (name, axis), source in FIXED_AXES.items():
            spec = graphs[key]["inputs"].get(name)
            if spec is None:
                continue
            where = f"graphs.{key}.inputs.{name}"
            shape = spec["shape"]
            if len(shape) <= axis or shape[axis] != sizes[source]:
                found = shape[axis] if len(shape) > axis else "no such axis"
                given = (
                    f"{source} is {sizes[source]}"
                    if source.startswith("max_lengths")
                    else f"{source} lists {sizes[source]} fields"
                )
                raise BundleError(f"{path}: {given}, but {where}.shape[{axis}] is {found!r}")
    _check_encoder_link(graphs, path)


def _check_encoder_link(graphs: dict[str, Any], path: Path) -> None:
    """The CTR graph takes exactly the encoder's outputs, at the encoder's widths."""
    encoded = graphs["query_encoder"]["outputs"] if "query_encoder" in graphs else {}
    taken = {n: v for n, v in graphs["ctr"]["inputs"].items() if n in ENCODER_OUTPUTS}
    if set(encoded) != set(taken):
        raise BundleError(
            f"{path}: graphs.ctr takes the encoder outputs {sorted(taken)}, but the encoder "
            f"gives {sorted(encoded)}"
        )
    for name, spec in encoded.items():
        if spec["shape"][-1] != taken[name]["shape"][-1]:
            raise BundleError(
                f"{path}: graphs.ctr.inputs.{name}.shape {taken[name]['shape']} does not take "
                f"the encoder's output (graphs.query_encoder.outputs.{name} shape {spec['shape']})"
            )


def read_schema(root: Path, profile_fields: list[str] | None = None) -> dict[str, Any]:
    """A bundle's schema.json as a dict; BundleError naming the file when it is missing,
    not a JSON object, or when its profile vocabulary does not name `profile_fields`
    (the manifest's) in that order."""
    path = Path(root) / "schema.json"
    try:
        schema = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: missing from the bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(schema, dict):
        raise BundleError(f"{path}: not a JSON object")
    vocab = schema.get("vocab_sizes")
    profile = vocab.get("profile") if isinstance(vocab, dict) else None
    if profile_fields is not None and isinstance(profile, dict) and list(profile) != profile_fields:
        raise BundleError(
            f"{path}: vocab_sizes.profile names {list(profile)}, but the manifest's "
            f"profile_fields are {profile_fields}"
        )
    return schema


def read_profiles(root: Path, manifest: Mapping[str, Any]) -> pl.DataFrame:
    """features/users.parquet, checked against the manifest: an integer `index` below
    vocab_sizes.users and one integer column per profile field, each code below that
    field's vocabulary size (the CTR graph looks the codes up in its tables)."""
    path = Path(root) / "features/users.parquet"
    fields: list[str] = list(manifest["profile_fields"])
    frame = read_table(path, ["index", *fields])
    vocab = manifest["vocab_sizes"]
    _check_range(path, frame["index"], "index", int(vocab["users"]))
    for name, size in zip(fields, vocab["profile"], strict=True):
        _check_range(path, frame[name], name, int(size))
    return frame


def read_table(path: Path, columns: list[str]) -> pl.DataFrame:
    """A parquet file of the bundle that must hold these integer columns without nulls;
    BundleError naming the file (and the column) when it is missing, unreadable
    (truncated, not parquet) or lacks one."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: missing from the bundle")
    try:
        frame = pl.read_parquet(path)
    except Exception as error:  # polars and its parquet reader raise many types
        raise BundleError(f"{path}: not a readable parquet file ({one_line(error)})") from None
    for name in columns:
        if name not in frame.columns:
            raise BundleError(
                f"{path}: column '{name}' is missing (columns: {', '.join(frame.columns)})"
            )
        if not frame.schema[name].is_integer():
            raise BundleError(f"{path}: column '{name}' is {frame.schema[name]}, not integer codes")
        if frame[name].null_count():
            raise BundleError(f"{path}: column '{name}' holds {frame[name].null_count()} nulls")
    return frame


def _check_range(path: Path, column: pl.Series, name: str, size: int | None) -> None:
    """Every value of an index or code column in [0, size) (size None: only >= 0)."""
    if len(column) == 0:
        return
    low, high = int(column.min()), int(column.max())  # type: ignore[arg-type]
    if low < 0 or (size is not None and high >= size):
        bound = f"[0, {size})" if size is not None else ">= 0"
        raise BundleError(
            f"{path}: column '{name}' holds {low if low < 0 else high}, outside {bound}"
        )


def _field(body: Mapping[str, Any], path: Path, name: str, kind: type, *, prefix: str = "") -> Any:
    """body[name], which must be a `kind` (a non-empty one for str); BundleError
    `path: field ...` otherwise."""
    value = body.get(name)
    if value is None:
        raise BundleError(f"{path}: field {prefix}{name} is missing")
    if not isinstance(value, kind) or (kind is str and not value):
        raise BundleError(
            f"{path}: field {prefix}{name} must be a {kind.__name__}, not {value!r:.60}"
        )
    return value


def _positive(value: Any, path: Path, where: str) -> int:
    """A positive int (not a bool) at `where`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"{path}: {where} must be a positive integer, not {value!r}")
    return value


def _check_tensors(specs: Any, path: Path, where: str) -> None:
    """`where` (a graph's inputs or outputs): a non-empty name -> {dtype, shape} map,
    dtypes from DTYPES, shapes lists of positive ints (fixed) and names (dynamic)."""
    if not isinstance(specs, dict) or not specs:
        raise BundleError(f"{path}: {where} must map tensor names to dtype and shape")
    for name, spec in specs.items():
        if not isinstance(spec, dict):
            raise BundleError(f"{path}: {where}.{name} must hold dtype and shape")
        dtype = spec.get("dtype")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise BundleError(
                f"{path}: {where}.{name}.dtype {dtype!r} is not one of {', '.join(sorted(DTYPES))}"
            )
        shape = spec.get("shape")
        fine = isinstance(shape, list) and all(
            (isinstance(d, int) and not isinstance(d, bool) and d > 0) or (isinstance(d, str) and d)
            for d in shape
        )
        if not fine:
            raise BundleError(
                f"{path}: {where}.{name}.shape must list sizes and axis names, not {shape!r}"
            )


def one_line(error: Exception) -> str:
    """An exception's message on one line, shortened: readers of a bundle put library
    errors into a BundleError, which the CLI prints as one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def history_lengths(manifest: dict[str, Any]) -> HistoryLengths:
    """The max history lengths the bundle's model was trained with."""
    lengths = manifest["max_lengths"]
    return HistoryLengths(
        clicks=int(lengths["click_history"]),
        queries=int(lengths["query_history"]),
        tokens=int(lengths["query_tokens"]),
        clicks_per_query=int(lengths["query_clicks"]),
    )


def read_query_positives(root: Path, manifest: Mapping[str, Any]) -> QueryPositives | None:
    """The bundle's table by query when its manifest names one (the model reads it),
    checked against the item vocabulary; None otherwise."""
    name = manifest.get("query_positives")
    if name is None:
        return None
    if name != QUERY_POSITIVES_FILE or name not in manifest["files"]:
        raise BundleError(
            f"{Path(root) / MANIFEST}: query_positives names {name!r}, not a bundle file"
        )
    return QueryPositives.read(Path(root) / name, items=int(manifest["vocab_sizes"]["items"]))
