"""`queryrec` entry point.

`main(argv)` runs one command in-process and returns its exit code, so tests call it
directly. User-fixable errors (`QueryRecError`) print one line on stderr and exit 2;
usage errors exit 2 with Typer's message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from queryrec.errors import QueryRecError

# Mirrors queryrec.models.registry.DEFAULT_BENCH_MODELS without importing torch at start-up.
DEFAULT_MODELS = (
    "din", "sesrec", "unisar", "lightgbm", "lightgbm-query", "queryrec-paper", "queryrec",
)  # fmt: skip

# What a user tunes in `train` and `bench`, defined once. Their defaults are None: unset,
# the experiment file's value (--config) or else the config's default applies, so a flag
# wins over the file. Everything else is a key of the file (app/experiment_file.py).
DataOption = Annotated[Path, typer.Option("--data", help="Dataset folder from 'data prepare'.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Experiment file (TOML) for every other setting: [train], [aux], [model], "
        "[lightgbm], [diffusion], [bench], [models.NAME] (experiments/ holds the reported "
        "runs). Flags win over it.",
    ),
]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda (default auto).")
]
EpochsOption = Annotated[
    int | None,
    typer.Option("--epochs", help="Upper bound per run; early stopping on validation AUC (4)."),
]
PatienceOption = Annotated[
    int | None,
    typer.Option("--patience", help="Epochs without a validation-AUC gain before stopping (1)."),
]
LearningRateOption = Annotated[
    float | None, typer.Option("--learning-rate", help="Adam learning rate (1e-3).")
]
BatchSizeOption = Annotated[
    int | None, typer.Option("--batch-size", help="Training batch size per process (1024).")
]
NextWeightOption = Annotated[
    float | None,
    typer.Option(
        "--next-weight",
        help="lambda_2, the weight of L_next (default: the model's own, "
        "queryrec.models.registry; 0 for the served queryrec).",
    ),
]
ClWeightOption = Annotated[
    float | None,
    typer.Option(
        "--cl-weight", help="lambda_3, the weight of L_cl (default: the model's own, 0.01)."
    ),
]
ClTemperatureOption = Annotated[
    float | None,
    typer.Option("--cl-temperature", help="beta, the temperature of L_cl's softmax (0.1)."),
]
MaxTrainSamplesOption = Annotated[
    int | None,
    typer.Option("--max-train-samples", help="Train on a random subset of this size per epoch."),
]

app = typer.Typer(
    name="queryrec",
    help="QueryRec: CTR prediction with search-query representations (CIKM 2024).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="KuaiSAR-format data: generate and prepare.", no_args_is_help=True)
app.add_typer(data_app, name="data")
diffusion_app = typer.Typer(
    help="Diffusion pseudo-positives for click-less queries (offline job).", no_args_is_help=True
)
app.add_typer(diffusion_app, name="diffusion")
state_app = typer.Typer(help="Serving state in Redis.", no_args_is_help=True)
app.add_typer(state_app, name="state")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the five CSVs into.")],
    preset: Annotated[
        str, typer.Option("--preset", help="Size: tiny | small | kuaisar-small.")
    ] = "small",
    seed: Annotated[int, typer.Option("--seed", help="Random seed (output is deterministic).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    tail_query_share: Annotated[
        float,
        typer.Option(
            "--tail-query-share",
            help="Share of search sessions phrased in long-tail words that mostly go "
            "unclicked (0: the default story).",
        ),
    ] = 0.0,
    generator: Annotated[
        str,
        typer.Option(
            "--generator",
            help="topics: the default story (synth.py); latent: a differently built one "
            "(synth_latent.py) for checks on data nothing was tuned on.",
        ),
    ] = "topics",
) -> None:
    """Write synthetic KuaiSAR-format logs (rec_inter, src_inter, user/item features, follows)."""
    from queryrec.data.synth import preset_config, run_synth
    from queryrec.data.synth_latent import run_latent_synth

    if generator == "latent":
        if tail_query_share:
            raise QueryRecError("--tail-query-share is a knob of the topics generator only")
        manifest = run_latent_synth(out, preset, seed, force=force)
    elif generator == "topics":
        manifest = run_synth(out, preset_config(preset, seed, tail_query_share), force=force)
    else:
        raise QueryRecError(f"unknown --generator '{generator}' (choose topics or latent)")
    rows = manifest["rows"]
    assert isinstance(rows, dict)
    print(f"wrote {out}: " + ", ".join(f"{name} {count:,} rows" for name, count in rows.items()))


@data_app.command("prepare")
def data_prepare(
    raw: Annotated[Path, typer.Option("--raw", help="Folder with the KuaiSAR CSVs.")],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    train_feed_fraction: Annotated[
        float,
        typer.Option(
            "--train-feed-fraction",
            help="Keep this share of training-period feed impressions (low-data runs); "
            "validation, test and search data are kept whole.",
        ),
    ] = 1.0,
) -> None:
    """Build the dataset (id maps, timelines, time-split samples, schema.json, statistics)."""
    from queryrec.data.prepare import PrepareConfig, run_prepare

    report = run_prepare(
        raw, out, PrepareConfig(train_feed_fraction=train_feed_fraction), force=force
    )
    print(report)


@app.command("train")
def train_command(
    data: DataOption,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="queryrec (served) | queryrec-paper | din | sesrec | unisar | lightgbm | ... "
            "(queryrec.models.registry lists every name).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder (checkpoint, metrics).")],
    seed: Annotated[int, typer.Option("--seed")] = 0,
    config: ConfigOption = None,
    device: DeviceOption = None,
    epochs: EpochsOption = None,
    patience: PatienceOption = None,
    learning_rate: LearningRateOption = None,
    batch_size: BatchSizeOption = None,
    next_weight: NextWeightOption = None,
    cl_weight: ClWeightOption = None,
    cl_temperature: ClTemperatureOption = None,
    max_train_samples: MaxTrainSamplesOption = None,
) -> None:
    """Train one model; under torchrun it runs as DDP (gloo on CPU, NCCL on GPUs)."""
    from app.experiment_file import load_experiment
    from queryrec.models.registry import model_spec
    from queryrec.training.loop import train

    model_spec(model)  # a clear error for an unknown name before any data is read
    cfg = load_experiment(config).train_config(
        model,
        seed,
        device=device,
        epochs=epochs,
        patience=patience,
        learning_rate=learning_rate,
        batch_size=batch_size,
        next_weight=next_weight,
        cl_weight=cl_weight,
        temperature=cl_temperature,
        max_train_samples=max_train_samples,
    )
    result = train(data, out, cfg)
    print(
        f"{model} seed {seed}: test AUC {result.test['auc']:.4f}, GAUC {result.test['gauc']:.4f}, "
        f"logloss {result.test['logloss']:.4f} (best epoch {result.best_epoch}); run in {out}"
    )


@app.command("bench")
def bench_command(
    data: DataOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for results.json, RESULTS.md, plots.")],
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            help="Comma-separated model names (default: [bench] models of --config, else "
            + ",".join(DEFAULT_MODELS)
            + ").",
        ),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option("--seeds", help="Seeds per model, 0..N-1 (3).")
    ] = None,
    config: ConfigOption = None,
    device: DeviceOption = None,
    epochs: EpochsOption = None,
    patience: PatienceOption = None,
    learning_rate: LearningRateOption = None,
    batch_size: BatchSizeOption = None,
    next_weight: NextWeightOption = None,
    cl_weight: ClWeightOption = None,
    cl_temperature: ClTemperatureOption = None,
    max_train_samples: MaxTrainSamplesOption = None,
) -> None:
    """Train every model for N seeds; write the paper-style comparison."""
    from app.bench import run_bench
    from app.experiment_file import load_experiment

    experiment = load_experiment(config)
    names = (
        tuple(name.strip() for name in models.split(",") if name.strip())
        if models is not None
        else tuple(experiment.bench.get("models", DEFAULT_MODELS))
    )
    flags: dict[str, Any] = {
        "device": device,
        "epochs": epochs,
        "patience": patience,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "next_weight": next_weight,
        "cl_weight": cl_weight,
        "temperature": cl_temperature,
        "max_train_samples": max_train_samples,
    }
    configs = {name: experiment.train_config(name, progress=False, **flags) for name in names}
    base = next(iter(configs.values()), None)
    results = run_bench(
        data,
        out,
        names,
        seeds if seeds is not None else int(experiment.bench.get("seeds", 3)),
        base,
        per_model=configs,
        diffusion=experiment.diffusion_config(),
        diffusion_autoencoder=bool(experiment.bench.get("diffusion_autoencoder", False)),
    )
    if results:  # under torchrun only rank 0 writes (and returns) the results
        print((out / "RESULTS.md").read_text())


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Option("--run", help="Run folder from 'queryrec train'.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to write.")],
    quantize: Annotated[
        str, typer.Option("--quantize", help="none | int8 (dynamic INT8 CTR graph).")
    ] = "none",
    calibrate: Annotated[
        str,
        typer.Option("--calibrate", help="platt (fitted on validation, inside ctr.onnx) | none."),
    ] = "platt",
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Dataset folder, if not the one the run recorded."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a non-empty --out (as data synth/prepare).")
    ] = False,
    accept_int8_drop: Annotated[
        bool,
        typer.Option(
            "--accept-int8-drop",
            help="With --quantize int8: export even when the INT8 graph's test AUC drops by "
            "more than the guard (0.002).",
        ),
    ] = False,
) -> None:
    """Export a trained model to ONNX (parity-checked) and write the versioned bundle."""
    from export.bundle import ExportOptions, export_bundle, manifest_summary

    options = ExportOptions(
        quantize=quantize,
        calibrate=calibrate,
        force=accept_int8_drop,
        replace=force,
        data_dir=data,
    )
    manifest = export_bundle(run, out, options)
    print(manifest_summary(manifest, out))


@diffusion_app.command("train")
def diffusion_train_command(
    data: DataOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for the trained denoiser.")],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Experiment file (TOML): its [diffusion] table sets any DiffusionTrainConfig "
            "field (position_weight, pointwise, hide_share, query_words, ...). Flags win.",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Training epochs (15).")] = None,
    max_items: Annotated[
        int | None, typer.Option("--max-items", help="Item universe: the most-shown items (4096).")
    ] = None,
    k: Annotated[
        int | None, typer.Option("--k", help="Pseudo-positives per query; metrics @K (4).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (0).")] = None,
    device: DeviceOption = None,
    unit: Annotated[
        str | None,
        typer.Option(
            "--unit",
            help="session: one x0 per search session (default); query: per query (every "
            "session of the normalised query, any user: the paper's unit).",
        ),
    ] = None,
    references: Annotated[
        bool,
        typer.Option(
            "--references/--no-references",
            help="Also train the autoencoder reference and write the quality table.",
        ),
    ] = True,
) -> None:
    """Train the denoiser on the training split's clicked queries."""
    from app.experiment_file import load_experiment
    from queryrec.diffusion.commands import run_diffusion_train

    try:
        cfg = load_experiment(config).diffusion_config(
            epochs=epochs, max_items=max_items, k=k, seed=seed, device=device, unit=unit
        )
    except QueryRecError as error:
        raise QueryRecError(f"diffusion train: {error}") from error
    run_diffusion_train(data, out, cfg, references)


