"""The diffusion loop: DiffRec's training loss and its reverse process for inference.

Both functions take the schedule and the denoiser as arguments (as in DiffRec's
`gaussian_diffusion`): the math owns no network, and the network knows nothing of the
schedule beyond the step index it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from queryrec.diffusion.denoiser import Denoiser
from queryrec.diffusion.schedule import DiffusionSchedule


def training_loss(
    schedule: DiffusionSchedule,
    denoiser: Denoiser,
    x0: Tensor,
    generator: torch.Generator | None = None,
    observed: Tensor | None = None,
    words: Tensor | None = None,
) -> Tensor:
    """DiffRec's x0-prediction loss: MSE between denoiser(q(x_t | x0), t) and x0.

    t is uniform over [0, steps) per row, noise ~ N(0, 1); the mean is over items and
    batch. The denoiser's train/eval mode is the caller's. x0 (B, I) -> scalar.

    `observed` (B, I), when given, is what is noised instead of x0 (the target stays x0):
    a partial view of x0, so that the denoiser learns to fill in what the view hides
    (the augmentation's click-less queries hide their would-be clicks).
    """
    batch = x0.shape[0]
    t = torch.randint(
        0, schedule.steps, (batch,), generator=generator, device=x0.device
    )  # (B,) int64
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x_t = schedule.add_noise(x0 if observed is None else observed, noise, t)  # (B, I)
    return F.mse_loss(denoiser(x_t, t, words), x0)


@torch.no_grad()
def reconstruct(
    schedule: DiffusionSchedule,
    denoiser: Denoiser,
    x0: Tensor,
    start_step: int | None = None,
    noisy: bool = False,
    generator: torch.Generator | None = None,
    words: Tensor | None = None,
) -> Tensor:
    """DiffRec's inference: noise x0 for `start_step` steps, then denoise back to step 0.

    x0 (B, I) -> x̃0 (B, I), the value read for the top-K pseudo-positives.

    - `start_step` = T' in [1, steps] (default `steps`): x_{T'} = add_noise(x0, noise, T' - 1),
      then t = T' - 1, ..., 0.
    - `start_step` = 0: no forward noise; the reverse loop starts from x0 itself and runs
      over all steps t = steps - 1, ..., 0 (DiffRec's default, `sampling_steps=0`).
    - Each step is x_{t-1} = schedule.step(denoiser(x_t, t), x_t, t), with fresh noise
      only if `noisy` (DiffRec samples without it by default).

    The result is the last x_{t-1}, i.e. the posterior mean at t = 0; since
    coef1[0] = 1 and coef2[0] = 0 there, it equals the denoiser's x0 prediction at t = 0.
    Runs without gradients and in eval mode; the denoiser's mode is restored afterwards.
    """
    start = schedule.steps if start_step is None else start_step
    if not 0 <= start <= schedule.steps:
        raise ValueError(f"start_step must be in [0, {schedule.steps}], got {start_step}")
    batch = x0.shape[0]

    def sample_noise() -> Tensor:
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)

    was_training = denoiser.training
    denoiser.eval()
    try:
        if start == 0:
            x_t = x0
            first = schedule.steps - 1
        else:
            first = start - 1
            t_first = torch.full((batch,), first, dtype=torch.long, device=x0.device)  # (B,)
            x_t = schedule.add_noise(x0, sample_noise(), t_first)  # (B, I)
        for step in range(first, -1, -1):
            t = torch.full((batch,), step, dtype=torch.long, device=x0.device)  # (B,)
            x0_pred = denoiser(x_t, t, words)  # (B, I)
            x_t = schedule.step(x0_pred, x_t, t, sample_noise() if noisy else None)
    finally:
        denoiser.train(was_training)
    return x_t
