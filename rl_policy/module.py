"""`GRPOModule`: online RL of a flow-matching policy with group advantages and top-k/bottom-k filtering, as the
SpatialScore paper trains FLUX.1-dev with Flow-GRPO.

Each optimisation step (Lightning manual optimisation), on the prompts of one `PromptBatch`:

1. rollout (no grad): G samples per prompt with the SDE sampler (`rollout.sample_trajectories`), noise drawn from a
   generator seeded by (seed, step, rank), so a resumed run draws exactly what an uninterrupted one would;
2. reward: the configured `Reward` (`rl_policy.reward`; the SpatialScore critic, the SpatialWorld oracle, the GenEval
   rules, chosen in the config by `class_path`); a non-finite reward drops that sample (counted, never trained on);
3. advantages (`grpo.filtered_advantages`): per prompt, the top-k and bottom-k of the group (paper: k = 6 of 24);
   groups whose rewards are all equal train nothing (counted), and with `groups.min_spread_to_std` neither do the
   groups a Gaussian reward cannot order (`grpo.uncertain_groups`: its means spread less than that many of its own
   stds; counted, `train/uncertain_groups`);
4. update: the kept samples' pairs (sample, SDE step) for `ClippedGRPO`, (sample, noise draw) for `DiffusionNFT`
   (`rl_policy.objectives`) are shuffled from (seed, step) and split into `updates_per_rollout` chunks, each one
   optimizer step (gradients accumulated over micro-batches of `micro_batch_size`), then grad-norm clipping. The
   first chunk is exactly on-policy (ratio 1). `global_step` counts rollouts: `max_steps` is the GRPO iterations.
   With several processes each rank samples and filters its own prompts' groups; the pair counts are all-reduced so
   every rank runs the same optimizer steps and micro-batches (zero-weight passes where it has fewer pairs) and the
   gradient is the mean over all ranks' pairs (`rl_policy.updates`).

Logged: `train/reward_mean`, `train/reward_std`, `train/kept_advantage_abs`, `train/zero_variance_groups`,
`train/dropped_samples`, `train/trained_pairs`, the objective's terms (GRPO: `train/clip_fraction`,
`train/ratio_deviation_first`, `train/approx_kl`, `train/kl`; NFT: `train/nft_drift`, `train/nft_drift_first`),
`train/loss`, `train/grad_norm`, `train/lr`, with an oracle `train/critic_oracle_agreement` and
`train/critic_oracle_spearman` (rl_policy.monitor: first, last and evaluation steps), and a grid of the first group
every `image_every_n_steps`. Held-out evaluation (`evaluate`, at step 0 and every `eval_every_n_steps`) samples
the data module's evaluation prompts with the ODE sampler from fixed noise (paired seeds across runs) and reports
the reward and, where prompts carry SpatialWorld metadata, the oracle's relation accuracy, the share of images with
every object found and the relation accuracy among those, side by side (one TensorBoard custom-scalars page):
reward hacking shows as the two diverging, and a warning is printed when they do (`monitor.divergence_warning`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn

from rl_policy import monitor
from rl_policy.data import PromptBatch, PromptDataModule
from rl_policy.evaluation import sample_eval_images, score_eval_images
from rl_policy.grpo import GroupSettings, filtered_advantages, uncertain_groups
from rl_policy.objectives import ClippedGRPO, Objective, PolicyCall
from rl_policy.policy import FluxPolicy, frozen_components, reference_policy, trainable_parameters
from rl_policy.reward import Reward, reward_and_std
from rl_policy.rollout import SamplerSettings, Trajectory, guidance_inputs, sample_trajectories, select_embeddings
from rl_policy.updates import UpdateSettings, update_plan
from shared import stable_seed

OptimizerFactory = Callable[[Sequence[torch.nn.Parameter]], torch.optim.Optimizer]


class GRPOModule(LightningModule):
    """Online RL of a LoRA policy against a reward (module docstring for the algorithm and the logs).

    policy: a `FluxPolicy` whose transformer carries the LoRA adapter (`policy.build_policy`).
    reward: the training reward; eval_reward: the one reported at evaluation (default: `reward`); oracle: an
        optional second scorer at evaluation (the SpatialWorld oracle), given each prompt's metadata.
    optimizer: a factory `params -> Optimizer` for the LoRA weights (paper: AdamW, lr 3e-4).
    objective: `ClippedGRPO` (default: clip range 1e-4, beta 0.01) or `DiffusionNFT` (`rl_policy.objectives`).
    sampler, groups, updates: `rollout.SamplerSettings`, `grpo.GroupSettings`, `UpdateSettings`.
    cudnn_attention: on CUDA, allow cuDNN's fused attention. Off by default: its backward failed on FLUX.1-dev
        (illegal memory access) on an H100 with torch 2.11+cu130; flash attention ran the same pass (bench/rl_gpu.py).
    """

    def __init__(
        self,
        policy: FluxPolicy,
        reward: Reward,
        optimizer: OptimizerFactory,
        *,
        eval_reward: Reward | None = None,
        oracle: Reward | None = None,
        objective: Objective | None = None,
        sampler: SamplerSettings = SamplerSettings(),
        groups: GroupSettings = GroupSettings(),
        updates: UpdateSettings = UpdateSettings(),
        eval_every_n_steps: int = 25,
        image_every_n_steps: int = 25,
        seed: int = 0,
        cudnn_attention: bool = False,
    ) -> None:
        super().__init__()
        self.objective = objective or ClippedGRPO()
        self.sampler, self.groups, self.updates = sampler, groups, updates
        self.objective.check(self.sampler.num_steps)
        self.save_hyperparameters(
            {"objective": {"class": type(self.objective).__name__, **vars(self.objective)}}
            | {name: asdict(getattr(self, name)) for name in ("sampler", "groups", "updates")}
            | dict(eval_every_n_steps=eval_every_n_steps, image_every_n_steps=image_every_n_steps, seed=seed)
            | dict(cudnn_attention=cudnn_attention)
        )
        self.automatic_optimization = False
        self.policy = policy
        self.transformer = policy.transformer  # registered: its LoRA weights are the module's trainable state
        self.reward, self.eval_reward, self.oracle = reward, eval_reward or reward, oracle
        self.optimizer_factory = optimizer
        self.counters = {"dropped_samples": 0, "zero_variance_groups": 0, "uncertain_groups": 0}
        self.last_reward_std: torch.Tensor | None = None
        self.last_eval: dict[str, float] = {}
        self.first_eval: dict[str, float] = {}  # the step-0 evaluation, what the monitor compares with
        self.agreement_history: list[tuple[int, float]] = []  # (step, critic-oracle Spearman on its rollout)
        self.strict_loading = False  # checkpoints hold the LoRA weights only (on_save_checkpoint)

    def on_fit_start(self) -> None:
        """Lightning placed the transformer; the frozen pipeline parts (text encoders, autoencoder) follow it."""
        if self.device.type == "cuda":
            # cuDNN attention where asked for: globally, or for the no-grad passes only (policy.no_grad_attention)
            wanted = self.hparams.cudnn_attention or getattr(self.policy, "no_grad_attention", None) == "cudnn"
            torch.backends.cuda.enable_cudnn_sdp(wanted)
        for component in frozen_components(self.policy.pipeline):
            component.to(self.device)
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_custom_scalars") and self.global_rank == 0:
            experiment.add_custom_scalars(monitor.TENSORBOARD_LAYOUT)

    def _generator(self, *parts: object) -> torch.Generator:
        generator = torch.Generator(device=self.transformer.device)
        return generator.manual_seed(stable_seed("grpo", self.hparams.seed, *parts) % (2**63))

    def rollout(self, batch: PromptBatch) -> tuple[Trajectory, torch.Tensor, torch.Tensor]:
        """-> trajectory, images [S, 3, H, W] in [0, 1], rewards [S] (float32, NaN where non-finite). A Gaussian
        reward's std [S] is kept in `last_reward_std` (None for other rewards) for `grpo.uncertain_groups`."""
        sampler, side = self.sampler, self.sampler.resolution
        trajectory = sample_trajectories(
            self.policy,
            batch.prompts,
            self.groups.group_size,
            height=side,
            width=side,
            num_steps=sampler.num_steps,
            noise_level=sampler.noise_level,
            sde_steps=sampler.sde_steps,
            cfg_scale=sampler.cfg_scale,
            guidance=sampler.guidance,
            shared_noise=sampler.shared_noise,
            generator=self._generator("rollout", self.global_step, self.global_rank),
        )
        images = self.policy.decode(trajectory.latents[:, -1], side, side).cpu()  # [S, 3, H, W]
        index = trajectory.prompt_index.tolist()
        rewards, std = reward_and_std(
            self.reward,
            prompts=[batch.prompts[i] for i in index],
            images=list(images),
            metadata=[batch.metadata[i] for i in index] if batch.metadata else None,
        )
        rewards = rewards.detach().float().cpu().reshape(-1)
        if rewards.shape != (trajectory.num_samples,):
            raise ValueError(f"the reward returned shape {list(rewards.shape)} for {trajectory.num_samples} images")
        self.last_reward_std = None if std is None else std.detach().float().cpu().reshape(rewards.shape)
        return trajectory, images, torch.where(torch.isfinite(rewards), rewards, torch.nan)

    def policy_call(self, batch: PromptBatch, trajectory: Trajectory) -> PolicyCall:
        """The sampler's guided velocity of some of the rollout's samples, for the objective."""
        sampler = self.sampler
        embeddings, negative = guidance_inputs(self.policy, batch.prompts, sampler.cfg_scale)

        def velocity(samples: torch.Tensor, latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            rows = trajectory.prompt_index[samples]
            return self.policy.velocity(
                latents,
                sigma,
                select_embeddings(embeddings, rows),
                sampler.resolution,
                sampler.resolution,
                guidance=sampler.guidance,
                negative=None if negative is None else select_embeddings(negative, rows),
                true_cfg_scale=sampler.cfg_scale,
            )

        return PolicyCall(
            velocity=velocity,
            reference=lambda: reference_policy(self.transformer),
            generator=self._generator,
            device=self.transformer.device,
            noise_level=sampler.noise_level,
            micro_batch_size=self.updates.micro_batch_size,
            step=self.global_step,
            rank=self.global_rank,
        )

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        if self.global_step == 0 and self.hparams.eval_every_n_steps:
            self._log_evaluation()  # the policy before any update: what the monitor compares later evaluations with
        trajectory, images, rewards = self.rollout(batch)
        groups = rewards.view(len(batch), self.groups.group_size)  # [P, G]
        result = filtered_advantages(groups, self.groups.keep_per_side, self.groups.filter_order, self.groups.std_scope)
        std = None if self.last_reward_std is None else self.last_reward_std.view_as(groups)
        uncertain = uncertain_groups(groups, std, self.groups.min_spread_to_std) & ~result.zero_variance  # [P]
        if uncertain.any():  # the critic cannot order these groups: nothing trains on them
            result = result._replace(advantages=torch.where(uncertain[:, None], 0.0, result.advantages))
        dropped = int((~torch.isfinite(rewards)).sum())
        trains = (result.keep & ~(result.zero_variance | uncertain)[:, None]).flatten()  # [S]
        self.counters["dropped_samples"] += dropped
        self.counters["zero_variance_groups"] += int(result.zero_variance.sum())
        self.counters["uncertain_groups"] += int(uncertain.sum())
        if self._measures_agreement(batch):
            index = trajectory.prompt_index.tolist()
            prompts, metadata = [batch.prompts[i] for i in index], [batch.metadata[i] for i in index]
            measured = monitor.rollout_agreement(
                self.oracle, prompts, metadata, images, rewards, self.groups.group_size
            )
            for logger in self.loggers:  # directly, as evaluations: self.log would repeat it at every later step
                logger.log_metrics({name: float(value) for name, value in measured.items()}, step=self.global_step)
            self.agreement_history.append((self.global_step, float(measured["train/critic_oracle_spearman"])))

        # every (kept sample, second) pair, in an order drawn from (seed, step) so a resumed run repeats it
        second = self.objective.second_axis(trajectory)
        pairs = torch.cartesian_prod(trains.nonzero().flatten(), second).reshape(-1, 2)  # [n, 2]
        generator = torch.Generator().manual_seed(
            stable_seed("grpo-order", self.hparams.seed, self.global_step) % 2**63
        )
        pairs = pairs[torch.randperm(len(pairs), generator=generator)]
        advantages = result.advantages.flatten()  # [S]
        call = self.policy_call(batch, trajectory)
        prepared = self.objective.prepare(trajectory, pairs, call)

        optimizer = self.optimizers()
        logged: dict[str, list[torch.Tensor]] = {}
        grad_norms = []
        plan = update_plan(
            pairs,
            self.updates,
            lambda counts: self.trainer.strategy.reduce(counts, reduce_op="sum"),
            self.trainer.world_size,
            self.device,
        )
        for chunk_index, (micro_batches, chunk_total) in enumerate(plan):
            optimizer.zero_grad(set_to_none=True)
            for micro in micro_batches:
                filler = len(micro) == 0  # this rank has fewer pairs than another: a zero-weight pass keeps step
                if filler:  # any pair will do; sample 0 with the first second index when this rank has none
                    micro = pairs[:1] if len(pairs) else torch.stack([second[0] * 0, second[0]])[None]
                samples = micro[:, 0]
                loss, terms = self.objective.loss(trajectory, samples, micro[:, 1], advantages[samples], prepared, call)
                weight = 0.0 if filler else self.trainer.world_size * len(micro) / chunk_total
                self.manual_backward(loss * weight)  # DDP averages over ranks: the mean over every rank's pairs
                for name, value in [] if filler else terms.items():
                    first = name in self.objective.first_chunk_terms and chunk_index == 0
                    logged.setdefault(f"{name}_first" if first else name, []).append(value.float())
            grad_norms.append(self._clip_and_step(optimizer, counted=chunk_index == 0))
        if not plan:  # nothing to train on anywhere (e.g. every group's rewards equal): a no-op step, so that
            optimizer.zero_grad(set_to_none=True)  # global_step still counts this rollout (AdamW skips
            optimizer.step()  # parameters without a gradient)
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, PromptDataModule):
            datamodule.mark_served(batch)

        trained_pairs = len(pairs) if plan else 0
        metrics = monitor.rollout_metrics(rewards, advantages, trains, result.zero_variance, dropped, trained_pairs)
        if self.last_reward_std is not None:
            metrics["train/reward_model_std"] = self.last_reward_std.nanmean()
            metrics["train/uncertain_groups"] = uncertain.float().mean()
        metrics["train/lr"] = torch.tensor(float(optimizer.optimizer.param_groups[0]["lr"]))
        metrics |= {f"train/{name}": torch.stack(values).mean() for name, values in logged.items()}
        if grad_norms:
            metrics["train/grad_norm"] = torch.stack(grad_norms).mean()
        self.log_dict(metrics, prog_bar=False, batch_size=len(batch))
        self.log("reward", metrics["train/reward_mean"], prog_bar=True, logger=False, batch_size=len(batch))
        step, hp = self.global_step, self.hparams
        if hp.image_every_n_steps and step % hp.image_every_n_steps == 0:
            self._log_images("train/group", images[: self.groups.group_size])
        if hp.eval_every_n_steps and step % hp.eval_every_n_steps == 0:
            self._log_evaluation()

    def _measures_agreement(self, batch: PromptBatch) -> bool:
        """With an oracle and metadata, at the steps `monitor.agreement_step` names."""
        if self.oracle is None or not batch.metadata or not all(batch.metadata):
            return False
        max_steps = self.trainer.max_steps if self._trainer is not None else -1
        return monitor.agreement_step(self.global_step, self.hparams.eval_every_n_steps, max_steps)

    def _clip_and_step(self, optimizer, counted: bool) -> torch.Tensor:
        """Clip and step; only the rollout's first update goes through Lightning's optimizer wrapper, so that
        `global_step` counts rollouts (GRPO iterations), whatever `updates_per_rollout` is."""
        parameters = list(trainable_parameters(self.transformer).values())
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.updates.max_grad_norm)
        (optimizer if counted else optimizer.optimizer).step()
        return norm.detach().float()

    @torch.no_grad()
    def evaluate(self, prompts: Sequence[str], metadata: Sequence[Any] | None, seeds: int = 1) -> dict[str, float]:
        """ODE samples of `prompts` (`seeds` per prompt, fixed noise: paired across steps) scored by the evaluation
        reward and, with metadata and an oracle, by the oracle (rl_policy.evaluation)."""
        prompts = [prompt for prompt in prompts for _ in range(seeds)]
        metadata = None if metadata is None else [meta for meta in metadata for _ in range(seeds)]
        images = sample_eval_images(self.policy, self.sampler, prompts, self._generator("eval"))
        self.last_eval = score_eval_images(images, prompts, metadata, self.eval_reward, self.oracle)
        self._eval_images = images
        return self.last_eval

    def _log_evaluation(self) -> None:
        records = self.trainer.datamodule.eval_records
        metadata = [record.metadata for record in records]
        results = self.evaluate([record.prompt for record in records], metadata if any(metadata) else None)
        scalars = {f"eval/{name}": value for name, value in results.items() if not math.isnan(value)}
        if self.global_step == 0:
            self.first_eval = dict(results)
        elif warning := monitor.divergence_warning(self.first_eval, results, self.global_step):
            rank_zero_warn(warning)
        for logger in self.loggers:  # directly: `self.log` in training_step would repeat the values at every later step
            logger.log_metrics(scalars, step=self.global_step)
        self._log_images("eval/samples", self._eval_images[:16])

    def _log_images(self, tag: str, images: torch.Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_images"):
            experiment.add_images(tag, images, self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = list(trainable_parameters(self.transformer).values())
        if not parameters:
            raise ValueError("the policy has no trainable (LoRA) parameters: build it with build_policy")
        return self.optimizer_factory(parameters)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable (LoRA) weights: the frozen base is rebuilt from its pipeline directory."""
        trainable = {f"transformer.{name}" for name in trainable_parameters(self.transformer)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["grpo_counters"] = dict(self.counters)
        checkpoint["grpo_monitor"] = {"first_eval": self.first_eval, "agreement": self.agreement_history}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.counters = self.counters | checkpoint.get("grpo_counters", {})  # a counter newer than the checkpoint: 0
        saved = checkpoint.get("grpo_monitor", {})
        self.first_eval = dict(saved.get("first_eval", self.first_eval))
        self.agreement_history = [tuple(item) for item in saved.get("agreement", self.agreement_history)]
