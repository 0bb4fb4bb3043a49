"""`queryrec export`: a training run -> a verified, versioned model bundle.

Steps: read the checkpoint and its dataset (the run records where it is; `--data`
overrides), check the dataset's schema hash, export both graphs (`onnx_export`), run the
parity check (`parity`), calibrate the CTR graph's probabilities (Platt scaling fitted on
validation, inside the graph: `calibration`), optionally quantize the CTR graph to INT8
with an AUC guard (`quantize`), copy the torch-free artifacts, write `manifest.json` with
every file's sha256 and seal it (`manifest.sha256`, the sha256 of the manifest's bytes:
`queryrec.features.bundle_manifest`), and move the finished folder into place. Nothing is
left at the output path if any step fails. The bundle layout is
`queryrec.features.bundle_format`'s docstring.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from export.calibration import calibrate_ctr, insert_platt
from export.graphs import (
    CTRGraph,
    CTRPairGraph,
    CTRUserGraph,
    QueryEncoderGraph,
    encoder_outputs,
    splits,
)
from export.onnx_export import (
    OPSET,
    GraphSpec,
    export_ctr,
    export_encoder,
    export_pair_graph,
    export_user_graph,
)
from export.parity import check_parity
from export.quantize import MAX_AUC_DROP, quantize_with_guard
from queryrec.errors import OutputExistsError, QueryRecError
from queryrec.evaluation.bundle_scoring import cpu_session
from queryrec.features.bundle_format import (
    ARTIFACTS,
    CTR_FILE,
    CTR_PAIR_FILE,
    CTR_USER_FILE,
    ENCODER_FILE,
    FORMAT_VERSION,
    QUERY_POSITIVES_FILE,
    read_manifest,
    write_sealed,
)
from queryrec.features.dataset import PreparedDataset
from queryrec.features.pseudo_positives import load_query_positives
from queryrec.features.query_positives import QueryPositives
from queryrec.features.schema import sha256_file
from queryrec.progress import say
from queryrec.training.checkpoint import GBDT_MODEL_FILE, load_checkpoint, read_checkpoint

# How `ctr.onnx` takes many requests at once (also written into the manifest).
CTR_LAYOUT = (
    "Flat pairs: one row per user in the user-level inputs (the encoder outputs, user, "
    "hour, profile, click_history and the query slots; U rows) and one entry per "
    "candidate in pair_user and item "
    "(N pairs). pair_user[i] is the user row (0..U-1) of candidate item[i]; probability[i] "
    "is P(click) for pair i. Requests with different candidate counts batch together by "
    "appending their user row and their pairs; nothing is padded to the largest request."
)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    quantize: str = "none"  # none | int8
    calibrate: str = "platt"  # platt | none (export.calibration)
    force: bool = False  # accept an INT8 AUC drop above the guard (`export --accept-int8-drop`)
    replace: bool = False  # replace a non-empty output folder (`export --force`)
    data_dir: Path | None = None  # the dataset, if not the one the run recorded
    max_auc_drop: float = MAX_AUC_DROP  # INT8 guard on test AUC

    def __post_init__(self) -> None:
        if self.quantize not in ("none", "int8"):
            raise QueryRecError(f"--quantize must be none or int8, not '{self.quantize}'")
        if self.calibrate not in ("none", "platt"):
            raise QueryRecError(f"--calibrate must be platt or none, not '{self.calibrate}'")


def export_bundle(run_dir: Path, out_dir: Path, options: ExportOptions) -> dict[str, Any]:
    """Write the bundle of `run_dir` to `out_dir`; return its manifest."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not options.replace:
        raise OutputExistsError(f"{out_dir}: exists and is not empty (pass --force to replace it)")
    if (run_dir / GBDT_MODEL_FILE).is_file():
        raise QueryRecError(
            f"{run_dir}: a LightGBM run cannot be exported (the service runs ONNX graphs on "
            "the one feature path; the trees read features it does not compute)"
        )
    payload = read_checkpoint(run_dir)
    data_dir = options.data_dir or (Path(payload["data_dir"]) if payload.get("data_dir") else None)
    if data_dir is None:
        raise QueryRecError(f"{run_dir}: the checkpoint does not record its dataset; pass --data")
    dataset = PreparedDataset(data_dir)
    model, payload = load_checkpoint(run_dir, dataset, payload)
    if not model.servable:
        raise QueryRecError(
            f"{run_dir}: model '{payload['model_name']}' cannot be served, so it is not "
            f"exported: {model.not_servable_because}"
        )
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        manifest = _build(model, payload, dataset, work, options)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    read_manifest(out_dir)  # the reader accepts what the writer wrote
    return manifest


