"""`queryrec demo`: the main job end to end on the `small` preset.

Grows with the project. Now: generate KuaiSAR-format logs, prepare the dataset, print its
statistics. The work folder is the demo's own; each run replaces what it holds.
"""

from __future__ import annotations

from pathlib import Path

from queryrec.data.prepare import PrepareConfig, run_prepare
from queryrec.data.synth import preset_config, run_synth
from queryrec.progress import say

DEMO_PRESET = "small"
DEMO_SEED = 0


def run_demo(workdir: Path, preset: str = DEMO_PRESET) -> None:
    """Run every stage that exists so far; outputs go under `workdir`."""
    workdir = Path(workdir)
    raw_dir, data_dir = workdir / "raw", workdir / "data"
    say(f"[demo] 1/2 synth: {preset} preset, seed {DEMO_SEED} -> {raw_dir}")
    run_synth(raw_dir, preset_config(preset, DEMO_SEED), force=True)
    say(f"[demo] 2/2 prepare: {raw_dir} -> {data_dir}")
    report = run_prepare(raw_dir, data_dir, PrepareConfig(), force=True)
    print(report)
    print(f"Dataset ready in {data_dir} (schema: {data_dir / 'schema.json'}).")
