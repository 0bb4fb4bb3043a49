"""The noise schedule of DiffRec's Gaussian diffusion: constants and closed forms, no parameters.

DiffRec (Wang et al., SIGIR 2023) makes the *variance* 1 - alpha_bar_t, not beta_t, linear
in t, and keeps it tiny (noise_scale * [noise_min, noise_max]): a user's or query's item
vector must stay recognisable after noising, unlike an image. Like diffusers'
`DDPMScheduler`, the schedule is a plain object with `add_noise` (the forward process) and
`step` (one reverse step given the denoiser's x0 prediction); it owns no network and no
`nn.Parameter`. Constants are float64 tensors on the CPU and are cast to the input's
dtype and device when applied. Timesteps are 0-based: index t in [0, steps) is the
1-based DDPM step t + 1, so `add_noise(x0, noise, 0)` is the first, least noisy, step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MAX_BETA = 0.999  # DiffRec's clip: a beta of 1 would wipe x0 out in one step


@dataclass(frozen=True)
class ScheduleConfig:
    """DiffRec's linear-variance schedule: variance_t = linspace(scale*min, scale*max, steps)."""

    steps: int = 5  # T: diffusion steps (DiffRec uses 5-10; few steps keep x0 recoverable)
    noise_scale: float = 0.01  # multiplies noise_min and noise_max
    noise_min: float = 1e-4  # variance at the first step, before scaling
    noise_max: float = 0.02  # variance at the last step, before scaling

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.noise_scale <= 0:
            raise ValueError(f"noise_scale must be positive, got {self.noise_scale}")
        if not 0 < self.noise_min < self.noise_max:
            raise ValueError(
                "need 0 < noise_min < noise_max, got "
                f"noise_min={self.noise_min}, noise_max={self.noise_max}"
            )
        if self.noise_scale * self.noise_max >= 1:
            raise ValueError(
                "noise_scale * noise_max is the variance of the last step and must be below 1, "
                f"got {self.noise_scale * self.noise_max}"
            )


def _per_sample(constants: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """constants (T,) float64, t (B,) int64 -> (B, 1, ..., 1) in `like`'s dtype and device.

    Cast first, then move and index: a float64 tensor cannot live on every device (MPS).
    """
    values = constants.to(dtype=like.dtype).to(device=like.device)[t.to(like.device)]  # (B,)
    return values.view(-1, *([1] * (like.dim() - 1)))  # (B, 1, ..., 1)


class DiffusionSchedule:
    """Betas, cumulative alphas and the posterior of DDPM for DiffRec's linear-variance schedule.

    Every attribute is a float64 tensor of shape (steps,), indexed by the 0-based step t.
    """

    def __init__(self, cfg: ScheduleConfig | None = None) -> None:
        self.config = cfg if cfg is not None else ScheduleConfig()
        steps = self.config.steps
        start = self.config.noise_scale * self.config.noise_min
        end = self.config.noise_scale * self.config.noise_max
        # 1 - alpha_bar_t, linear in t; linspace with one step gives [start].
        self.variance = torch.linspace(start, end, steps, dtype=torch.float64)  # (T,)
        alphas_cumprod_target = 1.0 - self.variance
        betas = torch.empty(steps, dtype=torch.float64)
        betas[0] = self.variance[0]
        betas[1:] = 1.0 - alphas_cumprod_target[1:] / alphas_cumprod_target[:-1]
        self.betas = betas.clamp(max=MAX_BETA)  # (T,)
        self.alphas = 1.0 - self.betas  # (T,)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # (T,) alpha_bar_t
        one = torch.ones(1, dtype=torch.float64)
        self.alphas_cumprod_prev = torch.cat(
            [one, self.alphas_cumprod[:-1]]
        )  # (T,) alpha_bar_{t-1}
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()

        # q(x_{t-1} | x_t, x0) = N(coef1 * x0 + coef2 * x_t, posterior_variance), DDPM eq. 7.
        self.posterior_variance = (
            self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )  # (T,); exactly 0 at t = 0
        # log(0) at t = 0 is replaced by the value at t = 1 (DDPM / DiffRec); it never
        # matters, because step() adds no noise at t = 0. With one step there is no t = 1,
        # and beta_0 stands in.
        first = self.posterior_variance[1:2] if steps > 1 else self.betas[:1]
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([first, self.posterior_variance[1:]])
        )  # (T,)
        self.posterior_mean_coef1 = (
            self.betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        )  # (T,) multiplies x0; 1 at t = 0
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        )  # (T,) multiplies x_t; 0 at t = 0

    @property
    def steps(self) -> int:
        """T, the number of diffusion steps."""
        return self.config.steps

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Sample q(x_t | x0): sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise.

        x0 (B, ...), noise like x0, t (B,) int64 in [0, steps) -> x_t like x0.
        """
        return (
            _per_sample(self.sqrt_alphas_cumprod, t, x0) * x0
            + _per_sample(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def posterior_mean_variance(
        self, x0_pred: Tensor, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(x_{t-1} | x_t, x0 = x0_pred).

        x0_pred, x_t (B, ...), t (B,) int64 -> (mean like x_t, log_variance (B, 1, ..., 1)).
        """
        mean = (
            _per_sample(self.posterior_mean_coef1, t, x_t) * x0_pred
            + _per_sample(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return mean, _per_sample(self.posterior_log_variance_clipped, t, x_t)

    def step(self, x0_pred: Tensor, x_t: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """One reverse step x_t -> x_{t-1}, given the denoiser's prediction of x0.

        With `noise=None` the step is the deterministic posterior mean (DiffRec's default at
        inference); otherwise mean + exp(0.5 log_variance) * noise, without noise at t = 0.
        x0_pred, x_t (B, ...), t (B,) int64, noise like x_t -> x_{t-1} like x_t.
        """
        mean, log_variance = self.posterior_mean_variance(x0_pred, x_t, t)
        if noise is None:
            return mean
        not_last = (t != 0).to(device=x_t.device, dtype=x_t.dtype)  # (B,) 0 at the last step
        not_last = not_last.view(-1, *([1] * (x_t.dim() - 1)))  # (B, 1, ..., 1)
        return mean + not_last * torch.exp(0.5 * log_variance) * noise
