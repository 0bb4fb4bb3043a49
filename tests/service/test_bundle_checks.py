"""A broken bundle is refused when it is loaded, before the server binds its port: every
problem (a manifest that disagrees with its graphs or tables, a corrupt or missing
artifact, a graph that loads but cannot run) is one BundleError line, exit 2 from
`queryrec serve`, no traceback.

Each case breaks a private copy of the session's `bundle`. Where the manifest's sha256
of a file would refuse an altered file first, the case rewrites that hash, so that the
check under test is the one that answers. Never call `serve` on a good bundle here: it
would serve until killed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import polars as pl
import pytest

from queryrec.cli.main import main
from queryrec.features.schema import sha256_file
from service.bundle import load_bundle
from service.errors import BundleError


def _manifest(root: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((root / "manifest.json").read_text())
    return manifest


def _edit_manifest(root: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest = _manifest(root)
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


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


def _set(path: str, value: Any) -> Callable[[Path], None]:
    """A breaker that sets one manifest field (dotted path) to `value`."""

    def breaker(root: Path) -> None:
        def edit(m: dict[str, Any]) -> None:
            *parents, last = path.split(".")
            node = m
            for key in parents:
                node = node[key]
            node[last] = value

        _edit_manifest(root, edit)

    return breaker


def _drop(path: str) -> Callable[[Path], None]:
    """A breaker that deletes one manifest field (dotted path)."""

    def breaker(root: Path) -> None:
        def edit(m: dict[str, Any]) -> None:
            *parents, last = path.split(".")
            node = m
            for key in parents:
                node = node[key]
            del node[last]

        _edit_manifest(root, edit)

    return breaker


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
        if name != "manifest.json":  # (the manifest holds no hash of itself)
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
    "unknown dtype": (_set("graphs.ctr.inputs.hour.dtype", "int128"), "dtype 'int128'"),
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
        "max_lengths.query_tokens must be a positive integer",
    ),
    "graph missing from the manifest": (
        _drop("graphs.query_encoder"),
        "graphs lists ['ctr'], but the bundle's files make it ['ctr', 'query_encoder']",
    ),
    "graph file renamed": (
        _set("graphs.ctr.file", "other.onnx"),
        "graphs.ctr.file is 'other.onnx'",
    ),
    "model_version missing": (_drop("model_version"), "field model_version is missing"),
    # the history length the graph's positions cannot take: only a run shows it
    "query history longer than the graph": (
        _set("max_lengths.query_history", 30),
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
    "manifest syntax error": (
        _overwrite("manifest.json", b'{"format_version": 1,'),
        "not valid JSON",
    ),
}


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything gets as far as creating the gRPC server (the port)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a gRPC server was created for a broken bundle")

    monkeypatch.setattr(grpc.aio, "server", refuse)


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_bundle_is_one_line_and_exit_2(
    case: str,
    bundle: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    no_serving: None,
) -> None:
    breaker, expected = CASES[case]
    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken)
    breaker(broken)

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


def test_the_good_bundle_passes_every_check(bundle: Path) -> None:
    loaded = load_bundle(bundle, device="cpu")
    assert loaded.encoder is not None
    assert loaded.profiles().height > 0


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
    from service.bundle import ORT_TYPES

    assert set(ORT_TYPES) == DTYPES
