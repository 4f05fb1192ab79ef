"""The two training objectives `GRPOModule` can optimise on the same rollouts, groups and advantages, selected in a
config by `class_path` (`model.objective`):

- `ClippedGRPO` (default; Flow-GRPO, as the SpatialScore paper trains FLUX.1-dev): for each kept sample and SDE step,
  the log-prob of the recorded transition under the LoRA policy, the clipped ratio loss (`grpo.grpo_clip_loss`) and
  beta times the KL to the reference policy (the same network with the adapter disabled; `kl_form`: the exact
  Gaussian KL or Flow-GRPO's form, `grpo.kl_to_reference`).
- `DiffusionNFT` (arXiv 2509.16117, `rl_policy.nft`): each kept sample's final latents re-noised `draws` times (a
  sigma of the sampler's schedule and fresh noise, drawn from (seed, step, rank) so a resumed run repeats them; or,
  with `noise="trajectory"`, the sample's own rollout states), the rollout policy's guided velocity there computed
  once before the first update, and the forward-process loss on those (sample, draw) pairs. No log-probs, ratios or
  KL term.

An objective sees the policy only through a `PolicyCall`: the sampler's guided velocity of some samples of the
rollout, and a context in which that velocity is the reference policy's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch

from rl_policy.grpo import KLForm, grpo_clip_loss, kl_to_reference
from rl_policy.nft import nft_loss, optimality_probability
from rl_policy.rollout import Trajectory
from rl_policy.sde import noised_latents, sde_step_with_logprob

NFTNoise = Literal["fresh", "trajectory"]
Terms = dict[str, torch.Tensor]


class PolicyCall(NamedTuple):
    velocity: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (samples [n], latents, sigma [n])
    reference: Callable[[], contextlib.AbstractContextManager]  # inside: velocity is the reference policy's
    generator: Callable[..., torch.Generator]  # seeded by (seed, *parts)
    device: torch.device
    noise_level: float  # the sampler's SDE noise scale (the log-probs are its)
    micro_batch_size: int
    step: int  # the GRPO iteration
    rank: int


class Objective:
    """What `GRPOModule` asks of an objective (an interface, no shared code).

    first_chunk_terms: logged terms that also get a `_first` copy from the rollout's first update (0 there unless
    the recomputation drifts)."""

    first_chunk_terms: tuple[str, ...] = ()

    def check(self, num_steps: int) -> None:
        """Raise ValueError where the objective's settings do not fit a `num_steps`-step sampler."""

    def second_axis(self, trajectory: Trajectory) -> torch.Tensor:
        """The second index of the trained (sample, ...) pairs: SDE steps (GRPO) or noise draws (NFT), [D] long."""
        raise NotImplementedError

    def prepare(self, trajectory: Trajectory, pairs: torch.Tensor, call: PolicyCall) -> Any:
        """Work done once per rollout, before any update (NFT: the noised inputs and the rollout policy's
        velocity there); passed back to `loss`."""
        return None

    def loss(
        self,
        trajectory: Trajectory,
        samples: torch.Tensor,
        second: torch.Tensor,
        advantages: torch.Tensor,
        prepared: Any,
        call: PolicyCall,
    ) -> tuple[torch.Tensor, Terms]:
        """The loss of one micro-batch of pairs (samples [n], second [n], advantages [n]) with gradients, and its
        logged terms."""
        raise NotImplementedError


class ClippedGRPO(Objective):
    """Flow-GRPO's clipped objective (module docstring). clip_range: PPO's (Flow-GRPO: 1e-4 with mean-reduced
    log-probs); advantage_clip: advantages clipped to +-this (5); beta: KL weight (paper: 0.01); kl_form: "gaussian"
    (the exact KL of the two steps) or "flow_grpo" (Flow-GRPO's, without |dt|). The SDE's noise level is the
    sampler's (`PolicyCall.noise_level`)."""

    first_chunk_terms = ("ratio_deviation",)

    def __init__(
        self, clip_range: float = 1e-4, advantage_clip: float = 5.0, beta: float = 0.01, kl_form: KLForm = "gaussian"
    ) -> None:
        if beta < 0 or clip_range <= 0 or advantage_clip <= 0:
            raise ValueError(f"objective: beta must be >= 0, clip_range and advantage_clip positive, got {locals()}")
        self.clip_range, self.advantage_clip, self.beta, self.kl_form = clip_range, advantage_clip, beta, kl_form

    def second_axis(self, trajectory: Trajectory) -> torch.Tensor:
        return trajectory.stochastic.nonzero().flatten()

    def loss(self, trajectory, samples, second, advantages, prepared, call) -> tuple[torch.Tensor, Terms]:
        steps, device = second, call.device
        latents = trajectory.latents[samples, steps].to(device)  # [n, N, C]
        following = trajectory.latents[samples, steps + 1].to(device)
        sigma = trajectory.sigmas[steps].to(device)  # [n]
        sigma_next = trajectory.sigmas[steps + 1].to(device)
        step = sde_step_with_logprob(
            call.velocity(samples, latents, sigma), latents, sigma, sigma_next, call.noise_level, prev_sample=following
        )
        old_log_prob = trajectory.log_probs[samples, steps].to(device)
        advantages = advantages.to(device)
        terms = grpo_clip_loss(step.log_prob, old_log_prob, advantages, self.clip_range, self.advantage_clip)
        loss = terms.loss
        kl = torch.zeros((), device=device)
        if self.beta > 0:
            with torch.no_grad(), call.reference():
                velocity = call.velocity(samples, latents, sigma)
                reference = sde_step_with_logprob(
                    velocity, latents, sigma, sigma_next, call.noise_level, prev_sample=following
                )
            kl = kl_to_reference(step, reference.mean, self.kl_form).mean()
            loss = loss + self.beta * kl
        logged = {
            "clip_fraction": terms.clip_fraction,
            "ratio_deviation": terms.ratio_deviation,
            "approx_kl": terms.approx_kl,
            "kl": kl.detach(),
            "loss": loss.detach(),
        }
        return loss, logged


