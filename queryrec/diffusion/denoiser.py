"""The denoiser: an MLP that predicts x0 from a noised item vector x_t and its step t (DiffRec's DNN)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DenoiserConfig:
    """Sizes of DiffRec's denoiser; `items` is the width of x0 (the item universe |I|)."""

    items: int  # I: width of x0 and of the prediction
    hidden: tuple[int, ...] = (256,)  # hidden layer sizes, each followed by tanh
    time_dim: int = 16  # width of the timestep embedding
    dropout: float = (
        0.1  # on the (normalised) input, as in DiffRec: a denoising-autoencoder corruption
    )
    normalize_input: bool = True  # l2-normalise x_t per row, so dense and sparse rows look alike
    pointwise: int = 0  # hidden width of the per-item path g(x_t[j]); 0: DiffRec's MLP only
    words: int = 0  # vocabulary of the query-word condition; 0: unconditioned (DiffRec)
    word_dim: int = 64  # width of the projected word bag

    def __post_init__(self) -> None:
        if (
            self.items < 1
            or self.time_dim < 1
            or self.pointwise < 0
            or any(size < 1 for size in self.hidden)
        ):
            raise ValueError(
                f"items, time_dim and hidden sizes must be positive (pointwise >= 0), got "
                f"items={self.items}, time_dim={self.time_dim}, hidden={self.hidden}, "
                f"pointwise={self.pointwise}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def timestep_embedding(t: Tensor, frequencies: Tensor) -> Tensor:
    """Sinusoidal embedding of the step: t (B,) int64, frequencies (half,) -> (B, 2 * half).

    [cos(t f), sin(t f)] as in DiffRec / guided-diffusion; an odd width gets a zero column
    appended by the caller.
    """
    angles = t.to(frequencies.dtype).unsqueeze(-1) * frequencies.unsqueeze(0)  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # (B, 2 * half)


class Denoiser(nn.Module):
    """x_t (B, I) and t (B,) -> predicted x0 (B, I).

    input = [dropout(l2norm(x_t)), Linear(sinusoid(t))] -> (Linear -> tanh) per hidden size
    -> Linear to I. DiffRec predicts x0 rather than the noise: with a tiny noise scale the
    noise is hard to see, while x0 is what the recommender reads.

    With `pointwise` > 0 a second, per-item path is added to that output:
    g(x_t[j]) = Linear(tanh(Linear(x_t[j]))), one small network shared by all items and
    applied to each item's own raw value. The MLP sees an item's value only through a
    bottleneck shared with thousands of others and must learn per item what it means;
    g reads it directly and the same way for every item (for a position-graded x0: how
    much higher a shown item's would-be click chance is at the top of the list).
    """

    frequencies: Tensor  # (time_dim // 2,) buffer: follows the module across devices

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.config = cfg
        half = cfg.time_dim // 2
        max_period = 10_000.0
        frequencies = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32) / max(half, 1)
        )  # (half,)
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.time_projection = nn.Linear(cfg.time_dim, cfg.time_dim)
        self.input_dropout = nn.Dropout(cfg.dropout)
        layers: list[nn.Module] = []
        width = cfg.items + cfg.time_dim
        self.word_projection = nn.Linear(cfg.words, cfg.word_dim) if cfg.words else None
        if cfg.words:
            width += cfg.word_dim
        for size in cfg.hidden:
            layers += [nn.Linear(width, size), nn.Tanh()]
            width = size
        layers.append(nn.Linear(width, cfg.items))
        self.net = nn.Sequential(*layers)
        self.pointwise = (
            nn.Sequential(nn.Linear(1, cfg.pointwise), nn.Tanh(), nn.Linear(cfg.pointwise, 1))
            if cfg.pointwise
            else None
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """DiffRec's init: Xavier-normal weights, N(0, 0.001) biases."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.normal_(module.bias, mean=0.0, std=0.001)

    def forward(self, x_t: Tensor, t: Tensor, words: Tensor | None = None) -> Tensor:
        """x_t (B, I) float, t (B,) int64 in [0, steps), words (B, V) mean word bag of
        the query when the denoiser is conditioned -> predicted x0 (B, I)."""
        time = timestep_embedding(t, self.frequencies).to(x_t.dtype)  # (B, 2 * half)
        if self.config.time_dim % 2:
            time = F.pad(time, (0, 1))  # (B, time_dim): odd width, zero last column
        time = self.time_projection(time)  # (B, time_dim)
        x = F.normalize(x_t, dim=-1) if self.config.normalize_input else x_t  # (B, I)
        x = self.input_dropout(x)
        parts = [x, time]
        if self.word_projection is not None:
            if words is None:
                raise ValueError("this denoiser is conditioned on query words: pass words")
            parts.append(self.word_projection(words))  # (B, word_dim)
        out = self.net(torch.cat(parts, dim=-1))  # (B, I)
        if self.pointwise is not None:
            out = out + self.pointwise(x_t.unsqueeze(-1)).squeeze(-1)  # (B, I, 1) -> (B, I)
        return out
