"""A broken bundle is refused when it is loaded, before the server binds its port: every
problem (an edited manifest, a manifest of any other shape or with any field out of its
schema, a file the manifest does not list, a manifest that disagrees with its graphs or
tables, a corrupt or missing artifact, a graph that loads but cannot run) is one
BundleError line, exit 2 from `queryrec serve`, no traceback, and the same line answers
a reload of a running server, which keeps its model.

Each case breaks a private copy of the session's `bundle`. An edit of manifest.json is
refused by its seal (manifest.sha256) before anything else looks at it: the "edited"
cases show that. Every other manifest case reseals the edited manifest, as an exporter
would have sealed it, so that the check under test is the one that answers; likewise,
where the manifest's sha256 of a file would refuse an altered file first, the case
rewrites that hash. Never call `serve` on a good bundle here: it would serve until
killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import polars as pl
import pytest

from app.cli import main
from queryrec.features.bundle_manifest import DIGEST_FILE, MANIFEST, reseal, write_sealed
from queryrec.features.schema import sha256_file
from service.errors import BundleError
from service.inference.bundle_loader import load_bundle
from tests.service.harness import ServerThread

SEAL_BROKEN = "manifest.json: sha256 does not match manifest.sha256"


def _manifest(root: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((root / "manifest.json").read_text())
    return manifest


def _edit_manifest(root: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the manifest and reseal it (the check under test answers, not the seal)."""
    manifest = _manifest(root)
    edit(manifest)
    write_sealed(root, manifest)


def _rehash(root: Path, *names: str) -> None:
    """Make the manifest's sha256 agree with an altered file (so read_manifest passes)."""

    def edit(manifest: dict[str, Any]) -> None:
        for name in names:
            manifest["files"][name] = sha256_file(root / name)

    _edit_manifest(root, edit)


def _rename_ctr_input(root: Path) -> None:
    def edit(m: dict[str, Any]) -> None:
        inputs = m["graphs"]["ctr"]["inputs"]
        m["graphs"]["ctr"]["inputs"] = {
            ("user_id" if k == "user" else k): v for k, v in inputs.items()
        }

    _edit_manifest(root, edit)


