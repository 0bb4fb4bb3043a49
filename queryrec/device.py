"""The torch device of a job's `--device` choice (training, the diffusion jobs, export)."""

from __future__ import annotations

import torch

from queryrec.errors import QueryRecError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """The torch device for a `--device` choice (auto | cpu | cuda), used by training and
    the diffusion jobs alike: `auto` picks CUDA when available, else the CPU; `cuda`
    without a GPU, or any other choice, is a clear error. On CUDA the device is
    `cuda:local_rank` (the process's GPU under torchrun)."""
    if choice not in DEVICE_CHOICES:
        raise QueryRecError(f"--device must be auto, cpu or cuda, not '{choice}'")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise QueryRecError("--device cuda was asked for, but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")