@diffusion_app.command("quality")
def diffusion_quality_command(
    data: DataOption,
    model: Annotated[Path, typer.Option("--model", help="Folder from 'diffusion train'.")],
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
) -> None:
    """Recompute the hidden-click quality table of a trained model (and MODEL/autoencoder)."""
    from queryrec.diffusion.quality import run_quality

    print(run_quality(data, model, device))


@diffusion_app.command("augment")
def diffusion_augment_command(
    data: DataOption,
    model: Annotated[
        Path | None, typer.Option("--model", help="Folder from 'diffusion train'.")
    ] = None,
    k: Annotated[
        int | None, typer.Option("--k", help="Pseudo-positives per query (default: the model's).")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="'category': write the category reference's positives instead of a "
            "model's (not the paper's method; a yardstick, docs/RESULTS.md).",
        ),
    ] = None,
) -> None:
    """Write top-K pseudo-positives for every click-less training-split query into --data."""
    from queryrec.diffusion.augment import augment, augment_with_reference

    if reference not in (None, "category"):
        raise QueryRecError(f"--reference: unknown reference {reference!r} (known: category)")
    if (model is None) == (reference is None):
        raise QueryRecError("diffusion augment: give --model or --reference category, not both")
    if model is not None:
        manifest = augment(data, model, k=k, device=device)
    else:
        manifest = augment_with_reference(data, k=4 if k is None else k)
    print(
        f"pseudo-positives ({manifest['source']}) for {manifest['sessions']:,} click-less "
        f"queries (K = {manifest['k']}) in {float(manifest['seconds']):.1f} s "
        f"({float(manifest['queries_per_s']):,.0f} queries/s) -> {data / 'augment'}; in the "
        f"shown items' main category: {manifest['main_category_share']['pseudo_positives']:.1%} "
        f"(clicks of clicked queries: "
        f"{manifest['main_category_share']['clicks_of_clicked_queries']:.1%})"
    )


