"""The flow-matching sampler as an SDE with per-step log-probabilities (Flow-GRPO, Liu et al. 2025, arXiv 2505.05470).

The step maths (`sde_step_with_logprob`, `ode_step`, `SDEStep`, `reduce_per_sample`) live in `shared.flow_sde`, the
one implementation that the data builder's generator backends also draw with (as a diffusers scheduler); they are
re-exported here (the formulas and the log-prob reduction are documented there). This module adds the forward
process and Flux's sigma schedule.

Simplified against Flow-GRPO's code: sigmas are passed in directly (per sample, so a batch may mix timesteps)
instead of being looked up in a scheduler from timesteps; the Flux sigma schedule is reproduced here as a pure
function (`flux_sigmas`), identical to FluxPipeline + FlowMatchEulerDiscreteScheduler with dynamic shifting.
"""

from __future__ import annotations

import math

import torch

from shared.flow_sde import Reduction, SDEStep, ode_step, reduce_per_sample, sde_step_with_logprob

__all__ = [
    "Reduction",
    "SDEStep",
    "flux_shift_mu",
    "flux_sigmas",
    "noised_latents",
    "ode_step",
    "reduce_per_sample",
    "sde_step_with_logprob",
]


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