def _setter(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit that sets one manifest field (dotted path) to `value`."""

    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = m
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


def _dropper(path: str) -> Callable[[dict[str, Any]], None]:
    """An edit that deletes one manifest field (dotted path)."""

    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = m
        for key in parents:
            node = node[key]
        del node[last]

    return edit


def _resealed(*edits: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """A breaker that applies manifest edits and reseals the manifest."""

    def breaker(root: Path) -> None:
        def edit(m: dict[str, Any]) -> None:
            for one in edits:
                one(m)

        _edit_manifest(root, edit)

    return breaker


def _set(path: str, value: Any) -> Callable[[Path], None]:
    """A breaker that sets one manifest field (dotted path) to `value`, resealed."""
    return _resealed(_setter(path, value))


def _drop(path: str) -> Callable[[Path], None]:
    """A breaker that deletes one manifest field (dotted path), resealed."""
    return _resealed(_dropper(path))


def _tamper(*edits: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """A breaker that edits the manifest after export, as a hand edit would (written as
    export writes it: only the edit differs), not resealed."""

    def breaker(root: Path) -> None:
        manifest = _manifest(root)
        for edit in edits:
            edit(manifest)
        (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    return breaker


def _reindent(root: Path) -> None:
    """The manifest re-indented, its content the same (not resealed)."""
    (root / MANIFEST).write_text(json.dumps(_manifest(root), indent=4))


def _manifest_bytes(content: bytes, *, seal: bool = True) -> Callable[[Path], None]:
    """A breaker that replaces manifest.json by `content` (resealed unless `seal` is
    False)."""

    def breaker(root: Path) -> None:
        (root / MANIFEST).write_bytes(content)
        if seal:
            reseal(root)

    return breaker


def _seal_text(content: str) -> Callable[[Path], None]:
    """A breaker that replaces manifest.sha256 by `content`."""

    def breaker(root: Path) -> None:
        (root / DIGEST_FILE).write_text(content)

    return breaker


def _add_file(name: str, content: bytes = b"not part of the model") -> Callable[[Path], None]:
    """A breaker that puts a file the manifest does not list into the bundle folder."""

    def breaker(root: Path) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)

    return breaker


def _add_link(name: str, target: str) -> Callable[[Path], None]:
    """A breaker that puts an unlisted symbolic link into the bundle folder."""

    def breaker(root: Path) -> None:
        os.symlink(target, root / name)

    return breaker


def _list_file(name: str, digest: str | None = None) -> Callable[[Path], None]:
    """A breaker that lists one more file in the manifest (`digest`: the sha256 listed,
    default the sha256 of schema.json), resealed."""

    def breaker(root: Path) -> None:
        listed = digest or sha256_file(root / "schema.json")
        _edit_manifest(root, lambda m: m["files"].__setitem__(name, listed))

    return breaker


def _nested(depth: int) -> bytes:
    """A JSON document of `depth` nested arrays inside the manifest's object."""
    return b'{"format_version": ' + b"[" * depth + b"]" * depth + b"}"


def _narrow_query_repr(root: Path) -> None:
    """Both the encoder's output and the CTR input declared 16 wide (the graphs: 32)."""

    def edit(m: dict[str, Any]) -> None:
        m["graphs"]["query_encoder"]["outputs"]["query_repr"]["shape"] = ["users", 16]
        m["graphs"]["ctr"]["inputs"]["query_repr"]["shape"] = ["users", 16]

    _edit_manifest(root, edit)


def _rewrite_parquet(
    name: str, change: Callable[[pl.DataFrame], pl.DataFrame]
) -> Callable[[Path], None]:
    def breaker(root: Path) -> None:
        path = root / name
        change(pl.read_parquet(path)).write_parquet(path)
        _rehash(root, name)

    return breaker


def _truncate(name: str) -> Callable[[Path], None]:
    def breaker(root: Path) -> None:
        path = root / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        _rehash(root, name)

    return breaker


def _overwrite(name: str, content: bytes) -> Callable[[Path], None]:
    def breaker(root: Path) -> None:
        (root / name).write_bytes(content)
        _rehash(root, name)

    return breaker


def _ctr_is_the_encoder(root: Path) -> None:
    """ctr.onnx replaced by the (loadable, runnable) encoder graph, hash rewritten: only
    the comparison of the graph with the manifest's declared inputs can catch it."""
    shutil.copyfile(root / "query_encoder.onnx", root / "ctr.onnx")
    _rehash(root, "ctr.onnx")


def _remove(name: str) -> Callable[[Path], None]:
    def breaker(root: Path) -> None:
        (root / name).unlink()

    return breaker


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    # manifest vs graphs
    "input renamed": (
        _rename_ctr_input,
        "graphs.ctr.inputs names ['user_id'], which the service cannot feed",
    ),
    "dtype changed": (
        _set("graphs.ctr.inputs.item.dtype", "int32"),
        "graphs.ctr.inputs.item.dtype is int32, but ctr.onnx has tensor(int64)",
    ),
    "unknown dtype": (
        _set("graphs.ctr.inputs.hour.dtype", "int128"),
        "field graphs.ctr.inputs.hour.dtype: Input should be 'bool', 'int32'",
    ),
    "rank changed": (
        _set("graphs.ctr.inputs.hour.shape", ["users", 1]),
        "graphs.ctr.inputs.hour.shape ['users', 1] has rank 2",
    ),
    "fixed size changed on both sides": (
        _narrow_query_repr,
        "graphs.query_encoder.outputs.query_repr.shape[1] is 16, but query_encoder.onnx has 32",
    ),
    "dynamic axis declared fixed": (
        _set("graphs.ctr.inputs.item.shape", [5]),
        "graphs.ctr.inputs.item.shape[0] is 5, but ctr.onnx has a dynamic axis",
    ),
    "ctr.onnx is the encoder graph": (
        _ctr_is_the_encoder,
        "graphs.ctr.inputs declares query_repr, user, hour, profile, "
        "click_history, pair_user, item, which ctr.onnx does not have",
    ),
    # manifest fields vs each other
    "max_lengths changed": (
        _set("max_lengths.click_history", 40),
        "max_lengths.click_history is 40, but model_config.click_history (what the model "
        "was trained with) is 50",
    ),
    "max_lengths and model_config changed": (
        _resealed(
            _setter("max_lengths.click_history", 40), _setter("model_config.click_history", 40)
        ),
        "max_lengths.click_history is 40, but graphs.ctr.inputs.click_history.shape[1] is 50",
    ),
    "query width disagrees between graphs": (
        _set("graphs.ctr.inputs.query_repr.shape", ["users", 16]),
        "does not take the encoder's output",
    ),
    "profile field dropped from the manifest": (
        _set("profile_fields", ["search_active_level", "rec_active_level", "onehot_feat1"]),
        "vocab_sizes.profile must list one size per profile field",
    ),
    "profile_fields missing": (_drop("profile_fields"), "field profile_fields is missing"),
    "max length not a number": (
        _set("max_lengths.query_tokens", "8"),
        "field max_lengths.query_tokens: Input should be a valid integer, not '8'",
    ),
    "graph missing from the manifest": (
        _drop("graphs.query_encoder"),
        "graphs lists ['ctr', 'ctr_pair', 'ctr_user'], but the bundle's files make it "
        "['ctr', 'ctr_pair', 'ctr_user', 'query_encoder']",
    ),
    "split graph missing from the manifest": (
        _drop("graphs.ctr_pair"),
        "graphs lists ['ctr', 'ctr_user', 'query_encoder'], but the bundle's files make it "
        "['ctr', 'ctr_pair', 'ctr_user', 'query_encoder']",
    ),
    "pair graph not taking the user side": (
        _drop("graphs.ctr_pair.inputs.count_keys"),
        "graphs.ctr_pair takes the user side ['click_total', 'history_rows', 'user_first'], "
        "but graphs.ctr_user gives ['click_total', 'count_keys', 'history_rows', 'user_first']",
    ),
    "graph file renamed": (
        _set("graphs.ctr.file", "other.onnx"),
        "graphs.ctr.file is 'other.onnx'",
    ),
    "model_version missing": (_drop("model_version"), "field model_version is missing"),
    # the history length the graph's positions cannot take: only a run shows it
    "query history longer than the graph": (
        _resealed(
            _setter("max_lengths.query_history", 30), _setter("model_config.query_history", 30)
        ),
        "query_encoder.onnx: smoke run (users=1 L=30) failed",
    ),
    # tables
    "profile column dropped": (
        _rewrite_parquet("features/users.parquet", lambda f: f.drop("onehot_feat2")),
        "features/users.parquet: column 'onehot_feat2' is missing",
    ),
    "profile codes as text": (
        _rewrite_parquet(
            "features/users.parquet", lambda f: f.with_columns(pl.col("onehot_feat1").cast(pl.Utf8))
        ),
        "column 'onehot_feat1' is String, not integer codes",
    ),
    "profile code beyond its vocabulary": (
        _rewrite_parquet(
            "features/users.parquet",
            lambda f: f.with_columns(pl.lit(99, dtype=pl.Int16).alias("rec_active_level")),
        ),
        "column 'rec_active_level' holds 99, outside [0, 6)",
    ),
    "item index beyond the vocabulary": (
        _set("vocab_sizes.items", 1000),
        "maps/items.parquet: column 'index' holds",
    ),
    "id map column renamed": (
        _rewrite_parquet("maps/words.parquet", lambda f: f.rename({"raw_id": "raw"})),
        "maps/words.parquet: column 'raw_id' is missing",
    ),
    "id map with nulls": (
        _rewrite_parquet(
            "maps/users.parquet",
            lambda f: f.with_columns(
                pl.when(pl.col("index") == 2).then(None).otherwise(pl.col("index")).alias("index")
            ),
        ),
        "maps/users.parquet: column 'index' holds 1 nulls",
    ),
    "id map truncated": (
        _truncate("maps/items.parquet"),
        "maps/items.parquet: not a readable parquet",
    ),
    "schema.json garbage": (_overwrite("schema.json", b"{not json"), "schema.json: not valid JSON"),
    "schema.json not an object": (
        _overwrite("schema.json", b"[1, 2]"),
        "schema.json: not a JSON object",
    ),
    "graph ORT cannot load": (
        _overwrite("ctr.onnx", b"\x08\x07garbage"),
        "ctr.onnx: ONNX Runtime cannot load it",
    ),
    "file missing": (_remove("maps/users.parquet"), "maps/users.parquet: missing from the bundle"),
    "manifest syntax error": (_manifest_bytes(b'{"format_version": 1,'), "not valid JSON"),
}
TRAVERSAL = "(the name): must name a file inside the bundle"
# Every manifest edit, resealed or not, each field serving reads (or the admin API shows)
# out of its type, range or characters, and the folder against the manifest's list.
MANIFEST_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    # edits after export: the seal answers, whatever the edit
    "edited: model_version": (_tamper(_setter("model_version", "queryrec-1-abc")), SEAL_BROKEN),
    "edited: model_name": (_tamper(_setter("model_name", "din")), SEAL_BROKEN),
    "edited: model_config.dim": (_tamper(_setter("model_config.dim", 64)), SEAL_BROKEN),
    "edited: quantization.mode": (
        _tamper(_setter("quantization", {"mode": "int8", "auc_fp32": 0.7, "auc_int8": 0.7})),
        SEAL_BROKEN,
    ),
    "edited: calibration record removed": (_tamper(_dropper("calibration")), SEAL_BROKEN),
    "edited: offline metric": (_tamper(_setter("offline_metrics.test.auc", 0.99)), SEAL_BROKEN),
    "edited: whitespace only": (_reindent, SEAL_BROKEN),
    "edited: a JSON list": (_manifest_bytes(b"[1, 2]", seal=False), SEAL_BROKEN),
    # the seal itself
    "seal missing": (_remove(DIGEST_FILE), "manifest.sha256: missing"),
    "seal of other bytes": (_seal_text(f"{'0' * 64}  manifest.json\n"), SEAL_BROKEN),
    "seal not a sha256 line": (_seal_text("sealed\n"), "manifest.sha256: not one line"),
    "seal names another file": (
        _seal_text(f"{'0' * 64}  ctr.onnx\n"),
        "manifest.sha256: not one line",
    ),
    "seal too long": (
        _seal_text("0" * 10_000),
        "manifest.sha256: larger than 256 bytes, not a manifest seal",
    ),
    "manifest missing": (_remove(MANIFEST), "manifest.json: no manifest"),
    # the folder against the manifest's files
    "unlisted file": (_add_file("extra.txt"), "extra.txt: not listed in manifest.json"),
    "unlisted hidden file in a folder": (
        _add_file("maps/.users.parquet.swp"),
        "maps/.users.parquet.swp: not listed in manifest.json",
    ),
    "unlisted link": (_add_link("outside", "/etc/hostname"), "outside: not listed"),
    "path traversal in files": (_list_file("../outside.parquet"), TRAVERSAL),
    "absolute path in files": (_list_file("/etc/hostname"), TRAVERSAL),
    "hidden file in files": (_list_file(".hidden"), TRAVERSAL),
    "files lists the manifest": (
        _list_file("manifest.json"),
        "files lists manifest.json, which it cannot hash",
    ),
    "files lists a missing file": (_list_file("maps/other.parquet"), "other.parquet: missing"),
    "files hash not hex": (
        _list_file("schema.json", "Z" * 64),
        "field files['schema.json']: String should match pattern",
    ),
    "files empty": (_set("files", {}), "field files: Dictionary should have at least 1 item"),
    "files a list": (_set("files", ["ctr.onnx"]), "field files: Input should be a valid dict"),
    "graph file outside the bundle": (_set("graphs.ctr.file", "../ctr.onnx"), "graphs.ctr.file"),
    "query_positives outside the bundle": (
        _set("query_positives", "../../etc/passwd"),
        "field query_positives: must name a file inside the bundle",
    ),
    "query_positives not the table": (
        _set("query_positives", "schema.json"),
        "query_positives names 'schema.json', not a bundle file",
    ),
    # the document's shape (resealed)
    "manifest a JSON list": (_manifest_bytes(b"[1, 2]"), "not a JSON object but an array"),
    "manifest a number": (_manifest_bytes(b"42"), "not a JSON object but a number"),
    "manifest a string": (_manifest_bytes(b'"bundle"'), "not a JSON object but a string"),
    "manifest null": (_manifest_bytes(b"null"), "not a JSON object but null"),
    "manifest empty": (_manifest_bytes(b""), "manifest.json: empty"),
    "manifest blank": (_manifest_bytes(b" \n\n"), "manifest.json: empty"),
    "manifest not UTF-8": (
        _manifest_bytes(b'{"model_name": "\xff\xfe"}'),
        "manifest.json: not UTF-8 text (byte 0xff at offset 16)",
    ),
    "manifest nested too deeply": (_manifest_bytes(_nested(100_000)), "nested too deeply"),
    "manifest with a 5000-digit number": (
        _manifest_bytes(b'{"format_version": ' + b"9" * 5000 + b"}"),
        "not valid JSON",
    ),
    "manifest larger than any export writes": (
        _set("ctr_layout", "x" * (1 << 20)),
        "manifest.json: larger than 1,048,576 bytes",
    ),
    "unknown top-level field": (
        _set("served_by", "me"),
        "field served_by is not part of the bundle format",
    ),
    # model_version and model_name: what logs, metrics and responses carry
    "model_version with a newline": (
        _set("model_version", "queryrec-1\nqueryrec-2"),
        "field model_version: String should match pattern",
    ),
    "model_version of 10,000 characters": (
        _set("model_version", "v" * 10_000),
        "field model_version: String should have at most 128 characters",
    ),
    "model_version with unsafe characters": (
        _set("model_version", "queryrec v1/../x"),
        "field model_version: String should match pattern",
    ),
    "model_version empty": (_set("model_version", ""), "field model_version: String should"),
    "model_version a number": (
        _set("model_version", 3),
        "field model_version: Input should be a valid string, not 3",
    ),
    "model_name with unsafe characters": (
        _set("model_name", "din; drop"),
        "field model_name: String should match pattern",
    ),
    "model_name missing": (_drop("model_name"), "field model_name is missing"),
    # the other fields
    "format_version foreign": (_set("format_version", 99), "format version 99 is not supported"),
    "format_version a string": (
        _set("format_version", "2"),
        "field format_version: Input should be a valid integer, not '2'",
    ),
    "created not a time": (
        _set("created", "yesterday"),
        "field created: must be an ISO 8601 time, not 'yesterday'",
    ),
    "created without its offset": (
        _set("created", "2024-01-01T00:00:00"),
        "field created: must be an ISO 8601 time with its UTC offset",
    ),
    "dataset.schema_hash not a sha256": (
        _set("dataset.schema_hash", "abc"),
        "field dataset.schema_hash: String should match pattern",
    ),
    "model_config missing": (_drop("model_config"), "field model_config is missing"),
    "model_config.dim zero": (
        _set("model_config.dim", 0),
        "field model_config.dim: Input should be greater than or equal to 1, not 0",
    ),
    "model_config.dim a string": (
        _set("model_config.dim", "32"),
        "field model_config.dim: Input should be a valid integer, not '32'",
    ),
    "model_config.dim a boolean": (
        _set("model_config.dim", True),
        "field model_config.dim: Input should be a valid integer, not True",
    ),
    "vocab_sizes.users negative": (
        _set("vocab_sizes.users", -1),
        "field vocab_sizes.users: Input should be greater than or equal to 1",
    ),
    "vocab_sizes.items fractional": (
        _set("vocab_sizes.items", 1.5),
        "field vocab_sizes.items: Input should be a valid integer, not 1.5",
    ),
    "vocab_sizes.profile entry zero": (
        _set("vocab_sizes.profile", [6, 6, 0, 10]),
        "field vocab_sizes.profile[2]: Input should be greater than or equal to 1",
    ),
    "max_lengths huge": (
        _set("max_lengths.query_history", 10**9),
        "field max_lengths.query_history: Input should be less than or equal to 4096",
    ),
    "max_lengths key missing": (
        _drop("max_lengths.query_clicks"),
        "field max_lengths.query_clicks is missing",
    ),
    "reads an input the service cannot build": (
        _set("reads", ["query_clicks", "mind_reading"]),
        "reads lists ['query_clicks', 'mind_reading']",
    ),
    "profile_fields repeated": (
        _set("profile_fields", ["a", "a", "b", "c"]),
        "field profile_fields: must be distinct column names",
    ),
    "profile_fields not names": (
        _set("profile_fields", [1, 2, 3, 4]),
        "field profile_fields[0]: Input should be a valid string, not 1",
    ),
    "graphs.ctr missing": (
        _drop("graphs.ctr"),
        "graphs lists ['ctr_pair', 'ctr_user', 'query_encoder'], but the bundle's files make it",
    ),
    "graphs with an unknown graph": (
        _set("graphs.ranker", {"file": "ctr.onnx", "inputs": {}, "outputs": {}}),
        "field graphs.ranker (the name): Input should be 'ctr', 'query_encoder', 'ctr_user' "
        "or 'ctr_pair'",
    ),
    "shape with a zero size": (
        _set("graphs.ctr.inputs.item.shape", [0]),
        "field graphs.ctr.inputs.item.shape[0]: a shape lists fixed sizes and axis names, not 0",
    ),
    "shape with a boolean": (
        _set("graphs.ctr.inputs.item.shape", [True]),
        "graphs.ctr.inputs.item.shape[0]: a shape lists fixed sizes and axis names, not True",
    ),
    "graph inputs empty": (
        _set("graphs.ctr.inputs", {}),
        "field graphs.ctr.inputs: Dictionary should have at least 1 item",
    ),
    "tensor spec with an extra key": (
        _set("graphs.ctr.inputs.item.layout", "NCHW"),
        "field graphs.ctr.inputs.item.layout is not part of the bundle format",
    ),
    "ctr_layout a number": (
        _set("ctr_layout", 7),
        "field ctr_layout: Input should be a valid string, not 7",
    ),
    "offline_metrics a list": (
        _set("offline_metrics", []),
        "field offline_metrics: Input should be a valid dictionary",
    ),
    "exporter.opset negative": (
        _set("exporter.opset", -1),
        "field exporter.opset: Input should be greater than or equal to 1",
    ),
    "parity past its tolerance": (
        _set("parity.max_abs_diff", 0.5),
        "field parity: max_abs_diff 0.5 is above tolerance 1e-05",
    ),
    "calibration record removed": (_drop("calibration"), "field calibration is missing"),
    "calibration platt without its slope": (
        _drop("calibration.a"),
        "field calibration: method is platt, but its slope a or offset b is missing",
    ),
    "calibration slope not finite": (
        _set("calibration.a", float("nan")),
        "field calibration.a: Input should be a finite number",
    ),
    "calibration of an unknown method": (
        _set("calibration", {"method": "isotonic"}),
        "field calibration: method must be none or platt, not 'isotonic'",
    ),
    "quantization.mode unknown": (
        _set("quantization.mode", "int4"),
        "field quantization.mode: Input should be 'none' or 'int8', not 'int4'",
    ),
    "quantization int8 without its AUCs": (
        _set("quantization.mode", "int8"),
        "field quantization: mode is int8, but auc_fp32 or auc_int8 is missing",
    ),
}


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything gets as far as creating the gRPC server (the port)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a gRPC server was created for a broken bundle")

    monkeypatch.setattr(grpc.aio, "server", refuse)


