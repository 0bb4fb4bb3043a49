"""The bundle manifest: its seal (`manifest.sha256`) and its schema (pydantic).

Seal. `queryrec export` writes `manifest.sha256` beside `manifest.json`: one line in
`sha256sum`'s format, `<64 hex digits>  manifest.json`, the sha256 of the manifest's
bytes exactly as written. A reader checks it before it parses anything, so any edit of
the manifest after export (a value, a removed record, even a re-indent) is refused.
A sidecar over the bytes, rather than a field inside the manifest computed over the rest
of it, because:
- there is nothing to canonicalise: a field inside would hash a canonical JSON form (key
  order, whitespace, float spelling, NaN) that the writer and every reader must rebuild
  identically; the bytes as written need no such rule;
- it is checkable without queryrec (`sha256sum -c manifest.sha256` in the bundle folder);
- manifest.json keeps its content, so an older reader, which ignores files it does not
  know, still reads a new bundle (rolling back the service keeps working).
The manifest's `files` already holds the sha256 of every other file, so the seal covers
the whole bundle. Like those hashes it guards against edits, corruption and partial
copies; it is not a signature: whoever can write the folder can also reseal it.

Schema. `Manifest` is every field `queryrec export` writes and readers rely on, checked
strictly (no coercion: "8" is not an integer, true is not 1; unknown top-level fields
are refused): required keys, types, ranges, safe characters and bounded lengths for the
strings that reach logs, metrics labels and responses (`model_version`: at most 128 of
`[A-Za-z0-9._:+-]`), relative bundle paths (no `..`, no absolute path, no hidden file),
and the consistency of fields with each other that needs no other file. The checks
against the files (hashes, graphs, tables) are `bundle_format`'s and `service.inference.bundle`'s.

Every problem is a `BundleError` of one line naming the file and the field.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from queryrec.errors import BundleError

FORMAT_VERSION = 2  # 2: graph inputs are ModelInputs fields by name; search clicks
MANIFEST = "manifest.json"
DIGEST_FILE = "manifest.sha256"
MAX_MANIFEST_BYTES = 1 << 20  # an exported manifest is a few KiB
MAX_HISTORY = 4096  # bound of every max length (the smoke run allocates that many slots)
MAX_SIZE = 1 << 40  # bound of vocabulary sizes and fixed tensor sizes
DType = Literal["bool", "int32", "int64", "float16", "float32", "float64"]
DTYPES = frozenset(get_args(DType))
"""Element types a manifest may declare for a graph input or output (numpy names)."""

_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,127}"
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"  # a path component: no '.', '..', hidden file
_DIGEST_LINE = re.compile(rf"([0-9a-f]{{64}})  {re.escape(MANIFEST)}\n?")
_SHOWN = 60  # characters of an offending value a message shows

Name = Annotated[str, StringConstraints(pattern=rf"^{_NAME}$")]
"""Tensor, axis, profile field and record key names."""
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
ModelVersion = Annotated[str, StringConstraints(max_length=128, pattern=r"^[A-Za-z0-9._:+-]+$")]
ModelName = Annotated[
    str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
Text = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Count = Annotated[int, Field(ge=1, le=MAX_SIZE)]
HistoryLength = Annotated[int, Field(ge=1, le=MAX_HISTORY)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


def _timestamp(value: str) -> str:
    """An ISO 8601 time with its UTC offset (what export writes in `created`)."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"must be an ISO 8601 time, not {shown(value)}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"must be an ISO 8601 time with its UTC offset, not {shown(value)}")
    return value


def _dimension(value: object) -> int | str:
    """One entry of a declared shape: a fixed size or the name of a dynamic axis."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIZE:
        return value
    if isinstance(value, str) and re.fullmatch(_NAME, value):
        return value
    raise ValueError(f"a shape lists fixed sizes and axis names, not {shown(value)}")


def _relative_path(value: str) -> str:
    """A file inside the bundle: relative, '/'-separated names of `_PART`'s characters
    (so no '..', no absolute path, no hidden file, no backslash)."""
    if not re.fullmatch(rf"{_PART}(/{_PART})*", value):
        raise ValueError(
            f"must name a file inside the bundle (a relative path without '..' or hidden "
            f"names), not {shown(value)}"
        )
    return value


Timestamp = Annotated[str, StringConstraints(max_length=64), AfterValidator(_timestamp)]
RelativePath = Annotated[str, StringConstraints(max_length=1024), AfterValidator(_relative_path)]
"""A file inside the bundle, relative to its folder."""
Dimension = Annotated[int | str, PlainValidator(_dimension)]


class _Record(BaseModel):
    """A manifest record whose keys are all known: strict types, no other key."""

    # protected_namespaces: the manifest has a field `model_config` (see `Manifest`)
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, protected_namespaces=())


class _OpenRecord(BaseModel):
    """A record written by code that may add keys (a model's or a step's settings): the
    keys readers use are checked, others are kept as they are."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class Tensor(_Record):
    """A graph input or output: element type and shape."""

    dtype: DType
    shape: Annotated[list[Dimension], Field(max_length=8)]


