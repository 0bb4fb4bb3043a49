"""The model bundle's layout and its verified manifest (torch-free, ONNX-Runtime-free).

One definition for the writer (`export.bundle`), the serving reader (`service.inference.bundle`)
and offline scoring (`queryrec.evaluation.bundle_scoring`). A bundle is a directory
that holds these files and nothing else:

| file | what |
|---|---|
| `manifest.json` | format version, model version and name, created time, graph inputs/outputs (names, dtypes, shapes), max lengths, offline metrics, exporter settings, parity results, sha256 of every other file (`files`) |
| `manifest.sha256` | the sha256 of manifest.json's bytes, one line in `sha256sum`'s format (`bundle_manifest`: the seal) |
| `query_encoder.onnx` | query histories -> query representations (models with a query tower) |
| `ctr.onnx` | user rows + flat (user row, item) pairs -> P(click) (`export.graphs.CTRGraph`) |
| `schema.json` | the training dataset's schema (vocab sizes, codes, split) |
| `maps/{users,items,words}.parquet` | raw id -> model index (`raw_id`, `index`); anything absent maps to the unknown index 1 |
| `features/users.parquet` | profile codes per user index (what `state load` writes to Redis) |
| `features/items.parquet` | item side features per item index (for reference: `ctr.onnx` already holds every item's vectors) |
| `features/query_positives.parquet` | models with `slot_positives` only: the diffusion job's pseudo-positives by query (`features.query_positives`), which the feature path gives searches without clicked results |

`read_manifest` checks, in order: the seal (manifest.sha256 matches manifest.json's
bytes: no edit after export), the manifest's schema (`bundle_manifest.Manifest`: every
field's type, range and characters), the files (each listed file present with its
sha256, the required ones listed, no file in the folder that the manifest does not
list), and the fields' agreement with each other and with the files
(`check_manifest_fields`: the max lengths and profile fields agree with the shapes the
graphs are declared with). `read_schema`, `read_table` (behind `IdMap.read` and
`read_profiles`) check the other artifacts' contents. Any problem is a `BundleError`
of one line naming the file and the field, so that a broken bundle is refused when it
is loaded, not when the first request meets it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from queryrec.errors import BundleError
from queryrec.features.bundle_manifest import DIGEST_FILE as DIGEST_FILE
from queryrec.features.bundle_manifest import DTYPES as DTYPES
from queryrec.features.bundle_manifest import FORMAT_VERSION as FORMAT_VERSION
from queryrec.features.bundle_manifest import MANIFEST as MANIFEST
from queryrec.features.bundle_manifest import one_line as one_line
from queryrec.features.bundle_manifest import parse_manifest, read_sealed
from queryrec.features.bundle_manifest import write_sealed as write_sealed
from queryrec.features.graph_feeds import COMPUTED_INPUTS, ENCODER_OUTPUTS, USER_SIDE
from queryrec.features.model_inputs import OPTIONAL_INPUTS, USER_INPUTS, HistoryLengths
from queryrec.features.query_positives import QueryPositives
from queryrec.features.schema import UNKNOWN_INDEX, sha256_file

QUERY_POSITIVES_FILE = "features/query_positives.parquet"
ENCODER_FILE = "query_encoder.onnx"
CTR_FILE = "ctr.onnx"
CTR_USER_FILE = "ctr_user.onnx"
"""The split CTR graph's user side (optional: models `export.graphs.splits` accepts)."""
CTR_PAIR_FILE = "ctr_pair.onnx"
"""The split CTR graph's per-request side; present exactly when `CTR_USER_FILE` is."""
ARTIFACTS = (
    "schema.json",
    "maps/users.parquet",
    "maps/items.parquet",
    "maps/words.parquet",
    "features/users.parquet",
    "features/items.parquet",
)
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
GRAPH_INPUTS = frozenset({*USER_INPUTS, *OPTIONAL_INPUTS, "pair_user", "item", *COMPUTED_INPUTS})
"""The names a graph input may have: `ModelInputs` fields, the encoder's outputs and the
split CTR graph's user side."""


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
    """manifest.json of a bundle, verified (the module docstring lists the checks); a
    BundleError of one line naming the file and the field on any problem."""
    root = Path(root)
    path = root / MANIFEST
    manifest = parse_manifest(read_sealed(root), path)
    check_files(root, manifest)
    check_manifest_fields(manifest, path)
    return manifest


def check_files(root: Path, manifest: Mapping[str, Any]) -> None:
    """The bundle's folder holds exactly the files its manifest lists (besides the
    manifest and its seal), each with its listed sha256, and the manifest lists every
    file the service reads. A file nobody listed is refused: it was not exported with the
    model (an editor's backup, a half-copied previous bundle, a file someone meant the
    service to read), and a bundle is served only as exported."""
    path = root / MANIFEST
    files: Mapping[str, str] = manifest["files"]
    sealed = sorted({MANIFEST, DIGEST_FILE} & set(files))
    if sealed:
        raise BundleError(f"{path}: files lists {', '.join(sealed)}, which it cannot hash")
    unlisted = [name for name in (CTR_FILE, *ARTIFACTS) if name not in files]
    if unlisted:
        raise BundleError(f"{path}: manifest does not list {', '.join(unlisted)}")
    for name, expected in sorted(files.items()):
        file = root / name
        if not file.is_file():
            raise BundleError(f"{file}: missing from the bundle")
        if _sha256(file) != expected:
            raise BundleError(f"{file}: sha256 does not match the manifest (file altered)")
    extra = sorted(set(_bundle_files(root)) - {MANIFEST, DIGEST_FILE, *files})
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise BundleError(
            f"{root / extra[0]}: not listed in {MANIFEST}{more}; a bundle holds only the "
            "files 'queryrec export' wrote (remove it, or re-export the model)"
        )


