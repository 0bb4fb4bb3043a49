"""`queryrec demo`: the main job end to end on the `small` preset, offline and served.

Eight stages, each announced on stderr as `[demo] k/8`:

1. synth: generate KuaiSAR-format logs (seeded);
2. prepare: build the dataset and print its statistics;
3. diffusion: train the denoiser on the training split's clicked queries, then write
   top-K pseudo-positives for the click-less ones into the dataset (QueryRec's L_cl uses
   them);
4. train: DIN and the served QueryRec (`queryrec`: search clicks in the query slots
   and match counts), their test AUC side by side and
   the lift;
5. export: QueryRec to a parity-checked ONNX bundle, its manifest summary;
6. state load: a private, throw-away redis-server (`service.state.embedded_redis`) gets every
   user's histories as of the start of the test split, capped at the bundle's lengths;
7. serve: `queryrec serve` on that bundle and that Redis, as a subprocess on a free port
   (its output goes to `serve.log` in the work folder);
8. replay: the test split, in time order, through the gRPC API (each search with its
   clicked results, `RecordSearchClicks`); every served score must
   equal the bundle's offline score of the same impression within 1e-5 (else the demo
   fails), and the Score latency is measured under the replay's own load.

A final table puts the offline and served AUC, the largest per-impression difference and
the latency side by side. The server and
the redis-server are always stopped, whatever fails. The work folder is the demo's own;
each run replaces what it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from clients.launcher import ServerProcess
from queryrec.data.prepare import PrepareConfig, run_prepare
from queryrec.data.synth import preset_config, run_synth
from queryrec.progress import say

if TYPE_CHECKING:
    from queryrec.features.dataset import PreparedDataset

DEMO_PRESET = "small"
DEMO_SEED = 0
DEMO_MODELS = ("din", "queryrec")
STAGES = 8
DIFFUSION_EPOCHS = 6  # hidden-click recall peaks by epoch 4-5 on `small`

REPLAY_CONCURRENCY = 8


def run_demo(workdir: Path, preset: str = DEMO_PRESET, epochs: int = 3) -> None:
    """Run every stage; outputs go under `workdir`. QueryRecError when a stage fails."""
    from export.bundle import ExportOptions, export_bundle, manifest_summary
    from queryrec.features.dataset import PreparedDataset
    from queryrec.training.config import TrainConfig
    from queryrec.training.loop import train

    workdir = Path(workdir)
    raw_dir, data_dir = workdir / "raw", workdir / "data"
    say(f"[demo] 1/{STAGES} synth: {preset} preset, seed {DEMO_SEED} -> {raw_dir}")
    run_synth(raw_dir, preset_config(preset, DEMO_SEED), force=True)
    say(f"[demo] 2/{STAGES} prepare: {raw_dir} -> {data_dir}")
    report = run_prepare(raw_dir, data_dir, PrepareConfig(), force=True)
    print(report)
    diffusion_dir = workdir / "diffusion"
    say(
        f"[demo] 3/{STAGES} diffusion: denoiser on clicked queries -> {diffusion_dir}, "
        "pseudo-positives for click-less ones"
    )
    run_diffusion(data_dir, diffusion_dir)
    dataset = PreparedDataset(data_dir)
    results = {}
    for index, model in enumerate(DEMO_MODELS, start=1):
        say(f"[demo] 4/{STAGES} train {model} ({index}/{len(DEMO_MODELS)}), up to {epochs} epochs")
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
    lift = results["queryrec"].test["auc"] / results["din"].test["auc"]
    print(f"queryrec / din test AUC: {lift:.4f} ({(lift - 1) * 100:+.2f} %)")
    bundle_dir = workdir / "bundle"
    say(f"[demo] 5/{STAGES} export queryrec -> {bundle_dir}")
    manifest = export_bundle(workdir / "runs" / "queryrec", bundle_dir, ExportOptions(replace=True))
    print(manifest_summary(manifest, bundle_dir))
    summary = serve_and_replay(dataset, bundle_dir, manifest, workdir / "serve.log")
    print_summary(summary)
    print(
        f"Dataset in {data_dir}; checkpoints in {workdir / 'runs'}; bundle in {bundle_dir}; "
        f"server log in {workdir / 'serve.log'}."
    )


def run_diffusion(data_dir: Path, diffusion_dir: Path) -> None:
    """Stage 3: train the denoiser, augment the click-less training queries."""
    from queryrec.diffusion.augment import augment
    from queryrec.diffusion.train import DiffusionTrainConfig, train_diffusion

    model = train_diffusion(data_dir, diffusion_dir, DiffusionTrainConfig(epochs=DIFFUSION_EPOCHS))
    best = model.info["history"][model.info["best_epoch"] - 1]
    print(
        f"diffusion: {len(model.universe):,} items, held-out hidden-click recall@"
        f"{model.info['train']['k']} {best['recall']:.4f} (best of {DIFFUSION_EPOCHS} epochs)"
    )
    manifest = augment(data_dir, diffusion_dir)
    print(
        f"pseudo-positives for {manifest['sessions']:,} click-less queries in "
        f"{manifest['seconds']:.1f} s ({manifest['queries_per_s']:,.0f} queries/s)"
    )


def serve_and_replay(
    dataset: PreparedDataset, bundle_dir: Path, manifest: dict[str, Any], log_path: Path
) -> dict[str, float]:
    """Stages 5-7: state load into an embedded Redis, serve the bundle, replay the test
    split through it; -> `run_replay`'s summary. Redis and the server always stop."""
    from clients.replay import run_replay
    from service.state.embedded_redis import EmbeddedRedis
    from service.state.load import load_state

    lengths = manifest["max_lengths"]
    with EmbeddedRedis() as redis_server:
        url = redis_server.url
        say(f"[demo] 6/{STAGES} state load: {dataset.root} -> embedded Redis at {url}")
        loaded = load_state(
            dataset,
            url,
            query_cap=int(lengths["query_history"]),
            click_cap=int(lengths["click_history"]),
        )
        print(
            f"loaded {loaded.users:,} users ({loaded.queries:,} queries, {loaded.clicks:,} "
            f"clicks) in {loaded.seconds:.1f} s: {loaded.users_per_minute:,.0f} users/min"
        )
        say(f"[demo] 7/{STAGES} serve {bundle_dir} (log: {log_path})")
        server = ServerProcess(bundle_dir, url, log_path)
        try:
            port = server.start()
            target = f"127.0.0.1:{port}"
            say(
                f"[demo] 8/{STAGES} replay the test split through {target}, "
                f"concurrency {REPLAY_CONCURRENCY}"
            )
            return run_replay(dataset.root, target, bundle_dir, concurrency=REPLAY_CONCURRENCY)
        finally:
            server.stop()


def print_summary(summary: dict[str, float]) -> None:
    """Offline vs served AUC and the Score latency under replay, as one table."""
    offline, served = summary["offline_auc"], summary["served_auc"]
    print(
        "| offline AUC | served AUC | max per-impression difference | Score p50 ms "
        "| Score p99 ms | calls/s |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {offline:.4f} | {served:.4f} | {summary['max_abs_diff']:.2e} | "
        f"{summary['score_p50_ms']:.2f} | {summary['score_p99_ms']:.2f} | "
        f"{summary['calls_per_s']:,.0f} |"
    )
    if summary.get("degraded"):
        print(f"({summary['degraded']:.0f} Score responses were degraded)")