Tensors = Annotated[dict[Name, Tensor], Field(min_length=1, max_length=64)]


class Graph(_Record):
    """One ONNX graph of the bundle: its file and its inputs and outputs."""

    file: RelativePath
    inputs: Tensors
    outputs: Tensors


class Dataset(_Record):
    """The training dataset: its schema hash, folder and split."""

    schema_hash: Sha256
    path: Text
    split: dict[str, Any]


class ModelSettings(_OpenRecord):
    """The model's configuration (`ModelConfig` without the vocabulary)."""

    dim: Count
    click_history: HistoryLength
    query_history: HistoryLength
    query_tokens: HistoryLength
    query_clicks: HistoryLength


class VocabSizes(_OpenRecord):
    """Table sizes; the service checks the id maps and profile codes against them."""

    users: Count
    items: Count
    words: Count
    profile: Annotated[list[Count], Field(max_length=256)]


class MaxLengths(_Record):
    """The history lengths the feature path pads to."""

    click_history: HistoryLength
    query_history: HistoryLength
    query_tokens: HistoryLength
    query_clicks: HistoryLength


class Exporter(_OpenRecord):
    """Versions and settings of the export."""

    torch: ShortText
    onnxruntime: ShortText
    method: ShortText
    opset: Annotated[int, Field(ge=1, le=1000)]


class Parity(_Record):
    """ONNX Runtime vs PyTorch at export; a bundle past its tolerance is not served."""

    tolerance: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    max_abs_diff: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    cases: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=1000)]

    @model_validator(mode="after")
    def _within_tolerance(self) -> Self:
        if self.max_abs_diff > self.tolerance:
            raise ValueError(
                f"max_abs_diff {self.max_abs_diff:.3g} is above tolerance "
                f"{self.tolerance:.3g}: the graphs do not compute what the model does"
            )
        return self


class Calibration(_OpenRecord):
    """How the CTR graph's probabilities are calibrated: `none`, or Platt scaling with
    its slope `a` and offset `b` (inside the graph)."""

    method: Text
    a: Finite | None = None
    b: Finite | None = None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.method == "none":
            return self
        if not self.method.startswith("platt"):
            raise ValueError(f"method must be none or platt, not {shown(self.method)}")
        if self.a is None or self.b is None:
            raise ValueError("method is platt, but its slope a or offset b is missing")
        return self


class Quantization(_OpenRecord):
    """The CTR graph's weights: float (`none`) or INT8, with the test AUC of both."""

    mode: Literal["none", "int8"]
    auc_fp32: Finite | None = None
    auc_int8: Finite | None = None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.mode == "int8" and (self.auc_fp32 is None or self.auc_int8 is None):
            raise ValueError("mode is int8, but auc_fp32 or auc_int8 is missing")
        return self


class Manifest(_Record):
    """Every field of manifest.json (`export.bundle` writes them)."""

    format_version: int
    model_name: ModelName
    model_version: ModelVersion
    created: Timestamp
    dataset: Dataset
    model_config_: ModelSettings = Field(alias="model_config")  # (pydantic owns the name)
    vocab_sizes: VocabSizes
    max_lengths: MaxLengths
    reads: Annotated[list[Name], Field(max_length=64)]
    profile_fields: Annotated[list[Name], Field(max_length=256)]
    # ctr; query_encoder for models with a query tower; ctr_user and ctr_pair, the split
    # CTR graph, for models whose graph splits (which graphs a bundle has follows from
    # its files: `bundle_format.check_manifest_fields`)
    graphs: Annotated[
        dict[Literal["ctr", "query_encoder", "ctr_user", "ctr_pair"], Graph], Field(min_length=1)
    ]
    ctr_layout: Text
    offline_metrics: dict[str, Any]
    exporter: Exporter
    parity: Parity
    calibration: Calibration
    quantization: Quantization
    query_positives: RelativePath | None = None
    files: Annotated[dict[RelativePath, Sha256], Field(min_length=1, max_length=256)]

    @field_validator("format_version")
    @classmethod
    def _supported(cls, version: int) -> int:
        if version != FORMAT_VERSION:
            raise ValueError(
                f"bundle format version {version!r} is not supported (this code reads "
                f"{FORMAT_VERSION}); re-export the model with this version of queryrec"
            )
        return version

    @field_validator("profile_fields")
    @classmethod
    def _distinct(cls, fields: list[str]) -> list[str]:
        if len(set(fields)) != len(fields):
            raise ValueError(f"must be distinct column names, not {shown(fields)}")
        return fields

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        fields, sizes = self.profile_fields, self.vocab_sizes.profile
        if len(sizes) != len(fields):
            raise ValueError(
                f"vocab_sizes.profile must list one size per profile field ({len(fields)}), "
                f"not {shown(sizes)}"
            )
        for name, length in self.max_lengths:
            trained = getattr(self.model_config_, name)
            if length != trained:
                raise ValueError(
                    f"max_lengths.{name} is {length}, but model_config.{name} (what the "
                    f"model was trained with) is {trained}"
                )
        return self