def _sha256(file: Path) -> str:
    """A bundle file's sha256; BundleError naming it when it cannot be read."""
    try:
        return sha256_file(file)
    except OSError as error:
        raise BundleError(f"{file}: cannot be read ({one_line(error.strerror or error)})") from None


def _bundle_files(root: Path) -> list[str]:
    """Every entry below `root` that is not a directory (files, links, anything else),
    as a relative POSIX path; links to directories are entries, not followed."""
    found = []
    for folder, dirs, names in os.walk(root):
        base = Path(folder).relative_to(root)
        links = [d for d in dirs if (Path(folder) / d).is_symlink()]
        for name in (*names, *links):
            found.append((base / name).as_posix())
    return found


def check_manifest_fields(manifest: Mapping[str, Any], path: Path) -> None:
    """The fields of a manifest valid against `bundle_manifest.Manifest` agree with the
    bundle's files and with each other; BundleError `path: field: problem` otherwise.

    Checked: `reads` names inputs the feature path builds; `graphs` has `ctr`, and
    `query_encoder` exactly when the bundle has its file, each graph with its own file
    name and inputs the service can feed; the axes in `FIXED_AXES` equal the lengths the
    feature builder pads to; the encoder's output width is the CTR graph's `query_repr`
    width; `query_positives`, when present, names the bundle's table. That the graph
    files themselves have these inputs is the service's check (`service.inference.bundle`): this
    module does not load ONNX.
    """
    reads = manifest["reads"]
    if not set(reads) <= set(OPTIONAL_INPUTS):
        raise BundleError(
            f"{path}: reads lists {reads}; the feature path builds only {list(OPTIONAL_INPUTS)}"
        )
    graphs: dict[str, Any] = manifest["graphs"]
    expected = {"ctr": CTR_FILE}
    if ENCODER_FILE in manifest["files"]:
        expected["query_encoder"] = ENCODER_FILE
    if CTR_USER_FILE in manifest["files"] or CTR_PAIR_FILE in manifest["files"]:
        expected.update(ctr_user=CTR_USER_FILE, ctr_pair=CTR_PAIR_FILE)
    if set(graphs) != set(expected):
        raise BundleError(
            f"{path}: graphs lists {sorted(graphs)}, but the bundle's files make it "
            f"{sorted(expected)}"
        )
    for key, file in expected.items():
        if graphs[key]["file"] != file:
            raise BundleError(f"{path}: graphs.{key}.file is {graphs[key]['file']!r}, not {file!r}")
        unknown = sorted(set(graphs[key]["inputs"]) - GRAPH_INPUTS)
        if unknown:
            raise BundleError(
                f"{path}: graphs.{key}.inputs names {unknown}, which the service cannot feed"
            )
    _check_fixed_axes(manifest, graphs, path)
    _check_encoder_link(graphs, path)
    if "ctr_user" in graphs:
        _check_split_link(graphs, path)
    positives = manifest.get("query_positives")
    if positives is not None and (
        positives != QUERY_POSITIVES_FILE or positives not in manifest["files"]
    ):
        raise BundleError(f"{path}: query_positives names {positives!r}, not a bundle file")


def _check_fixed_axes(manifest: Mapping[str, Any], graphs: dict[str, Any], path: Path) -> None:
    """Each graph input in `FIXED_AXES` has, on that axis, the size the manifest's max
    lengths or profile fields give it (what the service pads its feeds to)."""
    lengths = manifest["max_lengths"]
    sizes = {
        "max_lengths.query_tokens": lengths["query_tokens"],
        "max_lengths.query_clicks": lengths["query_clicks"],
        "max_lengths.click_history": lengths["click_history"],
        "profile_fields": len(manifest["profile_fields"]),
    }
    for key, graph in graphs.items():
        for (name, axis), source in FIXED_AXES.items():
            spec = graph["inputs"].get(name)
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


def _check_split_link(graphs: dict[str, Any], path: Path) -> None:
    """The split pair: the pair graph takes the user graph's outputs, exactly, at their
    shapes, and both read the encoder's outputs only where the single CTR graph does."""
    side = graphs["ctr_user"]["outputs"]
    taken = {n: v for n, v in graphs["ctr_pair"]["inputs"].items() if n in USER_SIDE}
    if set(side) != set(taken) or not set(side) <= set(USER_SIDE):
        raise BundleError(
            f"{path}: graphs.ctr_pair takes the user side {sorted(taken)}, but graphs.ctr_user "
            f"gives {sorted(side)}"
        )
    for name, spec in side.items():
        given, wanted = spec["shape"][1:], taken[name]["shape"][1:]
        # a named (dynamic) axis of the pair graph takes any size of the user side's
        if len(given) != len(wanted) or any(
            isinstance(w, int) and w != g for g, w in zip(given, wanted, strict=True)
        ):
            raise BundleError(
                f"{path}: graphs.ctr_pair.inputs.{name}.shape {taken[name]['shape']} does not "
                f"take graphs.ctr_user.outputs.{name} (shape {spec['shape']})"
            )
    for key in ("ctr_user", "ctr_pair"):
        extra = {n for n in graphs[key]["inputs"] if n in ENCODER_OUTPUTS} - set(
            graphs["ctr"]["inputs"]
        )
        if extra:
            raise BundleError(
                f"{path}: graphs.{key} reads {sorted(extra)}, which graphs.ctr does not"
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
