"""DDP through torchrun: 2 CPU processes with gloo end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # two torchrun processes: about 9 s


def test_two_gloo_processes_end_with_identical_weights(tiny_data: Path, tmp_path: Path) -> None:
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
        str(tmp_path),
    ]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    # ... both started from the same weights, and training moved them.
    initial0 = torch.load(tmp_path / "initial0.pt")
    initial1 = torch.load(tmp_path / "initial1.pt")
    assert all(torch.equal(initial0[n], initial1[n]) for n in initial0)
    assert any(not torch.equal(rank0[n], initial0[n]) for n in rank0)