class NFTInputs(NamedTuple):
    sigma: torch.Tensor  # [S, D]
    noise: torch.Tensor  # [S, D, N, C]
    noised: torch.Tensor  # [S, D, N, C]
    old_velocity: torch.Tensor  # [S, D, N, C], the rollout policy's, zeros where not trained


class DiffusionNFT(Objective):
    """DiffusionNFT's objective (module docstring, `rl_policy.nft`). beta: the implicit policies' step (paper: 1);
    draws: noised copies per kept sample and rollout; steps: the schedule steps whose sigmas the copies are drawn
    from (None: all); noise: "fresh" (x0 re-noised with new noise) or "trajectory" (the sample's own rollout state
    at each of `steps`, whose implied noise (x_sigma - (1 - sigma) x0) / sigma is the regression's; one copy per
    listed step, `draws` unused); advantage_clip: c, the loss is scaled by it, so the on-policy gradient is the
    clipped advantage times the (adaptively weighted) flow-matching gradient of the guided velocity."""

    first_chunk_terms = ("nft_drift",)

    def __init__(
        self,
        beta: float = 1.0,
        draws: int = 2,
        steps: list[int] | None = None,
        noise: NFTNoise = "fresh",
        advantage_clip: float = 5.0,
    ) -> None:
        if beta <= 0 or draws < 1:
            raise ValueError(f"objective: the NFT beta must be positive and draws at least 1, got {beta}, {draws}")
        if noise not in ("fresh", "trajectory"):
            raise ValueError(f"objective: the NFT noise must be 'fresh' or 'trajectory', got {noise!r}")
        self.beta, self.draws, self.steps, self.noise, self.advantage_clip = beta, draws, steps, noise, advantage_clip

    def check(self, num_steps: int) -> None:
        if self.steps is not None and (not self.steps or not all(0 <= step < num_steps for step in self.steps)):
            raise ValueError(f"objective: the NFT steps must list steps of the {num_steps}-step schedule, {self.steps}")

    def _num_draws(self, trajectory: Trajectory) -> int:
        num_steps = len(trajectory.sigmas) - 1
        return len(self.steps or range(num_steps)) if self.noise == "trajectory" else self.draws

    def second_axis(self, trajectory: Trajectory) -> torch.Tensor:
        return torch.arange(self._num_draws(trajectory))

    @torch.no_grad()
    def prepare(self, trajectory: Trajectory, pairs: torch.Tensor, call: PolicyCall) -> NFTInputs:
        device = call.device
        samples, draws = trajectory.num_samples, self._num_draws(trajectory)
        steps = torch.tensor(self.steps or range(len(trajectory.sigmas) - 1), device=device)
        clean = trajectory.latents[:, -1:].to(device)  # [S, 1, N, C]
        if self.noise == "trajectory":  # copy d of every sample: its rollout state at steps[d]
            sigma = trajectory.sigmas.to(device)[steps.expand(samples, draws)]  # [S, D]
            states = trajectory.latents[:, steps.cpu()].to(device)  # [S, D, N, C]
            noise = (states - (1 - sigma)[..., None, None] * clean) / sigma[..., None, None]
        else:
            generator = call.generator("nft", call.step, call.rank)
            pick = torch.randint(len(steps), (samples, draws), generator=generator, device=device)
            sigma = trajectory.sigmas.to(device)[steps[pick]]  # [S, D]
            shape = (samples, draws, *trajectory.latents.shape[2:])
            noise = torch.randn(shape, generator=generator, device=device, dtype=trajectory.latents.dtype)
        noised = noised_latents(clean, noise, sigma)  # [S, D, N, C]
        old = torch.zeros_like(noise)
        for micro in pairs.split(call.micro_batch_size):
            s, d = micro[:, 0].to(device), micro[:, 1].to(device)
            old[s, d] = call.velocity(micro[:, 0], noised[s, d], sigma[s, d])
        return NFTInputs(sigma, noise, noised, old)

    def loss(self, trajectory, samples, second, advantages, prepared, call) -> tuple[torch.Tensor, Terms]:
        s, d = samples.to(call.device), second.to(call.device)
        x0 = trajectory.latents[samples, -1].to(call.device)  # [n, N, C]
        sigma, noise = prepared.sigma[s, d], prepared.noise[s, d]
        velocity = call.velocity(samples, prepared.noised[s, d], sigma)
        r = optimality_probability(advantages.to(call.device), self.advantage_clip)
        terms = nft_loss(velocity, prepared.old_velocity[s, d], noise - x0, sigma, r, self.beta)
        loss = self.advantage_clip * terms.loss.mean()
        return loss, {"loss": loss.detach(), "nft_drift": terms.drift.mean()}
