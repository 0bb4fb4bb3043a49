"""DiffRec's Gaussian diffusion: golden schedule numbers, closed forms, and a toy recovery."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from queryrec.diffusion import (
    Denoiser,
    DenoiserConfig,
    DiffusionSchedule,
    ScheduleConfig,
    reconstruct,
    training_loss,
)

GOLDEN = ScheduleConfig(steps=3, noise_scale=0.1, noise_min=0.001, noise_max=0.01)


def assert_all_close(actual: Tensor, expected: list[float], rel: float = 1e-9) -> None:
    assert actual.dtype == torch.float64
    assert len(actual) == len(expected)
    for got, want in zip(actual.tolist(), expected, strict=True):
        assert math.isclose(got, want, rel_tol=rel, abs_tol=1e-15), (got, want)


def test_golden_schedule_numbers() -> None:
    schedule = DiffusionSchedule(GOLDEN)
    # variance = linspace(0.1 * 0.001, 0.1 * 0.01, 3); alpha_bar = 1 - variance.
    assert_all_close(schedule.variance, [1e-4, 5.5e-4, 1e-3])
    # beta_0 = variance_0; beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}.
    betas = [1e-4, 1 - 0.99945 / 0.9999, 1 - 0.999 / 0.99945]
    assert_all_close(schedule.betas, betas)
    assert_all_close(schedule.betas, [1e-4, 4.500450045004500e-4, 4.502476361998099e-4])
    assert_all_close(schedule.alphas, [1 - b for b in betas])
    assert_all_close(schedule.alphas_cumprod, [0.9999, 0.99945, 0.999])
    assert_all_close(schedule.alphas_cumprod_prev, [1.0, 0.9999, 0.99945])
    # DDPM: posterior variance beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t); 0 at t = 0,
    # whose log is replaced by the value at t = 1.
    posterior = [0.0, betas[1] * 1e-4 / 5.5e-4, betas[2] * 5.5e-4 / 1e-3]
    assert_all_close(schedule.posterior_variance, posterior)
    assert_all_close(
        schedule.posterior_log_variance_clipped,
        [math.log(posterior[1]), math.log(posterior[1]), math.log(posterior[2])],
    )
    assert_all_close(
        schedule.posterior_mean_coef1,
        [1.0, betas[1] * math.sqrt(0.9999) / 5.5e-4, betas[2] * math.sqrt(0.99945) / 1e-3],
    )
    assert_all_close(
        schedule.posterior_mean_coef2,
        [
            0.0,
            1e-4 * math.sqrt(1 - betas[1]) / 5.5e-4,
            5.5e-4 * math.sqrt(1 - betas[2]) / 1e-3,
        ],
    )


def test_schedule_holds_no_parameters() -> None:
    schedule = DiffusionSchedule()
    assert not isinstance(schedule, nn.Module)
    tensors = [value for value in vars(schedule).values() if isinstance(value, Tensor)]
    assert len(tensors) >= 10
    assert all(not isinstance(v, nn.Parameter) and not v.requires_grad for v in tensors)


def test_single_step_schedule_is_usable() -> None:
    schedule = DiffusionSchedule(ScheduleConfig(steps=1))
    assert torch.isfinite(schedule.posterior_log_variance_clipped).all()
    x0 = torch.randn(2, 6)
    t = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(schedule.step(x0, x0 * 0.5, t, torch.randn(2, 6)), x0)


@pytest.mark.parametrize("step", [0, 1, 2])
def test_add_noise_without_noise_scales_x0(step: int) -> None:
    schedule = DiffusionSchedule(GOLDEN)
    x0 = torch.randn(4, 7, dtype=torch.float64)
    t = torch.full((4,), step, dtype=torch.long)
    x_t = schedule.add_noise(x0, torch.zeros_like(x0), t)
    torch.testing.assert_close(x_t, math.sqrt(schedule.alphas_cumprod[step].item()) * x0)


def test_add_noise_is_per_row_and_keeps_dtype() -> None:
    schedule = DiffusionSchedule(GOLDEN)
    x0 = torch.randn(3, 5)
    noise = torch.randn(3, 5)
    t = torch.tensor([2, 0, 1])
    x_t = schedule.add_noise(x0, noise, t)
    assert x_t.dtype == torch.float32
    for row, step in enumerate(t.tolist()):
        alpha_bar = schedule.alphas_cumprod[step].item()
        expected = math.sqrt(alpha_bar) * x0[row] + math.sqrt(1 - alpha_bar) * noise[row]
        torch.testing.assert_close(x_t[row], expected)


def test_default_schedule_barely_moves_x0_at_the_first_step() -> None:
    schedule = DiffusionSchedule()
    x0 = torch.where(torch.rand(8, 30) < 0.2, 1.0, -1.0)
    x_t = schedule.add_noise(x0, torch.zeros_like(x0), torch.zeros(8, dtype=torch.long))
    assert (x_t - x0).abs().max().item() < 1e-3


@pytest.mark.parametrize("step", [0, 1, 2])
def test_posterior_mean_of_a_noiseless_x_t_is_x0_one_step_back(step: int) -> None:
    # x_t = sqrt(ab_t) x0, and coef1 + coef2 sqrt(ab_t)
    #   = sqrt(ab_{t-1}) (beta_t + alpha_t (1 - ab_{t-1})) / (1 - ab_t) = sqrt(ab_{t-1}),
    # because sqrt(ab_t) = sqrt(alpha_t) sqrt(ab_{t-1}) and beta_t + alpha_t - ab_t = 1 - ab_t.
    schedule = DiffusionSchedule(GOLDEN)
    x0 = torch.randn(4, 7, dtype=torch.float64)
    t = torch.full((4,), step, dtype=torch.long)
    x_t = schedule.add_noise(x0, torch.zeros_like(x0), t)
    mean, log_variance = schedule.posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(mean, math.sqrt(schedule.alphas_cumprod_prev[step].item()) * x0)
    assert log_variance.shape == (4, 1)
    expected_log_variance = schedule.posterior_log_variance_clipped[step].item()
    torch.testing.assert_close(log_variance, torch.full((4, 1), expected_log_variance).double())


def test_step_without_noise_is_the_posterior_mean() -> None:
    schedule = DiffusionSchedule(GOLDEN)
    x0_pred, x_t = torch.randn(2, 4, 9).unbind(0)
    for step in (0, 2):
        t = torch.full((4,), step, dtype=torch.long)
        mean, _ = schedule.posterior_mean_variance(x0_pred, x_t, t)
        torch.testing.assert_close(schedule.step(x0_pred, x_t, t), mean)
    # At t = 0 the mean is x0_pred itself (coef1 = 1, coef2 = 0).
    t0 = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(schedule.step(x0_pred, x_t, t0), x0_pred)


def test_step_adds_noise_except_at_the_last_step() -> None:
    schedule = DiffusionSchedule(GOLDEN)
    x0_pred, x_t, noise = torch.randn(3, 2, 5).unbind(0)
    t = torch.tensor([0, 2])
    mean, log_variance = schedule.posterior_mean_variance(x0_pred, x_t, t)
    stepped = schedule.step(x0_pred, x_t, t, noise)
    torch.testing.assert_close(stepped[0], mean[0])
    torch.testing.assert_close(stepped[1], mean[1] + torch.exp(0.5 * log_variance[1]) * noise[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps"),
        ({"noise_scale": 0.0}, "noise_scale"),
        ({"noise_scale": -1.0}, "noise_scale"),
        ({"noise_min": 0.0}, "noise_min"),
        ({"noise_min": 0.02, "noise_max": 0.01}, "noise_min < noise_max"),
        ({"noise_min": 0.01, "noise_max": 0.01}, "noise_min < noise_max"),
        ({"noise_scale": 100.0, "noise_max": 0.02}, "below 1"),
    ],
)
def test_schedule_config_rejects_bad_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kwargs)


def test_denoiser_shapes_and_init() -> None:
    torch.manual_seed(0)
    for time_dim in (16, 7):
        denoiser = Denoiser(DenoiserConfig(items=12, hidden=(10, 6), time_dim=time_dim))
        out = denoiser(torch.randn(5, 12), torch.tensor([0, 1, 2, 3, 4]))
        assert out.shape == (5, 12)
    biases = [m.bias for m in denoiser.modules() if isinstance(m, nn.Linear)]
    assert len(biases) == 4  # time projection, two hidden, output
    assert all(b.abs().max().item() < 0.01 for b in biases)
    assert list(denoiser.state_dict()) == [
        "time_projection.weight",
        "time_projection.bias",
        "net.0.weight",
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
        "net.4.weight",
        "net.4.bias",
    ]


def test_pointwise_path_reads_each_items_own_value() -> None:
    """With the MLP's output layer zeroed, output j is g(x_t[j]) for one shared g."""
    torch.manual_seed(0)
    denoiser = Denoiser(DenoiserConfig(items=6, hidden=(8,), pointwise=4))
    assert denoiser.pointwise is not None
    with torch.no_grad():
        denoiser.net[-1].weight.zero_()
        denoiser.net[-1].bias.zero_()
    x_t = torch.tensor([[0.0, -0.5, -1.0, 1.0, -0.5, 0.25]])
    out = denoiser(x_t, torch.tensor([2]))[0]  # (I,)
    expected = denoiser.pointwise(x_t[0].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out, expected)
    assert out[1] == out[4] and out[1] != out[2]  # same value, same output, whatever the item
    with pytest.raises(ValueError, match="pointwise"):
        DenoiserConfig(items=6, pointwise=-1)