ALL_CASES = {**CASES, **MANIFEST_CASES}
assert len(ALL_CASES) == len(CASES) + len(MANIFEST_CASES)  # no name used twice


def _broken(bundle: Path, where: Path, case: str) -> Path:
    """A private copy of `bundle` broken as `case` says."""
    broken = where / "bundle"
    shutil.copytree(bundle, broken)
    ALL_CASES[case][0](broken)
    return broken


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_broken_bundle_is_one_line_and_exit_2(
    case: str,
    bundle: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    no_serving: None,
) -> None:
    expected = ALL_CASES[case][1]
    broken = _broken(bundle, tmp_path, case)

    with pytest.raises(BundleError) as caught:
        load_bundle(broken, device="cpu")
    assert expected in str(caught.value)
    capfd.readouterr()  # ONNX Runtime writes nothing either (checked below, via the CLI)

    assert main(["serve", "--bundle", str(broken), "--port", "0", "--device", "cpu"]) == 2
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("queryrec: error: ") and expected in lines[0]
    assert "Traceback" not in err and "Traceback" not in out


@pytest.mark.parametrize("case", ["edited: model_version", "manifest not UTF-8"])
def test_a_broken_manifest_is_one_line_from_the_installed_command(
    case: str, bundle: Path, tmp_path: Path
) -> None:
    """The same through a real `queryrec serve` process: exit 2, one line, no traceback."""
    broken = _broken(bundle, tmp_path, case)
    command = ["serve", "--bundle", str(broken), "--port", "0", "--device", "cpu", "--workers", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("queryrec: error: "), done.stderr
    assert ALL_CASES[case][1] in lines[0]
    assert "Traceback" not in done.stderr + done.stdout


@pytest.fixture
def served(bundle: Path, redis_client_url: str) -> Iterator[ServerThread]:
    with ServerThread(bundle, redis_client_url) as harness:
        yield harness


def test_a_reload_refuses_a_broken_manifest_with_the_same_line(
    served: ServerThread, bundle: Path, tmp_path: Path
) -> None:
    """A reload goes through `load_bundle` too: the same one line comes back as the
    reload's error, and the running model keeps serving."""
    assert served.server is not None
    version = served.server.scorer.model_version
    for number, case in enumerate(
        [
            "edited: model_version",
            "unlisted file",
            "manifest a JSON list",
            "model_version with a newline",
        ]
    ):
        broken = _broken(bundle, tmp_path / str(number), case)
        with pytest.raises(BundleError) as caught:
            load_bundle(broken, device="cpu")
        result = served.run(served.server.reload(broken))
        assert not result.ok and result.error == str(caught.value), case
        assert "\n" not in str(result.error)
        assert served.server.scorer.model_version == version


def test_the_good_bundle_passes_every_check(bundle: Path) -> None:
    loaded = load_bundle(bundle, device="cpu")
    assert loaded.encoder is not None
    assert loaded.profiles().height > 0


def test_a_pair_graph_that_disagrees_with_the_single_graph_is_refused(
    bundle: Path, tmp_path: Path
) -> None:
    """A split CTR graph whose scores are not ctr.onnx's (here: another calibration slope
    in ctr_pair.onnx, the files rehashed) is refused at load, naming the file."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    graph = onnx.load(str(copy / "ctr_pair.onnx"))
    (slope,) = [i for i in graph.graph.initializer if i.name == "calibration_a"]
    slope.CopyFrom(numpy_helper.from_array(np.array(3.0, dtype=np.float32), "calibration_a"))
    onnx.save(graph, str(copy / "ctr_pair.onnx"))
    _rehash(copy, "ctr_pair.onnx")
    with pytest.raises(BundleError, match=r"ctr_pair.onnx: smoke run \(users=1\) differs from"):
        load_bundle(copy, device="cpu")


def test_an_exported_bundle_is_sealed_and_holds_only_its_listed_files(bundle: Path) -> None:
    """The seal is sha256sum's line for manifest.json's bytes, and the folder holds the
    listed files, the manifest and its seal: nothing else."""
    data = (bundle / MANIFEST).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert (bundle / DIGEST_FILE).read_text() == f"{digest}  manifest.json\n"
    listed = set(json.loads(data)["files"])
    present = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert present == listed | {MANIFEST, DIGEST_FILE}


def test_a_bundle_without_a_query_encoder_passes(tiny_data: Path, tmp_path: Path) -> None:
    """DIN: no encoder graph, no query_repr input; the checks and the smoke run agree."""
    from export.bundle import ExportOptions, export_bundle
    from queryrec.training.config import TrainConfig
    from queryrec.training.loop import train

    train(tiny_data, tmp_path / "din", TrainConfig(model="din", epochs=1, progress=False))
    export_bundle(tmp_path / "din", tmp_path / "bundle", ExportOptions())
    loaded = load_bundle(tmp_path / "bundle", device="cpu")
    assert loaded.encoder is None


def test_every_manifest_dtype_has_an_onnx_runtime_type() -> None:
    from queryrec.features.bundle_format import DTYPES
    from service.inference.bundle import ORT_TYPES

    assert set(ORT_TYPES) == DTYPES