def _build(
    model: Any,
    payload: dict[str, Any],
    dataset: PreparedDataset,
    work: Path,
    options: ExportOptions,
) -> dict[str, Any]:
    """Every file of the bundle into `work`, manifest last; -> the manifest."""
    # The split graphs are not quantised: an INT8 bundle is served by ctr.onnx alone.
    graphs = _export_graphs(model, payload["model_name"], work, split=options.quantize != "int8")
    encoder = cpu_session(work / ENCODER_FILE) if "query_encoder" in graphs else None
    ctr = cpu_session(work / CTR_FILE)
    split = None
    if "ctr_user" in graphs:
        split = (cpu_session(work / CTR_USER_FILE), cpu_session(work / CTR_PAIR_FILE))
    say(
        "[export] parity check: ONNX Runtime vs PyTorch at encoder batches 1, 3, 37, 128 and 1-500 candidates"
    )
    cases = check_parity(model, encoder, ctr, split=split)
    worst = max(c.max_abs_diff for c in cases)
    say(f"[export] parity ok: max abs diff {worst:.2e} over {len(cases)} cases")
    _copy_artifacts(dataset, work)
    table = _copy_query_positives(model, dataset, work)
    created = dt.datetime.now(dt.UTC)
    manifest = _manifest_body(model, payload, dataset, graphs, created)
    if table is not None:
        manifest["query_positives"] = QUERY_POSITIVES_FILE
    manifest["parity"] = {
        "tolerance": 1e-5,
        "max_abs_diff": worst,
        "cases": [c.as_dict() for c in cases],
    }
    manifest["calibration"] = {"method": "none"}
    if options.calibrate == "platt":
        # After the parity check (which compares the trained model's own probabilities),
        # before INT8 (which only touches MatMul / Gemm weights).
        manifest["calibration"] = calibrate_ctr(
            work / CTR_FILE, dataset, manifest, encoder, query_positives=table
        )
        if split is not None:  # the same (a, b) on the pair graph's output
            calibration = manifest["calibration"]
            insert_platt(work / CTR_PAIR_FILE, float(calibration["a"]), float(calibration["b"]))
    manifest["quantization"] = {"mode": "none"}
    if options.quantize == "int8":
        manifest["quantization"] = quantize_with_guard(
            work / CTR_FILE,
            dataset,
            manifest,
            encoder,
            force=options.force,
            max_auc_drop=options.max_auc_drop,
            query_positives=table,
        )
    _seal(manifest, work, payload["model_name"], created)
    return manifest


def _export_graphs(
    model: Any, name: str, work: Path, *, split: bool
) -> dict[str, tuple[str, GraphSpec]]:
    """query_encoder.onnx (models with a query tower), ctr.onnx and, with `split` for a
    model whose CTR graph splits, ctr_user.onnx and ctr_pair.onnx; -> graph key -> (file,
    input and output spec)."""
    graphs: dict[str, tuple[str, GraphSpec]] = {}
    if encoder_outputs(model):
        say(f"[export] {name}: query encoder -> {ENCODER_FILE}")
        graphs["query_encoder"] = (
            ENCODER_FILE,
            export_encoder(QueryEncoderGraph(model), work / ENCODER_FILE),
        )
    say(f"[export] {name}: CTR graph -> {CTR_FILE}")
    ctr = CTRGraph(model)
    graphs["ctr"] = (CTR_FILE, export_ctr(ctr, model, work / CTR_FILE))
    if split and splits(model):
        say(f"[export] {name}: split CTR graph -> {CTR_USER_FILE}, {CTR_PAIR_FILE}")
        user, pair = CTRUserGraph(model), CTRPairGraph(model)
        graphs["ctr_user"] = (CTR_USER_FILE, export_user_graph(user, model, work / CTR_USER_FILE))
        graphs["ctr_pair"] = (
            CTR_PAIR_FILE,
            export_pair_graph(pair, user, model, work / CTR_PAIR_FILE),
        )
    return graphs


def _copy_artifacts(dataset: PreparedDataset, work: Path) -> None:
    """The torch-free files the service needs beside the graphs (id maps, features, schema)."""
    for artifact in ARTIFACTS:
        target = work / artifact
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset.root / artifact, target)


