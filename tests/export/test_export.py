"""`queryrec export`: parity at odd shapes, the bundle round trip without torch, tampering,
the INT8 guard and the bad-input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from app.cli import main
from export.bundle import ExportOptions, export_bundle
from export.parity import CTR_CANDIDATES, ENCODER_BATCHES
from export.quantize import QuantizationRefused
from queryrec.errors import BundleError
from queryrec.features.bundle_format import read_manifest
from queryrec.features.bundle_manifest import write_sealed
from queryrec.features.dataset import PreparedDataset
from queryrec.training.batches import BatchBuilder
from queryrec.training.calibration import apply_platt
from queryrec.training.checkpoint import load_checkpoint
from queryrec.training.config import TrainConfig
from queryrec.training.loop import predict, train
from tests.no_torch import run_without_torch


def test_manifest_describes_the_bundle(bundle: Path, queryrec_run: Path) -> None:
    manifest = read_manifest(bundle)
    assert manifest["format_version"] == 2
    assert manifest["model_name"] == "queryrec"
    assert manifest["model_version"].startswith("queryrec-")
    assert set(manifest["graphs"]) == {"query_encoder", "ctr", "ctr_user", "ctr_pair"}
    # Every graph input is a `ModelInputs` field by name, or an encoder output.
    encoder = manifest["graphs"]["query_encoder"]
    assert list(encoder["inputs"]) == [
        "query_tokens", "query_age", "query_clicks", "query_click_source",
    ]  # fmt: skip
    # The SAS states are an output only with the target attention option (off when served).
    assert list(encoder["outputs"]) == ["query_repr"]
    assert list(manifest["graphs"]["ctr"]["inputs"]) == [
        "query_repr", "user", "hour", "profile", "click_history",
        "query_tokens", "query_age", "query_clicks", "pair_user", "item",
    ]  # fmt: skip
    # The split CTR graph: the user side (no hour, no candidates), then the pairs.
    user, pair = manifest["graphs"]["ctr_user"], manifest["graphs"]["ctr_pair"]
    assert list(user["inputs"]) == [
        "query_repr", "user", "profile", "click_history", "query_tokens", "query_age",
        "query_clicks",
    ]  # fmt: skip
    assert list(user["outputs"]) == ["user_first", "history_rows", "count_keys", "click_total"]
    assert list(pair["inputs"]) == [*user["outputs"], "query_repr", "hour", "pair_user", "item"]
    assert manifest["reads"] == ["query_click_source", "query_clicks"]
    assert manifest["max_lengths"]["query_clicks"] == manifest["model_config"]["query_clicks"]
    metrics = json.loads((queryrec_run / "metrics.json").read_text())
    assert manifest["offline_metrics"]["test"]["auc"] == metrics["test"]["auc"]
    assert {"schema.json", "maps/items.parquet", "ctr.onnx"} <= set(manifest["files"])
    for name in ("query_encoder.onnx", "ctr.onnx", "ctr_user.onnx", "ctr_pair.onnx"):
        graph = onnx.load(str(bundle / name))
        assert graph.opset_import[0].version >= 17
        first = graph.graph.input[0].type.tensor_type.shape.dim[0]
        assert first.dim_param and not first.dim_value  # a dynamic batch axis


def test_parity_ran_at_the_odd_shapes(bundle: Path) -> None:
    parity = read_manifest(bundle)["parity"]
    shapes = {case["shape"] for case in parity["cases"]}
    outputs = ("query_repr",)
    assert {f"{name} users={b}" for name in outputs for b in ENCODER_BATCHES} <= shapes
    assert {f"users=3 pairs={n}" for n in CTR_CANDIDATES} <= shapes
    split = {case["shape"] for case in parity["cases"] if case["graph"] == "ctr_user+ctr_pair"}
    assert {f"users={u} pairs={n}" for u in (1, 3) for n in CTR_CANDIDATES} == split
    assert parity["max_abs_diff"] <= 1e-5


def test_bundle_scores_like_the_checkpoint_without_torch(
    bundle: Path, queryrec_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    dataset = PreparedDataset(tiny_data)
    model, payload = load_checkpoint(queryrec_run, dataset)
    builder = BatchBuilder(dataset, model.cfg.history_lengths, reads=model.reads)
    arrays = builder.split_arrays("test", with_aux=False)
    expected = predict(model, builder, arrays, 1024, torch.device("cpu"))
    out = tmp_path / "served.npy"
    done = run_without_torch(
        f"""
        import sys
        from pathlib import Path
        import numpy as np
        from queryrec.features.dataset import PreparedDataset
        from queryrec.evaluation.bundle_scoring import open_bundle_graphs, score_split
        b = open_bundle_graphs(Path({str(bundle)!r}))
        probs, _ = score_split(PreparedDataset(Path({str(tiny_data)!r})), "test",
                               b.manifest, b.encoder, b.ctr)
        np.save({str(out)!r}, probs)
        assert "torch" not in sys.modules
        """
    )
    assert done.returncode == 0, done.stderr
    served = np.load(out)
    # The bundle's CTR graph carries the Platt scaling fitted at export (export.calibration).
    calibration = json.loads((bundle / "manifest.json").read_text())["calibration"]
    expected = apply_platt(expected, calibration["a"], calibration["b"])
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(arrays.label, served) == pytest.approx(
        payload["metrics"]["test"]["auc"], abs=1e-4
    )


def test_tampered_or_foreign_bundles_are_refused(bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    with open(copy / "ctr.onnx", "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match=r"ctr.onnx: sha256 does not match"):
        read_manifest(copy)

    shutil.copyfile(bundle / "ctr.onnx", copy / "ctr.onnx")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"manifest.json: sha256 does not match manifest.sha256"):
        read_manifest(copy)
    write_sealed(copy, manifest)  # as a foreign exporter would have sealed it
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        read_manifest(copy)

    shutil.copyfile(bundle / "manifest.json", copy / "manifest.json")
    shutil.copyfile(bundle / "manifest.sha256", copy / "manifest.sha256")
    (copy / "maps/words.parquet").unlink()
    with pytest.raises(BundleError, match=r"words.parquet: missing"):
        read_manifest(copy)


def test_unknown_raw_ids_map_to_the_unknown_index(bundle: Path) -> None:
    from queryrec.features.bundle_format import IdMap
    from queryrec.features.schema import UNKNOWN_INDEX

    items = IdMap.read(bundle / "maps/items.parquet")
    known = items.raw[:3]
    mapped = items(np.array([known[0], -5, 10**15, known[2]]))
    assert mapped[1] == mapped[2] == UNKNOWN_INDEX
    assert mapped[0] == items.index[0] and mapped[3] == items.index[2]
    assert (items(known) >= 2).all()


@pytest.mark.slow
def test_int8_guard_refuses_then_force_accepts(queryrec_run: Path, tmp_path: Path) -> None:
    strict = ExportOptions(quantize="int8", max_auc_drop=-1.0)  # any result is "too much"
    with pytest.raises(QuantizationRefused, match="lowers test AUC by"):
        export_bundle(queryrec_run, tmp_path / "refused", strict)
    assert not (tmp_path / "refused").exists()
    assert not list(tmp_path.glob(".refused*"))  # no half-written folder left behind

    forced = ExportOptions(quantize="int8", max_auc_drop=-1.0, force=True)
    manifest = export_bundle(queryrec_run, tmp_path / "forced", forced)
    quant = manifest["quantization"]
    assert quant["mode"] == "int8" and quant["forced"] is True
    assert "ctr_user" not in manifest["graphs"]  # not quantised: served by ctr.onnx alone
    # fp32: the calibrated graph's test AUC, the trained model's own (Platt is monotone);
    # int8 scores the same split with weights rounded, not a different model.
    trained = json.loads((queryrec_run / "metrics.json").read_text())["test"]["auc"]
    assert quant["auc_fp32"] == pytest.approx(trained, abs=1e-4)
    assert abs(quant["auc_int8"] - quant["auc_fp32"]) < 0.05
    ops = {node.op_type for node in onnx.load(str(tmp_path / "forced/ctr.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}


def test_din_bundle_has_no_encoder(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "din"
    train(tiny_data, run, TrainConfig(model="din", epochs=1, progress=False))
    manifest = export_bundle(run, tmp_path / "bundle", ExportOptions())
    assert set(manifest["graphs"]) == {"ctr"}
    assert "query_repr" not in manifest["graphs"]["ctr"]["inputs"]
    assert not (tmp_path / "bundle/query_encoder.onnx").exists()


def test_bad_inputs_give_one_line_errors(
    queryrec_run: Path,
    bundle: Path,
    tiny_raw: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty_run").mkdir()
    assert main(["export", "--run", str(tmp_path / "empty_run"), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoint" in capsys.readouterr().err

    from queryrec.data.prepare import PrepareConfig, run_prepare

    other = tmp_path / "other"
    run_prepare(tiny_raw, other, PrepareConfig(valid_fraction=0.2))
    capsys.readouterr()  # prepare's own progress lines
    argv = [
        "export",
        "--run",
        str(queryrec_run),
        "--out",
        str(tmp_path / "o"),
        "--data",
        str(other),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "trained on dataset" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()

    argv = ["export", "--run", str(queryrec_run), "--out", str(bundle), "--quantize", "int4"]
    assert main(argv) == 2
    assert "--quantize must be none or int8" in capsys.readouterr().err


def test_parity_check_names_the_failing_graph_and_shape(
    bundle: Path, queryrec_run: Path, tiny_data: Path
) -> None:
    from export.parity import ParityError, check_parity
    from service.inference.bundle_loader import load_bundle

    model, _ = load_checkpoint(queryrec_run, PreparedDataset(tiny_data))
    loaded = load_bundle(bundle)
    calibration = loaded.manifest["calibration"]
    platt = (calibration["a"], calibration["b"])
    assert check_parity(model, loaded.encoder, loaded.ctr, platt=platt)  # the exported graphs
    with pytest.raises(ParityError, match=r"ctr at users=\d+ pairs=\d+"):
        check_parity(model, loaded.encoder, loaded.ctr)  # calibration not accounted for
    with torch.no_grad():
        model.sas.norm.bias.add_(0.01)  # the torch model drifts from the exported graph
    with pytest.raises(
        ParityError,
        match=r"query_encoder at query_(repr|states) users=\d+: .* differs from PyTorch by",
    ):
        check_parity(model, loaded.encoder, loaded.ctr, platt=platt)


@pytest.fixture(scope="module")
def paper_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper's QueryRec trained for one epoch on `tiny` (read-only)."""
    run = tmp_path_factory.mktemp("runs") / "queryrec-paper"
    config = TrainConfig(model="queryrec-paper", epochs=1, batch_size=512, progress=False)
    train(tiny_data, run, config)
    return run


