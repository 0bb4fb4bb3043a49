"""Process-group set-up for DDP under `torchrun` (gloo on CPU, NCCL on GPUs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from queryrec.device import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank, world size, and the device it computes on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


COLLECTIVE_TIMEOUT = timedelta(hours=2)


def init_distributed(device_choice: str) -> DistributedContext:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Collectives wait this long: under `bench`, the other ranks wait at a barrier
        # while rank 0 alone trains the diffusion job or a LightGBM row.
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return DistributedContext(rank=rank, world_size=world, device=device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
