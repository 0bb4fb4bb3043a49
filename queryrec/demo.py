"""`queryrec demo`: the main job end to end on the `small` preset.

Grows with the project. Now: generate KuaiSAR-format logs, prepare the dataset, print its
statistics, train DIN and QueryRec and print their test AUC side by side, then export
QueryRec to a parity-checked ONNX bundle and print its manifest summary. The work folder
is the demo's own; each run replaces what it holds.
"""

from __future__ import annotations

from pathlib import Path

from queryrec.data.prepare import PrepareConfig, run_prepare
from queryrec.data.synth import preset_config, run_synth
from queryrec.progress import say

DEMO_PRESET = "small"
DEMO_SEED = 0
DEMO_MODELS = ("din", "queryrec")


def run_demo(workdir: Path, preset: str = DEMO_PRESET, epochs: int = 3) -> None:
    """Run every stage that exists so far; outputs go under `workdir`."""
    from export.bundle import ExportOptions, export_bundle, manifest_summary
    from queryrec.features.dataset import PreparedDataset
    from queryrec.training.config import TrainConfig
    from queryrec.training.loop import train

    workdir = Path(workdir)
    raw_dir, data_dir = workdir / "raw", workdir / "data"
    say(f"[demo] 1/4 synth: {preset} preset, seed {DEMO_SEED} -> {raw_dir}")
    run_synth(raw_dir, preset_config(preset, DEMO_SEED), force=True)
    say(f"[demo] 2/4 prepare: {raw_dir} -> {data_dir}")
    report = run_prepare(raw_dir, data_dir, PrepareConfig(), force=True)
    print(report)
    dataset = PreparedDataset(data_dir)
    results = {}
    for index, model in enumerate(DEMO_MODELS, start=1):
        say(f"[demo] 3/4 train {model} ({index}/{len(DEMO_MODELS)}), up to {epochs} epochs")
        cfg = TrainConfig(model=model, seed=DEMO_SEED, epochs=epochs)
        results[model] = train(data_dir, workdir / "runs" / model, cfg, dataset=dataset)
    print("| model | test AUC | GAUC | logloss | best epoch |")
    print("|---|---|---|---|---|")
    for model, result in results.items():
        test = result.test
        print(
            f"| {model} | {test['auc']:.4f} | {test['gauc']:.4f} | {test['logloss']:.4f} | "
            f"{result.best_epoch} |"
        )
    bundle_dir = workdir / "bundle"
    say(f"[demo] 4/4 export queryrec -> {bundle_dir}")
    manifest = export_bundle(workdir / "runs" / "queryrec", bundle_dir, ExportOptions(replace=True))
    print(manifest_summary(manifest, bundle_dir))
    print(f"Dataset in {data_dir}; checkpoints in {workdir / 'runs'}; bundle in {bundle_dir}.")