@app.command("serve")
def serve_command(
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="Bundle folder (or QUERYREC_BUNDLE).")
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis", help="Redis URL (or QUERYREC_REDIS_URL); unset: embedded."),
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="gRPC port; 0 = a free one.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="gRPC bind address.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda.")] = None,
    admin_port: Annotated[
        int | None,
        typer.Option("--admin-port", help="Admin HTTP port (or QUERYREC_ADMIN_PORT); 0 = free."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Server processes sharing the gRPC port (or QUERYREC_WORKERS); default one "
            "per CPU core, 1 = one process.",
        ),
    ] = None,
) -> None:
    """Serve Score / RecordQuery / RecordClicks over gRPC until SIGTERM / SIGINT (graceful
    drain), with the admin HTTP API (health, readiness, metrics, reload); SIGHUP reloads."""
    from service.settings import load_settings
    from service.transport.run import serve_forever

    settings = load_settings(
        bundle=bundle,
        redis_url=redis_url,
        port=port,
        host=host,
        device=device,
        admin_port=admin_port,
        workers=workers,
    )
    code = serve_forever(settings)
    if code:
        raise typer.Exit(code)


@state_app.command("load")
def state_load_command(
    data: DataOption,
    redis_url: Annotated[
        str | None, typer.Option("--redis", help="Redis URL (or QUERYREC_REDIS_URL).")
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Epoch ms or ISO time; default: the test split's start."),
    ] = None,
    query_cap: Annotated[int, typer.Option("--query-cap", help="Queries kept per user (L).")] = 20,
    click_cap: Annotated[int, typer.Option("--click-cap", help="Clicks kept per user (H).")] = 50,
    search_click_cap: Annotated[
        int,
        typer.Option(
            "--search-click-cap",
            help="Clicked results kept per search (the server's QUERYREC_MAX_SEARCH_CLICKS).",
        ),
    ] = 16,
) -> None:
    """Bulk-load every user's query (with each search's clicked results) and click
    histories and profile into Redis."""
    from queryrec.features.dataset import PreparedDataset
    from service.state.load import (
        default_redis_password,
        default_redis_url,
        load_state,
        parse_time,
    )

    try:
        when = parse_time(as_of) if as_of is not None else None
    except ValueError as error:
        raise QueryRecError(str(error)) from None
    report = load_state(
        PreparedDataset(data),
        default_redis_url(redis_url),
        as_of_ms=when,
        query_cap=query_cap,
        click_cap=click_cap,
        max_search_clicks=search_click_cap,
        password=default_redis_password(),
    )
    print(
        f"loaded {report.users:,} users ({report.queries:,} queries with "
        f"{report.search_clicks:,} search clicks, {report.clicks:,} clicks) "
        f"in {report.seconds:.1f} s: {report.users_per_minute:,.0f} users/min"
    )