def _copy_query_positives(
    model: Any, dataset: PreparedDataset, work: Path
) -> QueryPositives | None:
    """The diffusion job's table by query into the bundle, when the model reads it
    (`slot_positives`); -> the table. QueryRecError when the dataset has none."""
    if not getattr(model.cfg, "slot_positives", False):
        return None
    table = load_query_positives(dataset)
    if table is None:
        raise QueryRecError(
            f"{dataset.root}: the model reads the diffusion pseudo-positives by query, and "
            "the dataset has no augment/query_positives.parquet (run 'queryrec diffusion "
            "augment')"
        )
    target = work / QUERY_POSITIVES_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    table.write(target)
    return table


def _manifest_body(
    model: Any,
    payload: dict[str, Any],
    dataset: PreparedDataset,
    graphs: dict[str, tuple[str, GraphSpec]],
    created: dt.datetime,
) -> dict[str, Any]:
    """What the manifest says of the model, its dataset, its graphs and the exporter."""
    cfg = model.cfg
    return {
        "format_version": FORMAT_VERSION,
        "model_name": payload["model_name"],
        "created": created.isoformat(timespec="seconds"),
        "dataset": {
            "schema_hash": dataset.content_hash,
            "path": str(dataset.root.resolve()),
            "split": dataset.schema["split"],
        },
        "model_config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "vocab"},
        "vocab_sizes": dataclasses.asdict(cfg.vocab),
        "max_lengths": {
            "click_history": cfg.click_history,
            "query_history": cfg.query_history,
            "query_tokens": cfg.query_tokens,
            "query_clicks": cfg.query_clicks,
        },
        "reads": sorted(model.reads),
        "profile_fields": list(dataset.schema["vocab_sizes"]["profile"]),
        "graphs": {
            key: {"file": file, "inputs": spec.inputs, "outputs": spec.outputs}
            for key, (file, spec) in graphs.items()
        },
        "ctr_layout": CTR_LAYOUT,
        "offline_metrics": payload["metrics"],
        "exporter": {
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "method": "torch.onnx.export(dynamo=True, optimize=True) with dynamic shapes",
            "opset": OPSET,
        },
    }


def _seal(manifest: dict[str, Any], work: Path, name: str, created: dt.datetime) -> None:
    """Hash every file, name the model version after the CTR graph's hash, write the
    manifest and its seal (the last files written: a folder without them is not a
    bundle). Every file in `work` is listed: a reader refuses any file that is not."""
    files = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    manifest["files"] = {f: sha256_file(work / f) for f in files}
    stamp = created.strftime("%Y%m%d%H%M%S")
    manifest["model_version"] = f"{name}-{stamp}-{manifest['files'][CTR_FILE][:8]}"
    write_sealed(work, manifest)


def manifest_summary(manifest: dict[str, Any], out_dir: Path) -> str:
    """A few lines for the terminal: version, graphs, sizes, metrics, parity."""
    test = manifest["offline_metrics"].get("test", {})
    sizes = {
        spec["file"]: (out_dir / spec["file"]).stat().st_size / 2**20
        for spec in manifest["graphs"].values()
    }
    lines = [
        f"bundle {out_dir}: model version {manifest['model_version']}",
        f"  model {manifest['model_name']}, format {manifest['format_version']}, created {manifest['created']}",
        "  graphs: " + ", ".join(f"{f} ({mb:.1f} MiB)" for f, mb in sizes.items()),
        f"  offline test AUC {test.get('auc', float('nan')):.4f}, logloss {test.get('logloss', float('nan')):.4f}",
        f"  parity: max abs diff {manifest['parity']['max_abs_diff']:.2e} (tolerance 1e-5)",
    ]
    calibration = manifest.get("calibration", {"method": "none"})
    if "a" in calibration:
        lines.append(
            f"  calibration: platt (a {calibration['a']:.3f}, b {calibration['b']:.3f}), test ECE "
            f"{calibration['test_ece_before']:.4f} -> {calibration['test_ece_after']:.4f}"
        )
    quant = manifest["quantization"]
    if quant["mode"] == "int8":
        lines.append(
            f"  int8 CTR graph: test AUC {quant['auc_fp32']:.4f} -> {quant['auc_int8']:.4f}"
        )
    return "\n".join(lines)
