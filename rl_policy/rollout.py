"""Sampling loops of the policy: the SDE rollouts GRPO trains on, and the deterministic ODE sampler (evaluation).

`sample_trajectories` draws G samples per prompt with Flow-GRPO's SDE (rl_policy.sde) on the steps listed in
`sde_steps` and plain Euler (ODE) steps elsewhere (by default every step but the last is stochastic, as Flow-GRPO
trains only those), recording every state and each stochastic step's log-prob in a `Trajectory`.

`sample_ode` integrates the probability-flow ODE with Euler steps on the pipeline's sigma schedule, with true
classifier-free guidance when `cfg_scale` > 1 (v = v_uncond + cfg_scale * (v_cond - v_uncond), the unconditional
branch on the empty prompt: the tiny generator is trained with prompt dropout and has no guidance distillation) or
FLUX.1-dev's distilled guidance through its embedding (`guidance`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rl_policy.policy import FluxPolicy, PromptEmbeddings
from rl_policy.sde import ode_step, sde_step_with_logprob


@dataclass(frozen=True)
class SamplerSettings:
    """How GRPO samples: rollouts with the SDE, held-out evaluation with the ODE, both at resolution x resolution.

    num_steps: denoising steps of a rollout (paper: 6); eval_num_steps: the evaluation's (None: max(num_steps, 20));
    noise_level: the SDE's noise scale (Flow-GRPO: 0.7-0.8); sde_steps: the stochastic (trained) steps (None: all
    but the last); cfg_scale: true classifier-free guidance (1: off; the tiny generator: 3); guidance: FLUX.1-dev's
    distilled guidance (3.5; None for models without it); shared_noise: one initial noise per group, so its
    samples differ only by the SDE noise."""

    resolution: int = 512
    num_steps: int = 6
    eval_num_steps: int | None = None
    noise_level: float = 0.8
    sde_steps: list[int] | None = None
    cfg_scale: float = 1.0
    guidance: float | None = None
    shared_noise: bool = False

    def __post_init__(self) -> None:
        if self.resolution < 1 or self.num_steps < 1 or (self.eval_num_steps is not None and self.eval_num_steps < 1):
            raise ValueError(f"sampler: resolution and step counts must be positive, got {self}")
        if self.sde_steps is not None and not all(0 <= step < self.num_steps for step in self.sde_steps):
            raise ValueError(f"sampler.sde_steps must list steps of the {self.num_steps}-step schedule")


@dataclass
class Trajectory:
    """S = P * G sampled images of P prompts (sample s belongs to prompt s // G), T denoising steps."""

    latents: torch.Tensor  # [S, T + 1, N, C]: the state before each step, then the final latents
    log_probs: torch.Tensor  # [S, T] float32: log-prob of each step's transition (NaN on ODE steps)
    sigmas: torch.Tensor  # [T + 1] from 1 down to 0
    stochastic: torch.Tensor  # [T] bool: the SDE steps (the ones GRPO trains)
    prompt_index: torch.Tensor  # [S] long: index of each sample's prompt in the batch

    @property
    def num_samples(self) -> int:
        return self.latents.shape[0]


def guidance_inputs(
    policy: FluxPolicy, prompts: Sequence[str], cfg_scale: float
) -> tuple[PromptEmbeddings, PromptEmbeddings | None]:
    """Prompt embeddings and, with true classifier-free guidance (cfg_scale != 1), the empty prompt's."""
    negative = policy.encode_prompts([""] * len(prompts)) if cfg_scale != 1.0 else None
    return policy.encode_prompts(prompts), negative


def select_embeddings(embeddings: PromptEmbeddings, rows: torch.Tensor) -> PromptEmbeddings:
    """The embeddings of rows [n] (indices into the batch)."""
    return PromptEmbeddings(*(None if field is None else field[rows] for field in embeddings))


@torch.no_grad()
def sample_trajectories(
    policy: FluxPolicy,
    prompts: Sequence[str],
    group_size: int,
    *,
    height: int,
    width: int,
    num_steps: int = 6,
    noise_level: float = 0.8,
    sde_steps: Sequence[int] | None = None,
    cfg_scale: float = 1.0,
    guidance: float | None = None,
    shared_noise: bool = False,
    generator: torch.Generator | None = None,
) -> Trajectory:
    """G = group_size SDE samples of each prompt (see the module docstring). sde_steps: the stochastic step indices
    (default every step but the last); shared_noise: one initial noise per group (the samples then differ only by
    the SDE noise)."""
    if group_size < 1 or num_steps < 1:
        raise ValueError(f"group_size and num_steps must be positive, got {group_size}, {num_steps}")
    stochastic = torch.zeros(num_steps, dtype=torch.bool)
    stochastic[list(range(num_steps - 1)) if sde_steps is None else list(sde_steps)] = True
    if not stochastic.any():
        raise ValueError("no stochastic step: GRPO needs at least one SDE step to train")
    prompt_index = torch.arange(len(prompts)).repeat_interleave(group_size)  # [S]
    samples = len(prompt_index)
    if shared_noise:
        latents = initial_noise(policy, len(prompts), height, width, generator)[prompt_index]
    else:
        latents = initial_noise(policy, samples, height, width, generator)
    embeddings, negative = guidance_inputs(policy, prompts, cfg_scale)
    embeddings = select_embeddings(embeddings, prompt_index)
    negative = None if negative is None else select_embeddings(negative, prompt_index)
    sigmas = policy.sigmas(num_steps, height, width).to(latents.device)
    states, log_probs = [latents], torch.full((samples, num_steps), float("nan"))
    for step in range(num_steps):
        sigma = sigmas[step].expand(samples)
        velocity = policy.velocity(
            latents, sigma, embeddings, height, width, guidance=guidance, negative=negative, true_cfg_scale=cfg_scale
        )
        if stochastic[step]:
            result = sde_step_with_logprob(
                velocity, latents, sigmas[step], sigmas[step + 1], noise_level, generator=generator
            )
            latents, log_probs[:, step] = result.prev_sample, result.log_prob.float().cpu()
        else:
            latents = ode_step(velocity, latents, sigmas[step], sigmas[step + 1])
        states.append(latents)
    return Trajectory(torch.stack(states, dim=1), log_probs, sigmas, stochastic, prompt_index)


def initial_noise(
    policy: FluxPolicy, batch: int, height: int, width: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard normal packed latents [batch, tokens, channels] for height x width images, drawn on `generator`'s
    device (a CPU generator gives the same noise whatever device the transformer is on)."""
    rows, columns = policy.latent_grid(height, width)
    channels = policy.transformer.config.in_channels
    device = policy.transformer.device if generator is None else generator.device
    noise = torch.randn((batch, rows * columns, channels), generator=generator, device=device, dtype=torch.float32)
    return noise.to(policy.transformer.device, policy.transformer.dtype)


@torch.no_grad()
def sample_ode(
    policy: FluxPolicy,
    prompts: Sequence[str],
    *,
    height: int,
    width: int,
    num_steps: int = 20,
    cfg_scale: float = 1.0,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] for `prompts` by `num_steps` Euler steps of the ODE from `noise` (default:
    drawn from `generator`)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    embeddings = policy.encode_prompts(prompts)
    negative = policy.encode_prompts([""] * len(prompts)) if cfg_scale != 1.0 else None
    latents = noise if noise is not None else initial_noise(policy, len(prompts), height, width, generator)
    sigmas = policy.sigmas(num_steps, height, width).to(latents.device)
    for step in range(num_steps):
        sigma = sigmas[step].expand(len(prompts))
        velocity = policy.velocity(
            latents, sigma, embeddings, height, width, guidance=guidance, negative=negative, true_cfg_scale=cfg_scale
        )
        latents = ode_step(velocity, latents, sigmas[step], sigmas[step + 1])
    return policy.decode(latents, height, width)
