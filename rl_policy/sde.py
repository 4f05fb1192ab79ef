"""The flow-matching sampler as an SDE with per-step log-probabilities (Flow-GRPO, Liu et al. 2025, arXiv 2505.05470).

A rectified-flow model predicts a velocity v(x, sigma) with x_sigma = (1 - sigma) * x_0 + sigma * noise; sampling
integrates dx = v dsigma from sigma = 1 (noise) down to sigma = 0 (image). Flow-GRPO replaces that ODE by an SDE with
the same marginals and discretises it with Euler-Maruyama, so every step is a Gaussian with a tractable log-density:

    dt     = sigma_next - sigma                                   (< 0)
    std_t  = noise_level * sqrt(sigma / (1 - s)),   s = sigma, except s = sigma_next where sigma == 1
    mean   = x * (1 + std_t^2 / (2 sigma) * dt) + v * (1 + std_t^2 * (1 - sigma) / (2 sigma)) * dt
    x_next = mean + std_t * sqrt(-dt) * eps,        eps ~ N(0, I)
    log p(x_next | x) = sum_d log N(x_next_d; mean_d, (std_t * sqrt(-dt))^2)    (reduced over d, see below)

With noise_level = 0 the step is the deterministic Euler step x_next = x + v * dt (`ode_step`, what diffusers'
FlowMatchEulerDiscreteScheduler does).

Log-prob reduction: Flow-GRPO averages the per-element log-density over every dimension but the batch ("mean"),
which we follow by default: the PPO ratio exp(logp - logp_old) is then a per-element geometric mean, so its
clip range (1e-4 .. 1e-5 in Flow-GRPO's Flux configs) does not depend on the image size. "sum" gives the true
log-density of the step (ratios of order exp(D * per-element change), D = tokens * channels), which would need a
clip range scaled down by D.

Simplified against Flow-GRPO's code: sigmas are passed in directly (per sample, so a batch may mix timesteps)
instead of being looked up in a scheduler from timesteps; the Flux sigma schedule is reproduced here as a pure
function (`flux_sigmas`), identical to FluxPipeline + FlowMatchEulerDiscreteScheduler with dynamic shifting.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch

Reduction = Literal["mean", "sum"]


def noised_latents(clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The forward process, x_sigma = (1 - sigma) x0 + sigma eps; sigma [...] broadcast over the last two dims of
    clean and noise ([..., N, C])."""
    sigma = sigma[..., None, None]
    return (1 - sigma) * clean + sigma * noise


def flux_shift_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux's resolution-dependent shift mu (diffusers' `calculate_shift`): linear in the number of image tokens,
    base_shift at base_seq_len tokens and max_shift at max_seq_len (extrapolated outside). A 1024 px Flux image has
    (1024 / 16)^2 = 4096 tokens: mu = 1.15; 512 px: 1024 tokens, mu = 0.5 + 0.65 * 768 / 3840 = 0.63."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    intercept = base_shift - slope * base_seq_len
    return image_seq_len * slope + intercept


def flux_sigmas(num_steps: int, mu: float) -> torch.Tensor:
    """FluxPipeline's sigma schedule for `num_steps` steps, with the terminal 0 appended: [num_steps + 1], float32.

    t = linspace(1, 1 / num_steps, num_steps); sigma = e^mu / (e^mu + (1 / t - 1)) (exponential time shift), so
    sigma_0 = 1 exactly and larger mu keeps sigma high for longer (more steps spent at high noise).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    # float64 linspace then float32 maths, in the order diffusers uses, so the numbers match it bit for bit.
    t = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64).float()
    sigmas = math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))
    return torch.cat([sigmas, sigmas.new_zeros(1)])


class SDEStep(NamedTuple):
    """One Euler-Maruyama step. B = batch; the other dims (e.g. [B, tokens, channels]) are those of the sample."""

    prev_sample: torch.Tensor  # [B, ...] x_next, in the sample's dtype
    log_prob: torch.Tensor  # [B] float32, log p(x_next | x) reduced over all but the batch dim
    mean: torch.Tensor  # [B, ...] float32, mean of the step distribution
    std_t: torch.Tensor  # [B, 1, ...] float32, noise_level * sqrt(sigma / (1 - s)) (Flow-GRPO's KL uses it)
    step_std: torch.Tensor  # [B, 1, ...] float32, std_t * sqrt(-dt): the step's standard deviation


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or [B] value as float32 [B, 1, ...] broadcastable against `like` [B, ...]."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.ndim == 0:
        value = value.expand(like.shape[0])
    assert value.shape == (like.shape[0],), f"expected a scalar or [{like.shape[0]}], got {tuple(value.shape)}"
    return value.view(-1, *([1] * (like.ndim - 1)))


def reduce_per_sample(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Mean or sum of values [B, ...] over all but the batch dim: [B]."""
    dims = tuple(range(1, values.ndim))
    if reduction == "mean":
        return values.mean(dim=dims)
    if reduction == "sum":
        return values.sum(dim=dims)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def sde_step_with_logprob(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise_level: float,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
) -> SDEStep:
    """One Flow-GRPO SDE step from `sample` at `sigma` to `sigma_next` (formulas in the module docstring).

    velocity, sample: [B, ...] (Flux: [B, tokens, channels]); sigma, sigma_next: scalars or [B] with
    1 >= sigma > sigma_next >= 0. Without `prev_sample` a new x_next is drawn (eps from `generator`); with it, the
    log-prob of that given x_next is computed instead (training recomputes the rollout's log-probs this way).
    Maths in float32; x_next is cast to the sample's dtype first and its log-prob is that of the cast value, so a
    recomputation with the same velocity gives exactly the same log-prob. noise_level = 0 gives the Euler step; the
    log-prob is then undefined (NaN).
    """
    sigma = _per_sample(sigma, sample)
    sigma_next = _per_sample(sigma_next, sample)
    sample32, velocity32 = sample.float(), velocity.float()
    dt = sigma_next - sigma
    # At sigma = 1 the ratio sigma / (1 - sigma) is infinite; Flow-GRPO uses the next sigma there.
    s = torch.where(sigma == 1, sigma_next, sigma)
    std_t = noise_level * torch.sqrt(sigma / (1 - s))
    mean = sample32 * (1 + std_t**2 / (2 * sigma) * dt) + velocity32 * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    step_std = std_t * torch.sqrt(-dt)
    if prev_sample is None:
        eps = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        prev_sample = (mean + step_std * eps).to(sample.dtype)
    # Gaussian log-density of x_next; x_next is data here, never differentiated through.
    log_density = (
        -((prev_sample.detach().float() - mean) ** 2) / (2 * step_std**2)
        - torch.log(step_std)
        - 0.5 * math.log(2 * math.pi)
    )
    return SDEStep(prev_sample, reduce_per_sample(log_density, reduction), mean, std_t, step_std)


def ode_step(
    velocity: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float
) -> torch.Tensor:
    """The deterministic Euler step x_next = x + v * (sigma_next - sigma), [B, ...] in the sample's dtype (the
    probability-flow ODE; evaluation sampling and the untrained last step)."""
    dt = _per_sample(sigma_next, sample) - _per_sample(sigma, sample)
    return (sample.float() + velocity.float() * dt).to(sample.dtype)