def test_word_condition_changes_the_prediction_and_is_required() -> None:
    torch.manual_seed(0)
    denoiser = Denoiser(DenoiserConfig(items=6, hidden=(8,), words=5, dropout=0.0))
    x_t, t = torch.zeros(2, 6), torch.tensor([0, 0])
    bags = torch.tensor([[0.5, 0.5, 0, 0, 0], [0, 0, 0, 1.0, 0]])  # (B, V) mean word bags
    out = denoiser(x_t, t, bags)
    assert out.shape == (2, 6) and not torch.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="conditioned on query words"):
        denoiser(x_t, t)


# --- a toy set where the answer is known -------------------------------------------------

ITEMS, PROTOTYPES, POSITIVES, HIDDEN = 40, 8, 5, 2


@dataclass
class Trained:
    schedule: DiffusionSchedule
    denoiser: Denoiser
    positives: Tensor  # (P, 5) item ids of each prototype's +1 entries
    prototypes: Tensor  # (P, I) in {-1, +1}
    losses: list[float]


@pytest.fixture(scope="module")
def trained() -> Trained:
    """8 prototypes of 5 random positives over 40 items, trained on for 300 Adam steps."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    positives = torch.stack(
        [torch.randperm(ITEMS, generator=generator)[:POSITIVES] for _ in range(PROTOTYPES)]
    )  # (P, 5)
    prototypes = torch.full((PROTOTYPES, ITEMS), -1.0).scatter_(1, positives, 1.0)  # (P, I)
    schedule = DiffusionSchedule(ScheduleConfig())
    denoiser = Denoiser(DenoiserConfig(items=ITEMS, hidden=(64,), dropout=0.1))
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=1e-2)
    losses = []
    for _ in range(300):
        loss = training_loss(schedule, denoiser, prototypes, generator=generator)
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    return Trained(schedule, denoiser, positives, prototypes, losses)


def test_training_loss_decreases(trained: Trained) -> None:
    first, last = trained.losses[:20], trained.losses[-20:]
    assert sum(last) / 20 < 0.1 * sum(first) / 20


@pytest.mark.parametrize("start_step", [None, 0, 2])
def test_reconstruction_recovers_hidden_positives(trained: Trained, start_step: int | None) -> None:
    # Hide 2 of each prototype's 5 positives (set them to -1), 4 times over; rank the items
    # that are not visibly positive and check the hidden ones come out on top.
    generator = torch.Generator().manual_seed(1)
    recalls = []
    for _ in range(4):
        hidden = torch.stack(
            [
                row[torch.randperm(POSITIVES, generator=generator)[:HIDDEN]]
                for row in trained.positives
            ]
        )  # (P, 2)
        corrupted = trained.prototypes.clone().scatter_(1, hidden, -1.0)  # (P, I)
        scores = reconstruct(
            trained.schedule, trained.denoiser, corrupted, start_step, generator=generator
        )
        scores = scores.masked_fill(corrupted > 0, float("-inf"))  # drop the visible positives
        top = scores.topk(5, dim=1).indices  # (P, 5)
        found = (top.unsqueeze(2) == hidden.unsqueeze(1)).any(dim=1)  # (P, 2)
        recalls.append(found.float().mean(dim=1))
    recall = torch.cat(recalls).mean().item()
    chance = 5 / (ITEMS - (POSITIVES - HIDDEN))  # 5 picks among 37 candidates
    assert chance < 0.14
    assert recall >= 0.8, recall


def test_reconstruct_returns_the_denoiser_prediction_at_step_zero(trained: Trained) -> None:
    x0 = trained.prototypes[:3]
    out = reconstruct(
        trained.schedule, trained.denoiser, x0, 1, generator=torch.Generator().manual_seed(5)
    )
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    t0 = torch.zeros(3, dtype=torch.long)
    trained.denoiser.eval()
    try:
        with torch.no_grad():
            expected = trained.denoiser(trained.schedule.add_noise(x0, noise, t0), t0)
    finally:
        trained.denoiser.train()
    torch.testing.assert_close(out, expected)


def test_reconstruct_from_x0_is_deterministic(trained: Trained) -> None:
    x0 = trained.prototypes
    first = reconstruct(trained.schedule, trained.denoiser, x0, start_step=0)
    second = reconstruct(trained.schedule, trained.denoiser, x0, start_step=0)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    generator = torch.Generator().manual_seed(0)
    noisy = reconstruct(
        trained.schedule, trained.denoiser, x0, start_step=0, noisy=True, generator=generator
    )
    assert not torch.equal(noisy, first)
    assert not noisy.requires_grad


@pytest.mark.parametrize("training", [True, False])
def test_reconstruct_restores_the_denoiser_mode(trained: Trained, training: bool) -> None:
    trained.denoiser.train(training)
    try:
        reconstruct(trained.schedule, trained.denoiser, trained.prototypes[:2])
        assert trained.denoiser.training is training
    finally:
        trained.denoiser.train()


@pytest.mark.parametrize("start_step", [-1, 6])
def test_reconstruct_rejects_out_of_range_start(trained: Trained, start_step: int) -> None:
    with pytest.raises(ValueError, match="start_step"):
        reconstruct(trained.schedule, trained.denoiser, trained.prototypes, start_step)
