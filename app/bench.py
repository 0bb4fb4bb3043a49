"""`queryrec bench`: every model for N seeds on one dataset, the paper-style table and plots.

Writes to BENCH_DIR:
- `results.json` (DESIGN.md schema: per model mean/std of test AUC, GAUC, logloss, seeds,
  training time and throughput; the slice "no_click_recent_queries");
- `RESULTS.md`, the table with Imp % over DIN (mean ± std over seeds) and the slice;
- `valid_auc_per_epoch.png`, `test_auc_per_model.png` and `reliability.png` (test
  reliability diagram per model, before and after the Platt scaling fitted on validation);
- one run folder per model and seed (checkpoint and metrics);
- when a model uses the diffusion pseudo-positives and the dataset has none yet: the
  diffusion job first (`diffusion/`: denoiser, autoencoder reference, augment into the
  dataset), and its augmentation-quality table in results.json and RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed

from queryrec.diffusion.train import DiffusionTrainConfig
from queryrec.evaluation.metrics import improvement
from queryrec.features.dataset import PreparedDataset
from queryrec.models.registry import DEFAULT_BENCH_MODELS, model_spec
from queryrec.progress import say
from queryrec.training.config import TrainConfig
from queryrec.training.distributed import DistributedContext, init_distributed
from queryrec.training.loop import train
from queryrec.training.results import TrainResult

REFERENCE_MODEL = "din"
FULL_MODEL = "queryrec"  # what the ablations are paired against, seed by seed
# The paper's table (PAPER.md, CIKM 2024 QueryRec, Table 2): test AUC on the real
# KuaiSAR-small and KuaiSAR-large, in the paper's row order. Shown beside our rows,
# labelled as the paper's: other data, other split, other code.
PAPER_AUC: dict[str, tuple[str, float, float]] = {
    "din": ("DIN", 0.6793, 0.6892),
    "dcn": ("DCN", 0.6729, 0.6749),
    "ple": ("PLE", 0.6825, 0.6879),
    "sesrec": ("SESRec", 0.6843, 0.6859),
    "iv4rec": ("IV4REC+", 0.6640, 0.6580),
    "queryrec-paper": ("QueryRec", 0.6972, 0.6996),
}


def run_bench(
    data_dir: Path,
    out_dir: Path,
    models: tuple[str, ...] = DEFAULT_BENCH_MODELS,
    seeds: int = 3,
    base: TrainConfig | None = None,
    *,
    per_model: Mapping[str, TrainConfig] | None = None,
    diffusion: DiffusionTrainConfig | None = None,
    diffusion_autoencoder: bool = False,
) -> dict[str, Any]:
    """Train every (model, seed) in turn; write results.json, RESULTS.md and the plots.

    Each model trains with `per_model[name]` where given (an experiment file's settings,
    app.experiment_file), else with `base`; its model and seed are set here. The diffusion
    job, when it runs, fits `diffusion` (default: DiffusionTrainConfig()) on `base.device`.

    With `diffusion_autoencoder`, the diffusion job's quality table also holds the
    autoencoder reference; off by default, as it trains a second network as long as the
    denoiser (about 250 s on `small`) and no bench row depends on it.

    Under `torchrun --nproc_per_node N` every neural run trains as DDP over the N
    processes; the diffusion job and the LightGBM rows (single-process fits) run on rank 0
    while the others wait at a barrier, and only rank 0 writes the results (the other
    ranks return an empty dict).
    """
    for name in models:
        model_spec(name)  # fail before training anything
    base = base or TrainConfig(progress=False)
    dataset = PreparedDataset(Path(data_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[TrainResult]] = {}
    wall: dict[str, float] = {}  # seconds per model, all its seeds, evaluation included
    started = time.perf_counter()
    ctx = init_distributed(base.device)
    quality = None
    if ctx.is_main:
        quality = _diffusion_first(
            dataset,
            models,
            out_dir / "diffusion",
            dataclasses.replace(diffusion or DiffusionTrainConfig(), device=base.device),
            diffusion_autoencoder,
        )
    _wait_for_rank0(ctx)
    for name in models:
        alone = model_spec(name).architecture == "lightgbm"  # no DDP: rank 0 fits it
        for seed in range(seeds):
            own = (per_model or {}).get(name, base)
            cfg = dataclasses.replace(own, model=name, seed=seed)
            if alone and not ctx.is_main:
                _wait_for_rank0(ctx)
                continue
            began = time.perf_counter()
            result = train(
                dataset.root, out_dir / "runs" / f"{name}-seed{seed}", cfg, dataset=dataset
            )
            wall[name] = wall.get(name, 0.0) + time.perf_counter() - began
            if alone:
                _wait_for_rank0(ctx)
            runs.setdefault(name, []).append(result)
            if ctx.is_main:
                say(
                    f"[bench] {name} seed {seed}: test AUC {result.test['auc']:.4f} "
                    f"({time.perf_counter() - started:.0f}s elapsed)"
                )
    if not ctx.is_main:
        return {}
    results = summarise(dataset, runs)
    for name, seconds in wall.items():
        results["models"][name]["wall_seconds"] = seconds
    results["bench_seconds"] = time.perf_counter() - started
    if quality is not None:
        results["augmentation_quality"] = quality
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = render_results(results)
    if quality is not None:
        markdown += "\n" + (out_dir / "diffusion" / "RESULTS.md").read_text()
    (out_dir / "RESULTS.md").write_text(markdown)
    plot_results(runs, results, out_dir)
    return results


def _wait_for_rank0(ctx: DistributedContext) -> None:
    """Under torchrun: every process waits here until rank 0 has finished its work alone."""
    if ctx.distributed:
        torch.distributed.barrier()


def _diffusion_first(
    dataset: PreparedDataset,
    models: tuple[str, ...],
    out_dir: Path,
    cfg: DiffusionTrainConfig,
    autoencoder: bool,
) -> dict[str, Any] | None:
    """Train the diffusion model and augment the dataset when a model needs the
    pseudo-positives and the dataset has none; -> the augmentation-quality results."""
    from queryrec.diffusion.augment import augment
    from queryrec.diffusion.commands import run_diffusion_train
    from queryrec.features.pseudo_positives import load_pseudo_positives

    wanted = [
        m for m in models if model_spec(m).contrastive_loss and model_spec(m).diffusion_positives
    ]
    if not wanted or load_pseudo_positives(dataset) is not None:
        return None
    say(f"[bench] {', '.join(wanted)} use diffusion pseudo-positives: training the denoiser first")
    run_diffusion_train(
        dataset.root,
        out_dir,
        cfg,
        references=True,
        autoencoder=autoencoder,
    )
    augment(dataset.root, out_dir, device=cfg.device, progress=False)
    quality: dict[str, Any] = json.loads((out_dir / "results.json").read_text())
    return quality


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(dataset: PreparedDataset, runs: dict[str, list[TrainResult]]) -> dict[str, Any]:
    """The results.json body."""
    models: dict[str, Any] = {}
    slices: dict[str, Any] = {"no_click_recent_queries": {}}
    for name, results in runs.items():
        auc_mean, auc_std = _mean_std([r.test["auc"] for r in results])
        gauc_mean, gauc_std = _mean_std([r.test["gauc"] for r in results])
        logloss_mean, logloss_std = _mean_std([r.test["logloss"] for r in results])
        models[name] = {
            "auc_mean": auc_mean, "auc_std": auc_std,
            "gauc_mean": gauc_mean, "gauc_std": gauc_std,
            "logloss_mean": logloss_mean, "logloss_std": logloss_std,
            "seeds": len(results),
            "train_seconds_mean": statistics.fmean(r.train_seconds for r in results),
            "samples_per_second_mean": statistics.fmean(r.samples_per_second for r in results),
            "best_epochs": [r.best_epoch for r in results],
            **_calibration_summary(results),
        }  # fmt: skip
        slice_mean, slice_std = _mean_std([_slice_auc(r) for r in results])
        slices["no_click_recent_queries"][name] = {
            "auc_mean": slice_mean, "auc_std": slice_std,
            "n": results[0].slices["no_click_recent_queries"]["n"],
        }  # fmt: skip
    return {
        "dataset": str(dataset.root),
        "schema_hash": dataset.content_hash,
        "split": dataset.schema["split"],
        "models": models,
        "slices": slices,
        "paired": paired_differences(runs),
    }


def _calibration_summary(results: list[TrainResult]) -> dict[str, Any]:
    """Mean ± std over seeds of test ECE before / after Platt scaling, and of the test AUC
    change it makes (0 up to float ties: the scaling is monotone)."""
    reports = [r.calibration for r in results if r.calibration]
    if not reports:
        return {}
    out: dict[str, Any] = {}
    for key in ("test_ece_before", "test_ece_after"):
        out[f"{key}_mean"], out[f"{key}_std"] = _mean_std([c[key] for c in reports])
    out["calibrated_auc_change_max"] = max(
        abs(c["test_auc_after"] - c["test_auc_before"]) for c in reports
    )
    return out


def _test_auc(result: TrainResult) -> float:
    return result.test["auc"]


def _slice_auc(result: TrainResult) -> float:
    return result.slices["no_click_recent_queries"]["auc"]


def paired_differences(runs: dict[str, list[TrainResult]]) -> dict[str, Any]:
    """Per seed, the full model minus each other model, overall and on the slice.

    Runs of one seed share the data order and the initial draws of every layer the two
    models have in common, so much of the seed-to-seed spread moves both models alike;
    the spread of the per-seed differences says whether a gap is more than that noise,
    which the two unpaired spreads cannot. Models without the full model's seeds are
    left out.
    """
    full = {r.seed: r for r in runs.get(FULL_MODEL, [])}
    paired: dict[str, Any] = {}
    for name, results in runs.items():
        pairs = [(full[r.seed], r) for r in results if r.seed in full]
        if name == FULL_MODEL or not pairs:
            continue
        entry: dict[str, Any] = {"seeds": len(pairs)}
        for key, value in (("auc", _test_auc), ("slice_auc", _slice_auc)):
            diffs = [value(a) - value(b) for a, b in pairs]
            mean, std = _mean_std(diffs)
            entry[key] = {"mean": mean, "std": std, "full_ahead": sum(d > 0 for d in diffs)}
        paired[name] = entry
    return paired


def render_results(results: dict[str, Any]) -> str:
    """RESULTS.md: the paper-style table (test split, mean ± std over seeds)."""
    models = results["models"]
    reference = models.get(REFERENCE_MODEL, {}).get("auc_mean")
    lines = [
        "# Results",
        "",
        f"Dataset `{results['dataset']}` (schema {results['schema_hash'][:12]}), test split from "
        f"{results['split']['test_start']}; mean ± std over seeds.",
        "",
        "| Model | AUC | Imp % vs DIN | GAUC | logloss | seeds | samples/s | AUC, last query without click | minutes, all seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        imp = f"{improvement(m['auc_mean'], reference):+.2f}" if reference else "-"
        sliced = results["slices"]["no_click_recent_queries"][name]
        lines.append(
            f"| {name} | {m['auc_mean']:.4f} ± {m['auc_std']:.4f} | {imp} | "
            f"{m['gauc_mean']:.4f} ± {m['gauc_std']:.4f} | {m['logloss_mean']:.4f} ± {m['logloss_std']:.4f} | "
            f"{m['seeds']} | {m['samples_per_second_mean']:,.0f} | "
            f"{sliced['auc_mean']:.4f} ± {sliced['auc_std']:.4f} | "
            f"{m.get('wall_seconds', float('nan')) / 60:.1f} |"
        )
    lines += _paper_comparison(models, reference)
    paired = results.get("paired", {})
    if paired:
        lines += [
            "",
            f"Paired by seed: `{FULL_MODEL}` minus each model, mean ± std of the per-seed "
            f"differences, in how many seeds `{FULL_MODEL}` is ahead, and whether the mean "
            "difference is more than its spread (mean > std, every seed ahead).",
            "",
            "| Model | Δ AUC | ahead | beyond the spread | Δ AUC, last query without click | ahead |",
            "|---|---|---|---|---|---|",
        ]
        for name, p in paired.items():
            a, s = p["auc"], p["slice_auc"]
            beyond = "yes" if a["mean"] > a["std"] and a["full_ahead"] == p["seeds"] else "no"
            lines.append(
                f"| {name} | {a['mean']:+.4f} ± {a['std']:.4f} | {a['full_ahead']}/{p['seeds']} | "
                f"{beyond} | {s['mean']:+.4f} ± {s['std']:.4f} | {s['full_ahead']}/{p['seeds']} |"
            )
    calibrated = {n: m for n, m in models.items() if "test_ece_after_mean" in m}
    if calibrated:
        lines += [
            "",
            "Calibration (Platt scaling fitted on validation, `queryrec.training.calibration`): "
            "test ECE over 10 bins, mean ± std over seeds; reliability diagrams of seed 0 in "
            "`reliability.png`.",
            "",
            "| Model | test ECE before | test ECE after | largest test AUC change |",
            "|---|---|---|---|",
        ]
        for name, m in calibrated.items():
            lines.append(
                f"| {name} | {m['test_ece_before_mean']:.4f} ± {m['test_ece_before_std']:.4f} | "
                f"{m['test_ece_after_mean']:.4f} ± {m['test_ece_after_std']:.4f} | "
                f"{m['calibrated_auc_change_max']:.1e} |"
            )
    lines += ["", f"Bench time: {results.get('bench_seconds', 0):.0f} s.", ""]
    return "\n".join(lines)


def _paper_comparison(models: dict[str, Any], reference: float | None) -> list[str]:
    """The paper's rows in the paper's order with our AUC and Imp % beside its own numbers,
    then the rows the paper does not have (UniSAR, the trees, the variants)."""
    if not reference or not any(name in models for name in PAPER_AUC):
        return []
    lines = [
        "",
        "The paper's comparison: our rows (this dataset) beside the paper's own numbers "
        "(Table 2, on the real KuaiSAR; other data, split and code, so only the order and "
        "the Imp % are comparable).",
        "",
        "| Model | AUC (ours) | Imp % (ours) | paper: KuaiSAR-small AUC | Imp % | paper: KuaiSAR-large AUC | Imp % |",
        "|---|---|---|---|---|---|---|",
    ]
    paper_din = PAPER_AUC[REFERENCE_MODEL]
    for name, (label, small, large) in PAPER_AUC.items():
        ours = (
            f"{models[name]['auc_mean']:.4f} | {improvement(models[name]['auc_mean'], reference):+.2f}"
            if name in models
            else "not run | -"
        )
        lines.append(
            f"| {label} | {ours} | {small:.4f} | {improvement(small, paper_din[1]):+.2f} | "
            f"{large:.4f} | {improvement(large, paper_din[2]):+.2f} |"
        )
    for name, m in models.items():
        if name not in PAPER_AUC:
            lines.append(
                f"| {name} (not in the paper) | {m['auc_mean']:.4f} | "
                f"{improvement(m['auc_mean'], reference):+.2f} | - | - | - | - |"
            )
    return lines


def plot_results(
    runs: dict[str, list[TrainResult]], results: dict[str, Any], out_dir: Path
) -> None:
    """Validation AUC per epoch per model (seed 0) and test AUC per model with error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, model_runs in runs.items():
        history = model_runs[0].history
        ax.plot(
            [h["epoch"] for h in history], [h["valid_auc"] for h in history], marker="o", label=name
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUC (seed 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "valid_auc_per_epoch.png", dpi=120)
    plt.close(fig)

    names = list(results["models"])
    means = [results["models"][n]["auc_mean"] for n in names]
    stds = [results["models"][n]["auc_std"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, means, yerr=stds, capsize=4)
    ax.set_ylim(min(means) - 0.02, max(means) + 0.02)
    ax.set_ylabel("test AUC (mean ± std)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out_dir / "test_auc_per_model.png", dpi=120)
    plt.close(fig)
    plot_reliability(runs, out_dir / "reliability.png")


def plot_reliability(runs: dict[str, list[TrainResult]], path: Path) -> None:
    """One panel per model (seed 0): observed click rate against mean predicted
    probability per bin on test, before and after the calibration; the diagonal is
    perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in runs.items() if r[0].calibration]
    if not names:
        return
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        report = runs[name][0].calibration
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        for key, label in (("before", "model"), ("after", "Platt-scaled")):
            bins = report[f"test_reliability_{key}"]
            ax.plot(
                [b["predicted"] for b in bins],
                [b["observed"] for b in bins],
                marker="o",
                label=f"{label}, ECE {report[f'test_ece_{key}']:.4f}",
            )
        ax.set_title(f"{name} (seed 0, test)", fontsize=9)
        ax.set_xlabel("mean predicted P(click)")
        ax.set_ylabel("observed click rate")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