def digest_line(data: bytes) -> str:
    """The content of manifest.sha256 for manifest bytes `data` (sha256sum's format)."""
    return f"{hashlib.sha256(data).hexdigest()}  {MANIFEST}\n"


def write_sealed(root: Path, manifest: dict[str, Any]) -> None:
    """Write manifest.json and then its seal, manifest.sha256 (the two files a bundle's
    writer writes last: a folder without them is not a bundle)."""
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    (Path(root) / MANIFEST).write_bytes(data)
    reseal(root)


def reseal(root: Path) -> None:
    """Write manifest.sha256 for the manifest.json now in `root`. The exporter's last
    step; anything else that calls it vouches for the manifest as it is."""
    data = (Path(root) / MANIFEST).read_bytes()
    (Path(root) / DIGEST_FILE).write_text(digest_line(data))


def read_sealed(root: Path) -> bytes:
    """The bytes of `root`'s manifest.json, checked against manifest.sha256; BundleError
    when either is missing, the manifest is larger than any manifest export writes, or
    the digest does not match (the manifest was edited after export)."""
    root = Path(root)
    path, seal = root / MANIFEST, root / DIGEST_FILE
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (is {root} a bundle from 'queryrec export'?)")
    if not seal.is_file():
        raise BundleError(
            f"{seal}: missing; a bundle carries the sha256 of its manifest there (a bundle "
            "exported before manifests were sealed is not served: re-export the model with "
            "this version of queryrec)"
        )
    data = _read_bounded(path, MAX_MANIFEST_BYTES, "a bundle manifest")
    match = _DIGEST_LINE.fullmatch(_read_bounded(seal, 256, "a manifest seal").decode("latin-1"))
    if match is None:
        raise BundleError(
            f"{seal}: not one line '<sha256>  {MANIFEST}' as 'queryrec export' writes it"
        )
    if hashlib.sha256(data).hexdigest() != match.group(1):
        raise BundleError(
            f"{path}: sha256 does not match {DIGEST_FILE} (the manifest was edited after "
            "export; re-export the model)"
        )
    return data


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A file's bytes; BundleError naming it when it holds more than `limit` (it is not
    `what`, which is never that large)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise BundleError(f"{path}: cannot be read ({one_line(error.strerror or error)})") from None
    if len(data) > limit:
        raise BundleError(f"{path}: larger than {limit:,} bytes, not {what}")
    return data


def parse_manifest(data: bytes, path: Path) -> dict[str, Any]:
    """Manifest bytes -> the manifest as a dict, valid against `Manifest`; BundleError
    `path: problem` when they are not UTF-8 JSON text of an object, or the object does
    not fit the schema (the first problem, and how many more there are)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BundleError(
            f"{path}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start})"
        ) from None
    if not text.strip():
        raise BundleError(f"{path}: empty, not a manifest")
    try:
        body = json.loads(text)
    except RecursionError:
        raise BundleError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as error:  # JSONDecodeError, and integers too long to convert
        raise BundleError(f"{path}: not valid JSON ({one_line(error)})") from None
    if not isinstance(body, dict):
        raise BundleError(f"{path}: not a JSON object but {_json_kind(body)}")
    try:
        Manifest.model_validate(body)
    except ValidationError as error:
        raise BundleError(f"{path}: {describe(error)}") from None
    return body


def describe(error: ValidationError) -> str:
    """A pydantic ValidationError as one line: its first problem, with the field's dotted
    path, and the count of the others."""
    problems = error.errors(include_url=False)
    first = _problem(problems[0])
    more = len(problems) - 1
    return first if not more else f"{first} (and {more} more problem{'s' * (more > 1)})"


def _problem(detail: ErrorDetails) -> str:
    """One pydantic error: `field X is missing`, `field X: message, not <value>`, or,
    for a check over several fields, its own message."""
    where = _location(detail["loc"])
    kind = detail["type"]
    if kind == "missing":
        return f"field {where} is missing"
    if kind == "extra_forbidden":
        return f"field {where} is not part of the bundle format"
    if kind == "value_error":  # our own checks: their message says what is wrong
        message = str(detail.get("ctx", {}).get("error", detail["msg"]))
        return f"field {where}: {message}" if where else message
    if kind in ("too_short", "too_long"):  # a list or a map: the message gives its length
        return f"field {where}: {one_line(detail['msg'])}"
    return f"field {where}: {one_line(detail['msg'])}, not {shown(detail['input'])}"


def _location(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the manifest's dotted path (`graphs.ctr.inputs.item`,
    `vocab_sizes.profile[2]`, `files['../x']`)."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            text += " (the name)"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            text += f".{part}" if text else part
        else:
            text += f"[{shown(part)}]"
    return text


def shown(value: object) -> str:
    """A value for a one-line message: its repr (newlines and control characters
    escaped), at most `_SHOWN` characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 3]}..."


def one_line(error: object) -> str:
    """An exception's (or any) message on one line, shortened: readers of a bundle put
    library errors into a BundleError, which the CLI prints as one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _json_kind(value: object) -> str:
    """What a JSON document is, for a message: an array, a number, ..."""
    kinds: dict[type, str] = {list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return kinds.get(type(value), type(value).__name__)