@pytest.fixture(scope="module")
def paper_bundle(paper_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`paper_run` exported (read-only)."""
    out = tmp_path_factory.mktemp("bundles") / "queryrec-paper"
    export_bundle(paper_run, out, ExportOptions())
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_name", "run_fixture", "bundle_fixture"),
    [("queryrec", "queryrec_run", "bundle"), ("queryrec-paper", "paper_run", "paper_bundle")],
)
def test_model_inputs_round_trip_through_the_bundle(
    model_name: str,
    run_fixture: str,
    bundle_fixture: str,
    tiny_data: Path,
    request: pytest.FixtureRequest,
) -> None:
    """One `ModelInputs` of real requests (the feature path over the test split, several
    candidates per user row), fed to the bundle's graphs by name (`graph_feed`), gives
    the model's own `score` on the same inputs (through the bundle's calibration)."""
    from queryrec.evaluation.bundle_scoring import open_bundle_graphs
    from queryrec.features.bundle_format import history_lengths
    from queryrec.features.graph_feeds import graph_feed
    from queryrec.features.model_inputs import model_inputs, trim_query_columns

    run, root = request.getfixturevalue(run_fixture), request.getfixturevalue(bundle_fixture)
    dataset = PreparedDataset(tiny_data)
    model, payload = load_checkpoint(run, dataset)
    model.eval()
    graphs = open_bundle_graphs(root)
    manifest = graphs.manifest
    assert payload["model_name"] == manifest["model_name"] == model_name
    lengths = history_lengths(manifest)
    assert lengths == model.cfg.history_lengths
    assert frozenset(manifest["reads"]) == model.reads

    # Requests of the test split: the longest query histories and a random share.
    events = dataset.timelines()
    samples = dataset.samples("test")
    users = samples["user"].to_numpy().astype(np.int64)
    ts = samples["ts"].to_numpy()
    _, query_end = events.history_ends(users, ts)
    queries = query_end - events.query_start[users]
    rng = np.random.default_rng(0)
    rows = np.concatenate([np.argsort(-queries, kind="stable")[:24], rng.choice(len(ts), 16)])
    counts = rng.integers(1, 6, size=len(rows))  # candidates per user row
    items = rng.integers(2, model.cfg.vocab.items, size=int(counts.sum()))
    pair_user = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
    inputs = model_inputs(
        events, users[rows], ts[rows], lengths, items, pair_user=pair_user, reads=model.reads
    )
    assert (inputs.query_age > 0).sum(axis=1).max() > 1  # real query histories
    if inputs.query_clicks is not None:  # and, for the models that read them, search clicks
        assert (inputs.query_clicks > 0).any()
    # The first row's newest search without words (and without clicked results): a history
    # slot, not a valid query, on both sides.
    tokens = inputs.query_tokens.copy()
    tokens[0, -1] = 0
    inputs = inputs.replace(query_tokens=tokens)
    if inputs.query_clicks is not None:
        clicks = inputs.query_clicks.copy()
        clicks[0, -1] = 0
        inputs = inputs.replace(query_clicks=clicks)

    def served(inputs: Any) -> np.ndarray:
        encoded: dict[str, np.ndarray] = {}
        if graphs.encoder is not None:
            spec = manifest["graphs"]["query_encoder"]
            values = graphs.encoder.run(None, graph_feed(spec["inputs"], inputs))
            encoded = dict(zip(spec["outputs"], values, strict=True))
        feed = graph_feed(manifest["graphs"]["ctr"]["inputs"], inputs, encoded)
        return np.asarray(graphs.ctr.run(None, feed)[0])

    calibration = manifest["calibration"]
    with torch.no_grad():
        logits = model.score(inputs.map(torch.from_numpy))
    expected = torch.sigmoid(calibration["a"] * logits + calibration["b"]).numpy()
    got = served(inputs)
    assert got.shape == (len(items),)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # The service's and offline scoring's batches cut the empty query slots: same scores.
    np.testing.assert_allclose(served(trim_query_columns(inputs)), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("flags", "replace", "accept_drop"),
    [
        ([], False, False),
        (["--force"], True, False),
        (["--accept-int8-drop"], False, True),
        (["--force", "--accept-int8-drop"], True, True),
    ],
)
def test_export_flags_each_do_one_thing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    replace: bool,
    accept_drop: bool,
) -> None:
    """--force only replaces a non-empty --out (as in data synth / prepare);
    --accept-int8-drop only accepts an INT8 AUC drop above the guard."""
    seen: list[ExportOptions] = []

    def fake_export(run: Path, out: Path, options: ExportOptions) -> dict[str, Any]:
        seen.append(options)
        return {}

    monkeypatch.setattr("export.bundle.export_bundle", fake_export)
    monkeypatch.setattr("export.bundle.manifest_summary", lambda manifest, out: "ok")
    args = ["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "b")]
    assert main([*args, "--quantize", "int8", *flags]) == 0
    assert (seen[-1].replace, seen[-1].force) == (replace, accept_drop)
