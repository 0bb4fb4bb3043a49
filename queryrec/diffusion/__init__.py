"""DiffRec-style Gaussian diffusion over per-query item vectors x0, split three ways.

`schedule` holds the math and no parameters (betas, q(x_t | x0), the posterior
q(x_{t-1} | x_t, x0) and one reverse step); `denoiser` is the network that predicts x0 from
(x_t, t); `sampler` holds the training loss and the reverse loop, taking the schedule and
the denoiser as arguments so that neither owns the other (Wang et al., SIGIR 2023,
"Diffusion Recommender Model"; the paper's diffusion-augmented positives for click-less
queries).
"""

from __future__ import annotations

from queryrec.diffusion.denoiser import Denoiser, DenoiserConfig
from queryrec.diffusion.sampler import reconstruct, training_loss
from queryrec.diffusion.schedule import DiffusionSchedule, ScheduleConfig

__all__ = [
    "Denoiser",
    "DenoiserConfig",
    "DiffusionSchedule",
    "ScheduleConfig",
    "reconstruct",
    "training_loss",
]
