"""Flow-GRPO's SDE step for rectified-flow samplers (Liu et al. 2025, arXiv 2505.05470), the one implementation that
the RL rollouts (`rl_policy.sde`, `rl_policy.rollout`) and the data builder's generator backends
(`data_synthesis.generators`, through `FlowSDEScheduler`) both draw with.

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

`FlowSDEScheduler` is the same step as a diffusers scheduler: a `FlowMatchEulerDiscreteScheduler` (so a pipeline
sets its sigmas exactly as before) whose `step` takes the SDE step on every step but the last (Flow-GRPO's rollout:
the last step, to sigma = 0, is an Euler step), with one noise generator per image, so an image's noise depends on
its own seed and not on the batch it is drawn in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput

Reduction = Literal["mean", "sum"]


class SDEStep(NamedTuple):
    """One Euler-Maruyama step. B = batch; the other dims (e.g. [B, tokens, channels]) are those of the sample."""

    prev_sample: torch.Tensor  # [B, ...] x_next, in the sample's dtype
    log_prob: torch.Tensor  # [B] float32, log p(x_next | x) reduced over all but the batch dim
    mean: torch.Tensor  # [B, ...] float32, mean of the step distribution
    std_t: torch.Tensor  # [B, 1, ...] float32, noise_level * sqrt(sigma / (1 - s)) (Flow-GRPO's KL uses it)
    step_std: torch.Tensor  # [B, 1, ...] float32, std_t * sqrt(-dt): the step's standard deviation


def per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
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
    noise: torch.Tensor | None = None,
) -> SDEStep:
    """One Flow-GRPO SDE step from `sample` at `sigma` to `sigma_next` (formulas in the module docstring).

    velocity, sample: [B, ...] (Flux: [B, tokens, channels]); sigma, sigma_next: scalars or [B] with
    1 >= sigma > sigma_next >= 0. Without `prev_sample` a new x_next is drawn (eps from `generator`, or `noise`
    [B, ...] when given); with it, the log-prob of that given x_next is computed instead (training recomputes the
    rollout's log-probs this way). Maths in float32; x_next is cast to the sample's dtype first and its log-prob is
    that of the cast value, so a recomputation with the same velocity gives exactly the same log-prob.
    noise_level = 0 gives the Euler step; the log-prob is then undefined (NaN).
    """
    sigma = per_sample(sigma, sample)
    sigma_next = per_sample(sigma_next, sample)
    sample32, velocity32 = sample.float(), velocity.float()
    dt = sigma_next - sigma
    # At sigma = 1 the ratio sigma / (1 - sigma) is infinite; Flow-GRPO uses the next sigma there.
    s = torch.where(sigma == 1, sigma_next, sigma)
    std_t = noise_level * torch.sqrt(sigma / (1 - s))
    mean = sample32 * (1 + std_t**2 / (2 * sigma) * dt) + velocity32 * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    step_std = std_t * torch.sqrt(-dt)
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        assert noise.shape == sample.shape, f"noise {tuple(noise.shape)} for a sample {tuple(sample.shape)}"
        prev_sample = (mean + step_std * noise.float()).to(sample.dtype)
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
    dt = per_sample(sigma_next, sample) - per_sample(sigma, sample)
    return (sample.float() + velocity.float() * dt).to(sample.dtype)


class FlowSDEScheduler(FlowMatchEulerDiscreteScheduler):
    """Flow-GRPO's rollout sampler as a diffusers scheduler (module docstring). Build it from a pipeline's scheduler
    (`FlowSDEScheduler.from_config(pipeline.scheduler.config)`), then call `set_sde(noise_level, generators)` before
    each pipeline call: one CPU `torch.Generator` per image of the batch, in batch order."""

    noise_level: float = 0.0
    noise_generators: Sequence[torch.Generator] = ()

    def set_sde(self, noise_level: float, generators: Sequence[torch.Generator]) -> None:
        if not noise_level >= 0:
            raise ValueError(f"noise_level must be >= 0, got {noise_level}")
        self.noise_level, self.noise_generators = float(noise_level), list(generators)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        *args,
        return_dict: bool = True,
        **kwargs,
    ) -> FlowMatchEulerDiscreteSchedulerOutput | tuple:
        if kwargs.get("per_token_timesteps") is not None or self.config.stochastic_sampling:
            raise ValueError(
                "FlowSDEScheduler takes one sigma per step (no per-token timesteps, no stochastic_sampling)"
            )
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        last = self.step_index == len(self.sigmas) - 2
        if last or self.noise_level == 0:
            prev_sample = ode_step(model_output, sample, sigma, sigma_next)
        else:
            if len(self.noise_generators) != sample.shape[0]:
                raise ValueError(
                    f"FlowSDEScheduler has {len(self.noise_generators)} noise generators for a batch of "
                    f"{sample.shape[0]}: call set_sde with one per image"
                )
            noise = torch.stack(
                [torch.randn(sample.shape[1:], generator=g, dtype=torch.float32) for g in self.noise_generators]
            ).to(sample.device)
            prev_sample = sde_step_with_logprob(
                model_output, sample, sigma, sigma_next, self.noise_level, noise=noise
            ).prev_sample
        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)
