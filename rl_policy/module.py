"""`GRPOModule`: Flow-GRPO with top-k/bottom-k group filtering, as the SpatialScore paper trains FLUX.1-dev.

Each optimisation step (Lightning manual optimisation), on the prompts of one `PromptBatch`:

1. rollout (no grad): G samples per prompt with the SDE sampler (`rollout.sample_trajectories`), noise drawn from a
   generator seeded by (seed, step, rank), so a resumed run draws exactly what an uninterrupted one would;
2. reward: the configured `Reward` (keyword-only `__call__(*, prompts, images, metadata) -> [S]`; the SpatialScore
   critic, the SpatialWorld oracle or a weighted sum, chosen in the config by `class_path`); a non-finite reward
   drops that sample (counted, never trained on);
3. advantages (`grpo.filtered_advantages`): per prompt, the top-k and bottom-k of the group (paper: k = 6 of 24)
   in the configured order; groups whose rewards are all equal train nothing (counted);
4. policy update: the kept samples' (sample, SDE step) pairs are split into `updates_per_rollout` chunks, each one
   optimizer step (gradients accumulated over micro-batches of `micro_batch_size`): the log-prob of the recorded
   transition is recomputed with the LoRA policy, the clipped GRPO loss (`grpo.grpo_clip_loss`) plus beta times the
   KL to the reference (the same network with the adapter disabled; `kl_form` exact Gaussian or Flow-GRPO's), then
   grad-norm clipping and the step. The first chunk sees ratio = 1 exactly (on-policy); later ones are clipped.
   `global_step` counts rollouts: `max_steps` is the number of GRPO iterations.
   With `objective="nft"` the same rollouts, rewards and kept samples train with DiffusionNFT's forward-process
   loss instead (`rl_policy.nft`): each kept sample's final latents are re-noised `nft_draws` times (a sigma of the
   sampler's schedule, fresh noise, both drawn from (seed, step, rank)), the rollout policy's guided velocity there
   is computed once before the first update, and the (sample, draw) pairs go through the same chunks and
   micro-batches; no log-probs, ratios or KL term (`beta` must be 0).
   With several processes each rank samples and filters the groups of its own prompts; the pair counts are
   all-reduced so that every rank runs the same optimizer steps and micro-batches (zero-weight passes where it has
   fewer pairs, even none) and the gradient is the mean over all ranks' pairs (`_update_plan`).

Logged: `train/reward_mean`, `train/reward_std`, `train/kept_advantage_abs`, `train/zero_variance_groups`,
`train/dropped_samples`, `train/clip_fraction`, `train/ratio_deviation_first` (|ratio - 1| on the first chunk, 0 unless
the recomputation drifts), `train/approx_kl`, `train/kl` (NFT: `train/nft_drift` and `train/nft_drift_first`, the mean
squared change of the velocity since the rollout, 0 on the first chunk), `train/loss`, `train/grad_norm`, and a grid of
the first group's samples every `image_every_n_steps`. Held-out evaluation (`evaluate`, every `eval_every_n_steps` and
at the end) samples the data module's evaluation prompts with the ODE sampler from fixed noise (paired seeds across
runs) and reports the reward and, where prompts carry SpatialWorld metadata, the oracle's relation accuracy, the share
of images with every object found and the relation accuracy among those, side by side, so reward hacking shows as the
two diverging.

With `ema_decay`, an exponential moving average of the LoRA weights (fp32, updated once per GRPO iteration n = 1, 2,
... with decay min(ema_decay, n / (n + 1)): the plain mean of all iterates so far until that reaches the window
1 / (1 - ema_decay)) is what `evaluate` samples with and what the LoRA export holds. Rollouts and updates always
use the current weights, as the ratio must be on-policy. The EMA is saved in the checkpoint (`grpo_ema`), so a
resumed run continues it exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, Literal, Protocol

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import FSDPStrategy

from rl_policy.data import PromptBatch, PromptDataModule
from rl_policy.grpo import FilterOrder, KLForm, StdScope, filtered_advantages, grpo_clip_loss, kl_to_reference
from rl_policy.nft import nft_loss, optimality_probability
from rl_policy.policy import FluxPolicy, reference_policy, trainable_parameters
from rl_policy.rollout import (
    Trajectory,
    guidance_inputs,
    initial_noise,
    sample_ode,
    sample_trajectories,
    select_embeddings,
)
from rl_policy.sde import CoarseNoise, noised_latents, sde_step_with_logprob
from shared import stable_seed
from shared.schedules import lr_factor


class Reward(Protocol):
    """A reward for generated images: keyword-only, one float per (prompt, image)."""

    def __call__(
        self, *, prompts: Sequence[str], images: Sequence[Any], metadata: Sequence[Any] | None
    ) -> torch.Tensor: ...


class WeightedReward:
    """sum_i weight_i * reward_i(...), for mixing rewards by config (e.g. the critic and the oracle)."""

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float]) -> None:
        if len(rewards) != len(weights) or not rewards:
            raise ValueError(f"WeightedReward needs one weight per reward, got {len(rewards)} and {len(weights)}")
        self.rewards, self.weights = list(rewards), [float(w) for w in weights]

    def __call__(
        self, *, prompts: Sequence[str], images: Sequence[Any], metadata: Sequence[Any] | None
    ) -> torch.Tensor:
        total = torch.zeros(len(prompts))
        for reward, weight in zip(self.rewards, self.weights, strict=True):
            if weight:
                total += weight * reward(prompts=prompts, images=images, metadata=metadata).float().cpu()
        return total


Objective = Literal["grpo", "nft"]
NFTNoise = Literal["fresh", "trajectory"]
OptimizerFactory = Callable[[Sequence[torch.nn.Parameter]], torch.optim.Optimizer]


class GRPOModule(LightningModule):
    """Flow-GRPO of a LoRA policy against a reward (module docstring for the algorithm and the logs).

    policy: a `FluxPolicy` whose transformer carries the LoRA adapter (`policy.build_policy`).
    reward: the training reward; eval_reward: the critic reported at evaluation (default: `reward`); oracle: an
        optional second scorer at evaluation (the SpatialWorld oracle), given each prompt's metadata.
    optimizer: a factory `params -> Optimizer` for the LoRA weights (paper: AdamW, lr 3e-4).
    lr_decay_steps: 0 (a constant learning rate) or N: the learning rate decays linearly to 0 over the last N GRPO
        iterations of `trainer.max_steps` (`shared.schedules.lr_factor`; saved with the optimizer, so a resumed run
        continues it). A run that `max_time` stops early ends before the decay does.
    group_size (G), keep_per_side (k; None: no filtering), filter_order, std_scope: the advantages.
    num_steps, noise_level, sde_steps, cfg_scale, guidance, shared_noise: the sampler (paper: 6 steps; FLUX.1-dev
        guidance 3.5; the tiny generator: true CFG). resolution: image side.
    clip_range, advantage_clip, beta, kl_form: the loss (paper: beta 0.01). updates_per_rollout, micro_batch_size,
        max_grad_norm: the update.
    noise_cell: None (Flow-GRPO's full-resolution SDE noise) or the side, in latent positions, of the cells of the
        coarse exploration noise (`sde.CoarseNoise`; the tiny generator: 4 = 8 x 8 pixels, 192 explored dimensions
        instead of 3,072). The KL term still compares the full means.
    antithetic: mirrored SDE noise, samples 2j and 2j + 1 of each group draw eps and -eps (`sde`; group_size
        even). With shared_noise and one SDE step the pair shares its state, and the reward's even part cancels
        from the group's gradient.
    ema_decay: None (no average) or the decay of the LoRA weights' EMA used for evaluation and export (module
        docstring); not with sharded strategies (FSDP), where each rank holds part of each weight.
    objective: "grpo" (the clipped log-prob ratio of the SDE transitions) or "nft" (DiffusionNFT's loss on the
        re-noised final samples, `rl_policy.nft`), with nft_beta (the implicit policies' step, paper: 1) and
        nft_draws (noised copies per kept sample and rollout), nft_steps (the schedule steps whose sigmas the copies
        are drawn from; None: all) and nft_noise: "fresh" (DiffusionNFT: x0 re-noised with new noise) or
        "trajectory" (the sample's own rollout state at each of nft_steps, whose implied noise
        (x_sigma - (1 - sigma) x0) / sigma is the regression's; one copy per listed step, nft_draws unused).
    cudnn_attention: on CUDA, allow cuDNN's fused attention in scaled_dot_product_attention. Off by default: its
        backward failed on FLUX.1-dev (illegal memory access) on an H100 with torch 2.11+cu130, and flash attention,
        which PyTorch uses instead, ran the same training pass (bench/rl_gpu.py).
    """

    def __init__(
        self,
        policy: FluxPolicy,
        reward: Reward,
        optimizer: OptimizerFactory,
        *,
        eval_reward: Reward | None = None,
        oracle: Reward | None = None,
        group_size: int = 24,
        keep_per_side: int | None = 6,
        filter_order: FilterOrder = "normalise_then_select",
        std_scope: StdScope = "group",
        resolution: int = 512,
        num_steps: int = 6,
        eval_num_steps: int | None = None,
        noise_level: float = 0.8,
        sde_steps: Sequence[int] | None = None,
        cfg_scale: float = 1.0,
        guidance: float | None = None,
        shared_noise: bool = False,
        clip_range: float = 1e-4,
        advantage_clip: float = 5.0,
        beta: float = 0.01,
        kl_form: KLForm = "gaussian",
        updates_per_rollout: int = 2,
        micro_batch_size: int = 8,
        max_grad_norm: float = 1.0,
        eval_every_n_steps: int = 25,
        image_every_n_steps: int = 25,
        seed: int = 0,
        noise_cell: int | None = None,
        ema_decay: float | None = None,
        cudnn_attention: bool = False,
        antithetic: bool = False,
        objective: Objective = "grpo",
        nft_beta: float = 1.0,
        nft_draws: int = 2,
        nft_steps: Sequence[int] | None = None,
        nft_noise: NFTNoise = "fresh",
        lr_decay_steps: int = 0,
    ) -> None:
        super().__init__()
        if lr_decay_steps < 0:
            raise ValueError(f"lr_decay_steps must be 0 (constant) or positive, got {lr_decay_steps}")
        if objective not in ("grpo", "nft"):
            raise ValueError(f"objective must be 'grpo' or 'nft', got {objective!r}")
        if objective == "nft" and (nft_beta <= 0 or nft_draws < 1):
            raise ValueError(f"nft_beta must be positive and nft_draws at least 1, got {nft_beta}, {nft_draws}")
        if nft_noise not in ("fresh", "trajectory"):
            raise ValueError(f"nft_noise must be 'fresh' or 'trajectory', got {nft_noise!r}")
        if nft_steps is not None and (not nft_steps or not all(0 <= step < num_steps for step in nft_steps)):
            raise ValueError(f"nft_steps must list steps of the {num_steps}-step schedule, got {list(nft_steps)}")
        if objective == "nft" and beta > 0:
            raise ValueError("the NFT objective has no KL term to the reference: set model.beta to 0")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ValueError(f"ema_decay must lie in (0, 1) or be None, got {ema_decay}")
        if keep_per_side is not None and 2 * keep_per_side > group_size:
            raise ValueError(f"keep_per_side ({keep_per_side}) per side exceeds half the group ({group_size})")
        if antithetic and group_size % 2:
            raise ValueError(f"antithetic noise pairs the samples of a group: group_size ({group_size}) must be even")
        if updates_per_rollout < 1 or micro_batch_size < 1:
            raise ValueError("updates_per_rollout and micro_batch_size must be positive")
        self.save_hyperparameters(ignore=["policy", "reward", "optimizer", "eval_reward", "oracle"])
        self.automatic_optimization = False
        self.policy = policy
        self.transformer = policy.transformer  # registered: its LoRA weights are the module's trainable state
        self.reward, self.eval_reward, self.oracle = reward, eval_reward or reward, oracle
        self.optimizer_factory = optimizer
        self.counters = {"dropped_samples": 0, "zero_variance_groups": 0}
        self.last_eval: dict[str, float] = {}
        self.strict_loading = False  # checkpoints hold the LoRA weights only (on_save_checkpoint)
        self.noise = None
        if noise_cell is not None:
            self.noise = CoarseNoise(*policy.latent_grid(resolution, resolution), noise_cell)
        self.ema: dict[str, torch.Tensor] | None = None
        if ema_decay is not None:
            self.ema = {n: p.detach().float().clone() for n, p in trainable_parameters(self.transformer).items()}

    def on_fit_start(self) -> None:
        """Lightning placed the transformer; the frozen pipeline parts (text encoders, autoencoder) follow it."""
        if self.device.type == "cuda":
            torch.backends.cuda.enable_cudnn_sdp(self.hparams.cudnn_attention)
        if self.ema is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError("ema_decay is not supported with FSDP (each rank holds a shard of each LoRA weight)")
        for name, component in self.policy.pipeline.components.items():
            if isinstance(component, torch.nn.Module) and name != "transformer":
                component.to(self.device)

    # --- rollout and reward -------------------------------------------------------------------------------------
    def _generator(self, *parts: object) -> torch.Generator:
        generator = torch.Generator(device=self.transformer.device)
        return generator.manual_seed(stable_seed("grpo", self.hparams.seed, *parts) % (2**63))

    def rollout(self, batch: PromptBatch) -> tuple[Trajectory, torch.Tensor, torch.Tensor]:
        """-> trajectory, images [S, 3, H, W] in [0, 1], rewards [S] (float32, NaN where non-finite)."""
        hp = self.hparams
        trajectory = sample_trajectories(
            self.policy,
            batch.prompts,
            hp.group_size,
            height=hp.resolution,
            width=hp.resolution,
            num_steps=hp.num_steps,
            noise_level=hp.noise_level,
            sde_steps=hp.sde_steps,
            cfg_scale=hp.cfg_scale,
            guidance=hp.guidance,
            shared_noise=hp.shared_noise,
            generator=self._generator("rollout", self.global_step, self.global_rank),
            noise=self.noise,
            antithetic=hp.antithetic,
        )
        images = self.policy.decode(trajectory.latents[:, -1], hp.resolution, hp.resolution).cpu()  # [S, 3, H, W]
        index = trajectory.prompt_index.tolist()
        rewards = self.reward(
            prompts=[batch.prompts[i] for i in index],
            images=list(images),
            metadata=[batch.metadata[i] for i in index] if batch.metadata else None,
        )
        rewards = rewards.detach().float().cpu().reshape(-1)
        if rewards.shape != (trajectory.num_samples,):
            raise ValueError(f"the reward returned shape {list(rewards.shape)} for {trajectory.num_samples} images")
        return trajectory, images, torch.where(torch.isfinite(rewards), rewards, torch.nan)

    # --- update -------------------------------------------------------------------------------------------------
    def _step_terms(
        self, batch: PromptBatch, trajectory: Trajectory, samples: torch.Tensor, steps: torch.Tensor, advantages
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch of (sample, step) pairs [n] with gradients; and its logged terms."""
        hp = self.hparams
        device = self.transformer.device
        latents = trajectory.latents[samples, steps].to(device)  # [n, N, C]
        following = trajectory.latents[samples, steps + 1].to(device)
        sigma = trajectory.sigmas[steps].to(device)  # [n]
        sigma_next = trajectory.sigmas[steps + 1].to(device)

        def velocity() -> torch.Tensor:
            return self._guided_velocity(batch, trajectory, samples, latents, sigma)

        step = sde_step_with_logprob(
            velocity(), latents, sigma, sigma_next, hp.noise_level, prev_sample=following, noise=self.noise
        )
        old_log_prob = trajectory.log_probs[samples, steps].to(device)
        terms = grpo_clip_loss(step.log_prob, old_log_prob, advantages.to(device), hp.clip_range, hp.advantage_clip)
        loss = terms.loss
        kl = torch.zeros((), device=device)
        if hp.beta > 0:
            with torch.no_grad(), reference_policy(self.transformer):
                reference = sde_step_with_logprob(
                    velocity(), latents, sigma, sigma_next, hp.noise_level, prev_sample=following
                )
            kl = kl_to_reference(step, reference.mean, hp.kl_form).mean()
            loss = loss + hp.beta * kl
        logged = {
            "clip_fraction": terms.clip_fraction,
            "ratio_deviation": terms.ratio_deviation,
            "approx_kl": terms.approx_kl,
            "kl": kl.detach(),
            "loss": loss.detach(),
        }
        return loss, logged

    def _guided_velocity(
        self, batch: PromptBatch, trajectory: Trajectory, samples: torch.Tensor, latents: torch.Tensor, sigma
    ) -> torch.Tensor:
        """The sampler's velocity (guidance included) of samples [n] at latents [n, N, C] and sigma [n]."""
        hp = self.hparams
        embeddings, negative = guidance_inputs(self.policy, batch.prompts, hp.cfg_scale)
        rows = trajectory.prompt_index[samples]
        return self.policy.velocity(
            latents,
            sigma,
            select_embeddings(embeddings, rows),
            hp.resolution,
            hp.resolution,
            guidance=hp.guidance,
            negative=None if negative is None else select_embeddings(negative, rows),
            true_cfg_scale=hp.cfg_scale,
        )

    def _nft_draws(self) -> int:
        hp = self.hparams
        return len(hp.nft_steps or range(hp.num_steps)) if hp.nft_noise == "trajectory" else hp.nft_draws

    @torch.no_grad()
    def _nft_inputs(self, batch: PromptBatch, trajectory: Trajectory, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
        """NFT's noised inputs for every (sample, draw) of the rollout, as sigma [S, D] and noise [S, D, N, C]: with
        fresh noise, a sigma of one of `nft_steps` (uniformly) and new noise, drawn from (seed, step, rank) so a
        resumed run repeats them; with the trajectory's, the rollout state at each of `nft_steps` and its implied
        noise; the noised latents [S, D, N, C] built from them once. And the rollout policy's velocity there (before
        any update) for the trained pairs [n, 2] (zeros elsewhere)."""
        hp = self.hparams
        device = self.transformer.device
        samples, draws = trajectory.num_samples, self._nft_draws()
        steps = torch.tensor(hp.nft_steps or range(len(trajectory.sigmas) - 1), device=device)
        clean = trajectory.latents[:, -1:].to(device)  # [S, 1, N, C]
        if hp.nft_noise == "trajectory":  # copy d of every sample: its rollout state at steps[d]
            step = steps.expand(samples, draws)  # [S, D]
            sigma = trajectory.sigmas.to(device)[step]
            states = trajectory.latents[:, steps.cpu()].to(device)  # [S, D, N, C]
            noise = (states - (1 - sigma)[..., None, None] * clean) / sigma[..., None, None]
        else:
            generator = self._generator("nft", self.global_step, self.global_rank)
            pick = torch.randint(len(steps), (samples, draws), generator=generator, device=device)
            sigma = trajectory.sigmas.to(device)[steps[pick]]  # [S, D]
            shape = (samples, draws, *trajectory.latents.shape[2:])
            noise = torch.randn(shape, generator=generator, device=device, dtype=trajectory.latents.dtype)
        noised = noised_latents(clean, noise, sigma)  # [S, D, N, C]
        old = torch.zeros_like(noise)
        for micro in pairs.split(hp.micro_batch_size):
            s, d = micro[:, 0].to(device), micro[:, 1].to(device)
            old[s, d] = self._guided_velocity(batch, trajectory, micro[:, 0], noised[s, d], sigma[s, d])
        return {"sigma": sigma, "noise": noise, "noised": noised, "old_velocity": old}

    def _nft_terms(
        self, batch: PromptBatch, trajectory: Trajectory, samples, draws, advantages, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """NFT loss (`rl_policy.nft`) of one micro-batch of (sample, draw) pairs [n] with gradients; its logged
        terms. Scaled by advantage_clip: at the rollout's weights the gradient is the clipped advantage times the
        (adaptively weighted) flow-matching gradient of the guided velocity."""
        hp = self.hparams
        device = self.transformer.device
        s, d = samples.to(device), draws.to(device)
        x0 = trajectory.latents[samples, -1].to(device)  # [n, N, C]
        sigma, noise = inputs["sigma"][s, d], inputs["noise"][s, d]
        velocity = self._guided_velocity(batch, trajectory, samples, inputs["noised"][s, d], sigma)
        r = optimality_probability(advantages.to(device), hp.advantage_clip)
        terms = nft_loss(velocity, inputs["old_velocity"][s, d], noise - x0, sigma, r, hp.nft_beta)
        loss = hp.advantage_clip * terms.loss.mean()
        return loss, {"loss": loss.detach(), "nft_drift": terms.drift.mean()}

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        hp = self.hparams
        trajectory, images, rewards = self.rollout(batch)
        groups = rewards.view(len(batch), hp.group_size)  # [P, G]
        result = filtered_advantages(groups, hp.keep_per_side, hp.filter_order, hp.std_scope)
        dropped = int((~torch.isfinite(rewards)).sum())
        trains = (result.keep & ~result.zero_variance[:, None]).flatten()  # [S]
        self.counters["dropped_samples"] += dropped
        self.counters["zero_variance_groups"] += int(result.zero_variance.sum())
        if self.global_step == 0 and self.oracle is not None and batch.metadata and all(batch.metadata):
            self.log("train/critic_oracle_agreement", self._agreement(batch, trajectory, images, rewards))

        # GRPO: every (kept sample, SDE step) pair; NFT: every (kept sample, noise draw) pair; in an order drawn from
        # (seed, step) so a resumed run repeats it
        sample_ids = trains.nonzero().flatten()
        step_ids = trajectory.stochastic.nonzero().flatten()
        second = torch.arange(self._nft_draws()) if hp.objective == "nft" else step_ids
        pairs = torch.cartesian_prod(sample_ids, second).reshape(-1, 2)  # [n, 2]
        generator = torch.Generator().manual_seed(stable_seed("grpo-order", hp.seed, self.global_step) % (2**63))
        pairs = pairs[torch.randperm(len(pairs), generator=generator)]
        advantages = result.advantages.flatten()  # [S]
        nft = self._nft_inputs(batch, trajectory, pairs) if hp.objective == "nft" else None

        optimizer = self.optimizers()
        logged: dict[str, list[torch.Tensor]] = {}
        grad_norms = []
        plan = self._update_plan(pairs)
        for chunk_index, (micro_batches, chunk_total) in enumerate(plan):
            optimizer.zero_grad(set_to_none=True)
            for micro in micro_batches:
                filler = len(micro) == 0  # this rank has fewer pairs than another: a zero-weight pass keeps step
                if filler:  # any pair will do; sample 0 at the first SDE step (NFT: draw 0) when this rank has none
                    micro = pairs[:1] if len(pairs) else torch.stack([step_ids[0] * 0, second[0]])[None]
                samples, steps = micro[:, 0], micro[:, 1]
                if nft is None:
                    loss, terms = self._step_terms(batch, trajectory, samples, steps, advantages[samples])
                else:
                    loss, terms = self._nft_terms(batch, trajectory, samples, steps, advantages[samples], nft)
                weight = 0.0 if filler else self.trainer.world_size * len(micro) / chunk_total
                self.manual_backward(loss * weight)  # DDP averages over ranks: the mean over every rank's pairs
                for name, value in [] if filler else terms.items():
                    first = name in ("ratio_deviation", "nft_drift") and chunk_index == 0
                    key = f"{name}_first" if first else name
                    logged.setdefault(key, []).append(value.float())
            grad_norms.append(self._clip_and_step(optimizer, counted=chunk_index == 0))
        skip = not plan
        if skip:  # nothing to train on anywhere (e.g. every group's rewards equal): a no-op step, so that
            optimizer.zero_grad(set_to_none=True)  # global_step still counts this rollout (AdamW skips
            optimizer.step()  # parameters without a gradient)
        self._datamodule_served(batch)
        self.update_ema()

        valid = rewards[torch.isfinite(rewards)]
        metrics = {
            "train/reward_mean": valid.mean() if len(valid) else torch.tensor(math.nan),
            "train/reward_std": valid.std(correction=0) if len(valid) else torch.tensor(math.nan),
            "train/kept_advantage_abs": advantages[trains].abs().mean() if trains.any() else torch.tensor(0.0),
            "train/zero_variance_groups": result.zero_variance.float().mean(),
            "train/dropped_samples": torch.tensor(float(dropped)),
            "train/trained_pairs": torch.tensor(float(len(pairs) if not skip else 0)),
        }
        metrics |= {f"train/{name}": torch.stack(values).mean() for name, values in logged.items()}
        if grad_norms:
            metrics["train/grad_norm"] = torch.stack(grad_norms).mean()
        metrics["train/lr"] = torch.tensor(float(optimizer.optimizer.param_groups[0]["lr"]))  # this iteration's
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()  # manual optimisation: Lightning leaves the schedule to the module
        self.log_dict(metrics, prog_bar=False, batch_size=len(batch))
        self.log("reward", metrics["train/reward_mean"], prog_bar=True, logger=False, batch_size=len(batch))
        step = self.global_step
        if hp.image_every_n_steps and step % hp.image_every_n_steps == 0:
            self._log_images("train/group", images[: hp.group_size])
        if hp.eval_every_n_steps and step % hp.eval_every_n_steps == 0 and step > 0:
            self._log_evaluation()

    def _update_plan(self, pairs: torch.Tensor) -> list[tuple[list[torch.Tensor], int]]:
        """This rank's (sample, step) pairs [n, 2] as `updates_per_rollout` optimizer steps, each
        (micro-batches, pairs in this chunk over all ranks), the same on every rank in what collectives run:
        every rank takes the steps whose chunk has pairs on some rank, with as many micro-batches as the rank with
        the most pairs (an empty micro-batch is a zero-weight pass: DDP reduces gradients at every backward, so a
        rank that skipped one would leave the others waiting). Empty when no rank has anything to train."""
        hp = self.hparams
        chunks = list(pairs.tensor_split(hp.updates_per_rollout))
        lengths = torch.tensor([len(chunk) for chunk in chunks], dtype=torch.float64, device=self.device)
        totals = self.trainer.strategy.reduce(lengths.clone(), reduce_op="sum").long().tolist()
        most = lengths.clone()
        if self.trainer.world_size > 1:
            torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
        plan = []
        for chunk, total, longest in zip(chunks, totals, most.long().tolist(), strict=True):
            if total == 0:
                continue
            micro_batches = list(chunk.split(hp.micro_batch_size))
            needed = math.ceil(longest / hp.micro_batch_size)
            micro_batches += [chunk[:0]] * (needed - len(micro_batches))
            plan.append((micro_batches, total))
        return plan

    def _agreement(self, batch: PromptBatch, trajectory: Trajectory, images: torch.Tensor, rewards: torch.Tensor):
        """Share of same-prompt sample pairs the oracle tells apart that the reward orders the same way: how far the
        critic can be trusted on the policy's own samples (if low, train the critic with degradations)."""
        index = trajectory.prompt_index.tolist()
        oracle = self.oracle(
            prompts=[batch.prompts[i] for i in index], images=list(images), metadata=[batch.metadata[i] for i in index]
        ).float()
        same = trajectory.prompt_index[:, None] == trajectory.prompt_index[None, :]  # [S, S]
        oracle_order = torch.sign(oracle[:, None] - oracle[None, :])
        reward_order = torch.sign(rewards[:, None] - rewards[None, :])
        decided = same & (oracle_order != 0) & torch.isfinite(reward_order)
        if not decided.any():
            return torch.tensor(math.nan)
        return (oracle_order == reward_order)[decided].float().mean()

    def _clip_and_step(self, optimizer, counted: bool) -> torch.Tensor:
        """Clip and step; only the rollout's first update goes through Lightning's optimizer wrapper, so that
        `global_step` counts rollouts (GRPO iterations), whatever `updates_per_rollout` is."""
        parameters = list(trainable_parameters(self.transformer).values())
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.hparams.max_grad_norm)
        (optimizer if counted else optimizer.optimizer).step()
        return norm.detach().float()

    def _datamodule_served(self, batch: PromptBatch) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, PromptDataModule):
            datamodule.mark_served(batch)

    # --- EMA of the LoRA weights -----------------------------------------------------------------------------
    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA step after GRPO iteration `global_step` (module docstring); nothing without `ema_decay`."""
        if self.ema is None:
            return
        decay = min(self.hparams.ema_decay, self.global_step / (self.global_step + 1))
        for name, parameter in trainable_parameters(self.transformer).items():
            average = self.ema[name] = self.ema[name].to(parameter.device)
            average.mul_(decay).add_(parameter.detach().float(), alpha=1 - decay)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Inside: the LoRA weights are the EMA (when there is one); the current weights come back on exit."""
        if self.ema is None:
            yield
            return
        parameters = trainable_parameters(self.transformer)
        current = {name: parameter.detach().clone() for name, parameter in parameters.items()}
        try:
            with torch.no_grad():
                for name, parameter in parameters.items():
                    parameter.copy_(self.ema[name])
            yield
        finally:
            with torch.no_grad():
                for name, parameter in parameters.items():
                    parameter.copy_(current[name])

    # --- evaluation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, prompts: Sequence[str], metadata: Sequence[Any] | None, seeds: int = 1) -> dict[str, float]:
        """ODE samples of `prompts` (`seeds` per prompt, fixed noise: paired across runs and steps) scored by the
        evaluation reward and, with metadata and an oracle, by the oracle (module docstring)."""
        hp = self.hparams
        prompts = [prompt for prompt in prompts for _ in range(seeds)]
        metadata = None if metadata is None else [meta for meta in metadata for _ in range(seeds)]
        noise = initial_noise(self.policy, len(prompts), hp.resolution, hp.resolution, self._generator("eval"))
        with self.ema_weights():
            images = sample_ode(
                self.policy,
                prompts,
                height=hp.resolution,
                width=hp.resolution,
                num_steps=hp.eval_num_steps or max(hp.num_steps, 20),
                cfg_scale=hp.cfg_scale,
                guidance=hp.guidance,
                noise=noise,
            ).cpu()
        rewards = self.eval_reward(prompts=prompts, images=list(images), metadata=metadata).float()
        results = {"reward": float(rewards.nanmean()), "num_eval_samples": float(len(prompts))}
        if self.oracle is not None and metadata is not None and all(meta is not None for meta in metadata):
            judge = getattr(self.oracle, "judge", None)
            if judge is not None:
                verdicts = [judge(image, meta) for image, meta in zip(images, metadata, strict=True)]
                relations = [ok for verdict in verdicts for ok in verdict.confirmed]
                found = [ok for verdict in verdicts if verdict.all_found for ok in verdict.confirmed]
                results |= {
                    "oracle_accuracy": sum(relations) / max(len(relations), 1),
                    "all_found": sum(verdict.all_found for verdict in verdicts) / len(verdicts),
                    "relation_accuracy_all_found": sum(found) / len(found) if found else math.nan,
                }
            else:
                results["oracle_reward"] = float(
                    self.oracle(prompts=prompts, images=list(images), metadata=metadata).mean()
                )
        self.last_eval = results
        self._eval_images = images
        return results

    def _log_evaluation(self) -> None:
        datamodule = self.trainer.datamodule
        records = datamodule.eval_records
        metadata = [record.metadata for record in records]
        results = self.evaluate([record.prompt for record in records], metadata if any(metadata) else None)
        scalars = {f"eval/{name}": value for name, value in results.items() if not math.isnan(value)}
        for logger in self.loggers:  # directly: `self.log` in training_step would repeat the values at every later step
            logger.log_metrics(scalars, step=self.global_step)
        self._log_images("eval/samples", self._eval_images[:16])

    def _log_images(self, tag: str, images: torch.Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_images"):
            experiment.add_images(tag, images, self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        parameters = list(trainable_parameters(self.transformer).values())
        if not parameters:
            raise ValueError("the policy has no trainable (LoRA) parameters: build it with build_policy")
        optimizer = self.optimizer_factory(parameters)
        decay = self.hparams.lr_decay_steps
        if not decay:
            return optimizer
        total = self.trainer.max_steps
        if total < decay:
            raise ValueError(
                f"model.lr_decay_steps ({decay}) needs trainer.max_steps set to at least that many GRPO iterations, "
                f"got {total}"
            )
        factor = partial(lr_factor, decay_steps=decay, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable (LoRA) weights: the frozen base is rebuilt from its pipeline directory."""
        trainable = {f"transformer.{name}" for name in trainable_parameters(self.transformer)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["grpo_counters"] = dict(self.counters)
        if self.ema is not None:
            checkpoint["grpo_ema"] = {name: value.detach().cpu().clone() for name, value in self.ema.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.counters = dict(checkpoint.get("grpo_counters", self.counters))
        if self.ema is not None:
            if "grpo_ema" not in checkpoint:
                raise ValueError("ema_decay is set but the checkpoint holds no EMA (it was saved by a run without one)")
            saved = checkpoint["grpo_ema"]
            if set(saved) != set(self.ema):
                raise ValueError("the checkpoint's EMA does not cover this policy's LoRA weights (another LoRA setup)")
            self.ema = {name: saved[name].float().clone() for name in self.ema}
