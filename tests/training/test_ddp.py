"""DDP through torchrun: 2 CPU processes with gloo (sparse embedding updates, the CPU
default) end with identical weights, and the epoch's sharding covers every sample once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from queryrec.features.dataset import PreparedDataset

pytestmark = pytest.mark.slow  # two torchrun processes: about 10 s


@pytest.fixture(scope="module")
def ddp_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where both ranks of one torchrun of `ddp_worker.py` wrote their files."""
    out = tmp_path_factory.mktemp("ddp")
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(worker),
        str(tiny_data),
        str(out),
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_gloo_processes_end_with_identical_weights(ddp_run: Path) -> None:
    rank0 = torch.load(ddp_run / "rank0.pt")
    rank1 = torch.load(ddp_run / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    # ... both started from the same weights, and training moved them, the item table too
    # (sparse gradients, all-reduced by gloo).
    initial0 = torch.load(ddp_run / "initial0.pt")
    initial1 = torch.load(ddp_run / "initial1.pt")
    assert all(torch.equal(initial0[n], initial1[n]) for n in initial0)
    assert any(not torch.equal(rank0[n], initial0[n]) for n in rank0)
    assert not torch.equal(rank0["items.item_id.weight"], initial0["items.item_id.weight"])
    assert "items.item_id" in json.loads((ddp_run / "sparse0.json").read_text())


def test_sharding_covers_each_sample_once_per_epoch(ddp_run: Path, tiny_data: Path) -> None:
    samples = PreparedDataset(tiny_data).samples("train").height
    shards = [np.load(ddp_run / f"shards{rank}.npz") for rank in (0, 1)]
    for epoch in ("arr_0", "arr_1"):
        rows = np.concatenate([shard[epoch] for shard in shards])
        assert np.array_equal(np.sort(rows), np.arange(samples)), epoch
    assert list(shards[0]["steps"]) == list(shards[1]["steps"])  # lock-step
    assert not np.array_equal(shards[0]["arr_0"], shards[0]["arr_1"])  # a new order per epoch


def test_bench_under_torchrun_trains_as_ddp_and_rank0_alone_writes(
    tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "app.cli", "bench", "--data", str(tiny_data), "--out", str(out),
        "--models", "din,lightgbm", "--seeds", "1", "--epochs", "1", "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"din", "lightgbm"}
    metrics = json.loads((out / "runs" / "din-seed0" / "metrics.json").read_text())
    assert metrics["world_size"] == 2  # DIN trained as DDP over both processes
