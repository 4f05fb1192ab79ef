"""rl_policy.sde against diffusers' Flux schedule and Euler step, torch.distributions.Normal, and hand values."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from rl_policy.sde import flux_shift_mu, flux_sigmas, ode_step, sde_step_with_logprob

# FLUX.1-dev's scheduler/scheduler_config.json
FLUX_SCHEDULER = dict(
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
    use_dynamic_shifting=True,
)  # fmt: skip


def flux_scheduler(num_steps: int, mu: float) -> FlowMatchEulerDiscreteScheduler:
    """The scheduler set up exactly as FluxPipeline.__call__ does (default sigmas, mu from calculate_shift)."""
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    sigmas = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64).numpy()
    scheduler.set_timesteps(sigmas=sigmas, mu=mu)
    return scheduler


def test_shift_mu_matches_diffusers_calculate_shift():
    """512 px Flux: (512 / 16)^2 = 1024 tokens -> mu = 0.5 + 0.65 * 768 / 3840 = 0.63; 1024 px: 4096 -> 1.15."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    assert flux_shift_mu(1024) == pytest.approx(0.63)
    assert flux_shift_mu(4096) == pytest.approx(1.15)
    for tokens in (64, 256, 1024, 4096, 8192):
        assert flux_shift_mu(tokens) == calculate_shift(tokens, 256, 4096, 0.5, 1.15)


@pytest.mark.parametrize(("num_steps", "tokens"), [(6, 1024), (6, 64), (10, 4096), (1, 256)])
def test_flux_sigmas_match_scheduler(num_steps, tokens):
    mu = flux_shift_mu(tokens)
    expected = flux_scheduler(num_steps, mu).sigmas
    sigmas = flux_sigmas(num_steps, mu)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (num_steps + 1,)
    torch.testing.assert_close(sigmas, expected, rtol=0, atol=1e-7)
    assert sigmas[0] == 1 and sigmas[-1] == 0


def test_flux_sigmas_hand_values():
    """2 steps, mu = 0: t = (1, 0.5) -> sigma = 1 / (1 + 1/t - 1) = t -> (1, 0.5, 0)."""
    torch.testing.assert_close(flux_sigmas(2, 0.0), torch.tensor([1.0, 0.5, 0.0]))


def test_noise_level_zero_is_diffusers_euler_step():
    generator = torch.Generator().manual_seed(0)
    scheduler = flux_scheduler(6, flux_shift_mu(64))
    sample = torch.randn(3, 64, 48, generator=generator)
    for index, timestep in enumerate(scheduler.timesteps):
        velocity = torch.randn(3, 64, 48, generator=generator)
        sigma, sigma_next = scheduler.sigmas[index], scheduler.sigmas[index + 1]
        expected = scheduler.step(velocity, timestep, sample, return_dict=False)[0]
        stepped = sde_step_with_logprob(velocity, sample, sigma, sigma_next, noise_level=0.0, generator=generator)
        torch.testing.assert_close(stepped.prev_sample, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(ode_step(velocity, sample, sigma, sigma_next), expected, rtol=0, atol=1e-6)
        sample = expected


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_log_prob_is_normal_log_prob(reduction):
    """Per-sample sigmas (a batch mixing timesteps, one at sigma = 1); reduced over all but the batch dim."""
    generator = torch.Generator().manual_seed(1)
    sample, velocity = torch.randn(2, 2, 5, 4, generator=generator)
    sigma, sigma_next = torch.tensor([1.0, 0.6]), torch.tensor([0.8, 0.3])
    stepped = sde_step_with_logprob(velocity, sample, sigma, sigma_next, 0.7, generator=generator, reduction=reduction)
    normal = torch.distributions.Normal(stepped.mean, stepped.step_std.expand_as(stepped.mean))
    log_density = normal.log_prob(stepped.prev_sample)
    expected = log_density.mean(dim=(1, 2)) if reduction == "mean" else log_density.sum(dim=(1, 2))
    assert stepped.log_prob.shape == (2,)
    torch.testing.assert_close(stepped.log_prob, expected)


def test_recomputed_log_prob_gives_ratio_exactly_one():
    generator = torch.Generator().manual_seed(2)
    sample, velocity = torch.randn(2, 4, 16, 12, generator=generator).to(torch.bfloat16)
    drawn = sde_step_with_logprob(velocity, sample, 0.9, 0.7, 0.8, generator=generator)
    assert drawn.prev_sample.dtype == torch.bfloat16
    again = sde_step_with_logprob(velocity, sample, 0.9, 0.7, 0.8, prev_sample=drawn.prev_sample)
    assert torch.equal(again.log_prob, drawn.log_prob)
    assert torch.equal(torch.exp(again.log_prob - drawn.log_prob), torch.ones(4))


def test_hand_computed_step_from_sigma_one():
    """sigma = 1 -> 0.5, noise 0.8, x = 1, v = -2, given x_next = 0.

    dt = -0.5; s = sigma_next = 0.5 (sigma is 1): std_t = 0.8 * sqrt(1 / 0.5) = 0.8 sqrt(2), std_t^2 = 1.28;
    mean = 1 * (1 + 1.28 / 2 * -0.5) + (-2) * (1 + 1.28 * 0 / 2) * -0.5 = 0.68 + 1 = 1.68;
    step std = 0.8 sqrt(2) * sqrt(0.5) = 0.8;
    log p(0) = -(1.68)^2 / (2 * 0.64) - log 0.8 - log sqrt(2 pi) = -2.205 + 0.22314 - 0.91894 = -2.90080.
    """
    stepped = sde_step_with_logprob(
        torch.tensor([[-2.0]]), torch.tensor([[1.0]]), 1.0, 0.5, 0.8, prev_sample=torch.tensor([[0.0]])
    )
    torch.testing.assert_close(stepped.std_t, torch.tensor([[0.8 * math.sqrt(2)]]))
    torch.testing.assert_close(stepped.step_std, torch.tensor([[0.8]]))
    torch.testing.assert_close(stepped.mean, torch.tensor([[1.68]]))
    expected = -(1.68**2) / (2 * 0.64) - math.log(0.8) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(stepped.log_prob, torch.tensor([expected]))


def test_drawn_sample_has_the_step_distribution():
    """x_next - mean over many draws: mean 0, std = std_t sqrt(-dt) = 0.5 * sqrt(0.5 / 0.5) * sqrt(0.2)."""
    generator = torch.Generator().manual_seed(3)
    sample, velocity = torch.zeros(1, 20000, 1), torch.ones(1, 20000, 1)
    stepped = sde_step_with_logprob(velocity, sample, 0.5, 0.3, 0.5, generator=generator)
    residual = stepped.prev_sample - stepped.mean
    assert abs(residual.mean().item()) < 0.01
    assert residual.std().item() == pytest.approx(0.5 * math.sqrt(0.2), rel=0.02)
