"""The feature schema: the artifact that ties training, export and serving to one dataset.

`queryrec data prepare` writes `schema.json` next to the dataset; everything that consumes
the dataset (training, export, serving) loads it with `load_schema` and compares its
`content_hash` with the one it was built against. The hash covers every data file of the
dataset (their sha256) and the schema's own body, so a changed id map, a changed split or
a re-run of prepare on other raw files all give a different hash.

Torch-free: the service imports this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from queryrec.errors import SchemaMismatchError

SCHEMA_FILE = "schema.json"
SCHEMA_FORMAT_VERSION = 1
PADDING_INDEX = 0  # empty history slot, missing value (author 0, category 0)
UNKNOWN_INDEX = 1  # an id the maps do not know (cold start, item without a features row)
FIRST_INDEX = 2  # the first index given to a real id


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_hash(body: dict[str, Any]) -> str:
    """The hash of a schema body (everything but `content_hash` itself), canonical JSON."""
    canonical = json.dumps(
        {k: v for k, v in body.items() if k != "content_hash"}, sort_keys=True, ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_schema(dataset_dir: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Hash every file listed in `body["files"]`, add the content hash, write schema.json."""
    body = dict(body)
    body["format_version"] = SCHEMA_FORMAT_VERSION
    body["files"] = {name: sha256_file(Path(dataset_dir) / name) for name in sorted(body["files"])}
    body["content_hash"] = content_hash(body)
    (Path(dataset_dir) / SCHEMA_FILE).write_text(
        json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return body


def load_schema(
    dataset_dir: Path, *, verify_files: bool = True, expected_hash: str | None = None
) -> dict[str, Any]:
    """Read and check a dataset's schema.json.

    Checks the format version and the content hash; with `verify_files` also the sha256 of
    every data file; with `expected_hash` that the dataset is the one a checkpoint or bundle
    was built from. Any mismatch raises SchemaMismatchError naming what differs.
    """
    path = Path(dataset_dir) / SCHEMA_FILE
    if not path.is_file():
        raise SchemaMismatchError(
            f"{path}: not found (is this a folder written by 'queryrec data prepare'?)"
        )
    try:
        body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SchemaMismatchError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    version = body.get("format_version")
    if version != SCHEMA_FORMAT_VERSION:
        raise SchemaMismatchError(
            f"{path}: format version {version!r}, this code reads version {SCHEMA_FORMAT_VERSION}; "
            "re-run 'queryrec data prepare'"
        )
    if content_hash(body) != body.get("content_hash"):
        raise SchemaMismatchError(f"{path}: content hash does not match its body (edited by hand?)")
    if expected_hash is not None and body["content_hash"] != expected_hash:
        raise SchemaMismatchError(
            f"{path}: dataset hash {body['content_hash'][:12]} differs from the expected "
            f"{expected_hash[:12]} (the dataset was re-prepared or is another one)"
        )
    if verify_files:
        for name, digest in body["files"].items():
            file = Path(dataset_dir) / name
            if not file.is_file():
                raise SchemaMismatchError(f"{file}: listed in schema.json but missing")
            if sha256_file(file) != digest:
                raise SchemaMismatchError(f"{file}: sha256 differs from schema.json (file changed)")
    return body