@app.command("replay")
def replay_command(
    data: DataOption,
    target: Annotated[str, typer.Option("--target", help="HOST:PORT of 'queryrec serve'.")],
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="The served bundle: compare every served score with its offline score.",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Users in flight.")] = 16,
    search_click_cap: Annotated[
        int,
        typer.Option(
            "--search-click-cap",
            help="Clicked results sent per search (the server's QUERYREC_MAX_SEARCH_CLICKS).",
        ),
    ] = 16,
) -> None:
    """Replay the test split through the API (searches with their clicked results); served
    vs offline score per impression (fails above 1e-5 for a non-degraded answer), AUC and
    latency."""
    from clients.replay import run_replay

    run_replay(data, target, bundle, concurrency, max_search_clicks=search_click_cap)


@app.command("demo")
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Folder for all demo outputs.")] = Path(
        "demo-work"
    ),
    preset: Annotated[
        str, typer.Option("--preset", help="Data size (tiny for a quick check).", hidden=True)
    ] = "small",
    epochs: Annotated[
        int, typer.Option("--epochs", help="Training epochs per model.", hidden=True)
    ] = 3,
) -> None:
    """The main job end to end on `small`: synth, prepare, train DIN and QueryRec, export,
    serve, state load, replay (served vs offline score of every impression)."""
    from app.demo import run_demo

    run_demo(workdir, preset, epochs)


def main(argv: list[str] | None = None) -> int:
    """Run one `queryrec` command; return its exit code instead of exiting."""
    try:
        # Standalone mode: Typer prints usage errors itself and ends with SystemExit.
        app(args=argv, prog_name="queryrec")
    except QueryRecError as error:
        print(f"queryrec: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
