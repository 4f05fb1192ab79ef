"""Pretraining of the tiny embedded generator: rectified flow on SpatialWorld (prompt, perfect image) pairs.

FLUX.1-dev arrives pretrained; the embedded default's tiny `FluxTransformer2DModel` (rl_policy.policy
`build_tiny_flux_pipeline`, pixel space through an exact pixel-unshuffle, frozen random text encoders) starts from
random weights, so it first learns to draw SpatialWorld scenes here, the way FLUX.1 was trained:

- rectified flow: x_sigma = (1 - sigma) x_0 + sigma eps, the transformer predicts v = eps - x_0, loss = mean squared
  error; sigma drawn logit-normal (sigmoid of N(0, 1), as SD3 / Flux train), the middle of the path weighted most;
- prompt dropout (the prompt replaced by "" with probability `prompt_dropout`), so that sampling can use true
  classifier-free guidance (no guidance distillation exists for the tiny model);
- an exponential moving average (EMA) of the transformer weights, which is what is evaluated and saved;
- optionally (`train_text_encoders`) the two text encoders train with the transformer (and have their own EMA):
  with the encoders frozen at random weights, relation words ("left of", "above") reach the transformer only as
  random features; FLUX.1's encoders arrive pretrained, the tiny ones can only learn here;
- every `val_check_interval` steps: ODE samples of held-out prompts, scored by the SpatialWorld oracle (objects
  found, relations that hold, relations that hold among images where every object was found, also per relation
  family) and drawn as a grid to TensorBoard.

Output: `save_generator` writes the pipeline (EMA weights) as a diffusers directory (safetensors), which
`rl_policy.policy.load_pipeline` loads, plus `pretrain_metrics.json`.

Training images are a SpatialWorld dataset dir's perfect images (resized to `resolution`) and, with `fresh_scenes`
N, N more pairs drawn with the dataset's settings and another seed (`data_synthesis.fresh`; train prompts only, kept
beside the run so that a resumed run reuses them): the RL set's 7,175 prompts teach a tiny model those prompts, not
the rule that places "A left of B" (docs/research/generator.md, 2026-12-06). One guidance scale for evaluation.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from data_synthesis import DatasetError, SpatialWorldOracle, load_pairs, oracle_metadata
from data_synthesis.fresh import FreshScenes
from data_synthesis.scene import COLOURS, Scene
from rl_policy.evaluation import families_all_found
from rl_policy.layout_head import layout_loss, layout_targets, object_coverage, object_region_masks
from rl_policy.policy import FluxPolicy, PromptEmbeddings, frozen_components
from rl_policy.rollout import sample_ode
from rl_policy.sde import noised_latents
from shared import atomic_write_json
from shared.schedules import lr_factor


class ImagePromptDataset(Dataset):
    """(image [3, R, R] float in [0, 1], prompt, object regions [K, R, R] float in [0, 1], object colours [K] long)
    held in memory as uint8. Object k's region is the coverage of its bounding square
    (`layout_head.object_region_masks`) and its colour its index in `data_synthesis.COLOURS` (-1 where a scene has
    fewer than K objects): the layout head's targets."""

    def __init__(self, images: torch.Tensor, prompts: list[str], regions: torch.Tensor, colours: torch.Tensor) -> None:
        self.images, self.prompts, self.regions, self.colours = images, prompts, regions, colours

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, torch.Tensor, torch.Tensor]:
        return (
            self.images[index].float() / 255,
            self.prompts[index],
            self.regions[index].float() / 255,
            self.colours[index],
        )


def load_split_images(dataset_dir: Path, frame: pd.DataFrame, resolution: int) -> torch.Tensor:
    """The perfect images of `frame`'s rows, resized to resolution x resolution (area filter), as uint8 [N, 3, R, R]."""
    images = np.empty((len(frame), resolution, resolution, 3), dtype=np.uint8)
    for row, path in enumerate(frame["perfect_image"]):
        try:
            with Image.open(dataset_dir / path) as image:
                images[row] = np.asarray(image.convert("RGB").resize((resolution, resolution), Image.Resampling.BOX))
        except OSError as error:
            raise DatasetError(f"cannot read image {dataset_dir / path}: {error}") from None
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def load_split_objects(scene_texts: list[str], resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The objects of scenes given as `Scene` JSON texts (a dataset's `perfect_scene` column, or fresh scenes):
    bounding-square coverage [N, K, R, R] uint8 (255 = covered) and colour indices into `data_synthesis.COLOURS` [N, K]
    long (-1 past a scene's objects), K the most objects of a scene."""
    scenes = [Scene.from_json(text) for text in scene_texts]
    most = max(len(scene.objects) for scene in scenes)
    colour_index = {colour: index for index, colour in enumerate(COLOURS)}
    regions = torch.zeros(len(scenes), most, resolution, resolution, dtype=torch.uint8)
    colours = torch.full((len(scenes), most), -1, dtype=torch.long)
    for row, scene in enumerate(scenes):
        boxes = [(item.x, item.y, item.radius) for item in scene.objects]
        regions[row] = (object_region_masks(boxes, resolution, most) * 255).round().to(torch.uint8)
        colours[row, : len(boxes)] = torch.tensor([colour_index[item.colour] for item in scene.objects])
    return regions, colours


class GeneratorPretrainDataModule(LightningDataModule):
    """Training pairs (perfect image, prompt) of a SpatialWorld dataset dir's train split, and held-out prompts with
    their oracle metadata (the first `num_eval_prompts` of `eval_split`) for the sampled evaluation."""

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        *,
        resolution: int = 32,
        batch_size: int = 32,
        eval_split: str = "val",
        num_eval_prompts: int = 32,
        seed: int = 0,
        fresh_scenes: int = 0,
        fresh_seed: int = 1000,
        fresh_path: str | os.PathLike | None = None,
        workers: int = 1,
        prompt_fits: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__()
        if fresh_scenes < 0 or (fresh_scenes and fresh_path is None):
            raise ValueError(f"fresh_scenes must be >= 0 and needs fresh_path, got {fresh_scenes}, {fresh_path}")
        self.fresh_scenes, self.fresh_seed, self.fresh_path = fresh_scenes, fresh_seed, fresh_path
        self.workers, self.prompt_fits = workers, prompt_fits
        self.skipped_fresh = 0  # fresh prompts over the text encoders' limit
        if resolution < 8 or batch_size < 1 or num_eval_prompts < 1:
            raise ValueError(
                f"need resolution >= 8 and positive sizes, got {resolution}, {batch_size}, {num_eval_prompts}"
            )
        self.dataset_dir = Path(dataset_dir)
        self.resolution, self.batch_size, self.seed = resolution, batch_size, seed
        self.eval_split, self.num_eval_prompts = eval_split, num_eval_prompts
        self.train: ImagePromptDataset | None = None
        self.eval_prompts: list[str] = []
        self.eval_metadata: list[dict[str, Any]] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        _, frame = load_pairs(self.dataset_dir)
        train = frame[frame["split"] == "train"]
        held_out = frame[frame["split"] == self.eval_split].head(self.num_eval_prompts)
        if train.empty or held_out.empty:
            raise DatasetError(f"{self.dataset_dir} needs train and {self.eval_split!r} pairs to pretrain a generator")
        self.eval_prompts = list(held_out["prompt"])
        self.eval_metadata = [oracle_metadata(row) for _, row in held_out.iterrows()]
        images, prompts = load_split_images(self.dataset_dir, train, self.resolution), list(train["prompt"])
        scenes = list(train["perfect_scene"])
        if self.fresh_scenes:
            fresh = FreshScenes.load_or_draw(
                self.fresh_path,
                self.dataset_dir,
                self.fresh_scenes,
                seed=self.fresh_seed,
                resolution=self.resolution,
                workers=self.workers,
            )
            if self.prompt_fits is not None:
                fresh, total = fresh.subset([self.prompt_fits(prompt) for prompt in fresh.prompts]), len(fresh)
                self.skipped_fresh = total - len(fresh)
                print(f"fresh scenes: {self.skipped_fresh} of {total} prompts over the text encoders' limit skipped")
            images = torch.cat([images, torch.from_numpy(fresh.images).permute(0, 3, 1, 2).contiguous()])
            prompts += fresh.prompts
            scenes += fresh.scenes
        self.train = ImagePromptDataset(images, prompts, *load_split_objects(scenes, self.resolution))

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=generator)


def rectified_flow_loss(
    velocity: torch.Tensor, noise: torch.Tensor, clean: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error of the predicted velocity against eps - x_0.  All [B, N, C] -> scalar. With token `weights`
    [B, N]: the weighted mean over tokens of each token's squared error (mean over channels); all ones gives the
    plain mean."""
    if weights is None:
        return F.mse_loss(velocity.float(), (noise - clean).float())
    errors = (velocity.float() - (noise - clean).float()).pow(2).mean(-1)  # [B, N]
    return (errors * weights).sum() / weights.sum()


def object_token_weights(regions: torch.Tensor, colours: torch.Tensor, grid: tuple[int, int], weight: float):
    """Per image token 1 + `weight` x the share of it that objects cover (overlaps counted once) -> [B, h * w].
    regions [B, K, R, R] in [0, 1] and colours [B, K] (-1: no object) as `ImagePromptDataset` gives them."""
    return 1 + weight * object_coverage(regions, colours, grid).sum(1).clamp(max=1)


def logit_normal_sigmas(batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """sigma = sigmoid(u), u ~ N(0, 1): [batch] in (0, 1)."""
    return torch.sigmoid(torch.randn(batch, generator=generator, device=device))


SIGMA_DISTRIBUTIONS = ("logit_normal", "uniform")


def check_sigma_settings(distribution: str, shift: float) -> None:
    """A ValueError naming the bad setting of `training_sigmas`."""
    if distribution not in SIGMA_DISTRIBUTIONS:
        raise ValueError(f"sigma distribution must be one of {SIGMA_DISTRIBUTIONS}, got {distribution!r}")
    if not shift > 0:
        raise ValueError(f"sigma shift must be positive, got {shift}")


def training_sigmas(
    batch: int,
    distribution: str = "logit_normal",
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Training noise levels: [batch] in (0, 1).

    distribution: "logit_normal" (sigmoid of N(0, 1)) or "uniform" (U(0, 1)). shift: SD3's time shift
    sigma -> shift sigma / (1 + (shift - 1) sigma) applied on top (1 = none; > 1 moves mass to high noise, where the
    sampler's first steps decide the layout: logit-normal puts 8% of its mass above sigma = .8, shift 3 puts 39%).
    """
    check_sigma_settings(distribution, shift)
    if distribution == "uniform":
        sigma = torch.rand(batch, generator=generator, device=device)
    else:
        sigma = logit_normal_sigmas(batch, generator=generator, device=device)
    return shift * sigma / (1 + (shift - 1) * sigma)


def oracle_metrics(verdicts: list) -> dict[str, float]:
    """Held-out numbers from `SpatialWorldOracle.judge` verdicts: all_found (share of images), relation_accuracy (over
    every stated relation), relation_accuracy_all_found (over images with every object found), and per relation
    family f: relation_accuracy_all_found/f (NaN when no such relation) and num_relations_all_found/f."""
    relations = [ok for verdict in verdicts for ok in verdict.confirmed]
    found = [ok for verdict in verdicts if verdict.all_found for ok in verdict.confirmed]
    return {
        "all_found": float(np.mean([verdict.all_found for verdict in verdicts])),
        "relation_accuracy": float(np.mean(relations)) if relations else math.nan,
        "relation_accuracy_all_found": float(np.mean(found)) if found else math.nan,
        "num_eval_images": len(verdicts),
    } | families_all_found(verdicts)


class GeneratorPretrainModule(LightningModule):
    """Rectified-flow training of the policy's transformer (every transformer weight; the pixel autoencoder frozen,
    the text encoders frozen unless `train_text_encoders`), with prompt dropout and an EMA copy of what trains that
    is evaluated and saved.

    policy: a `FluxPolicy` around the tiny pipeline (no LoRA). optimizer_lr / weight_decay: AdamW. prompt_dropout:
    probability of training on the empty prompt. warmup_steps / decay_steps / total_steps: the learning-rate schedule
    (`shared.schedules.lr_factor`). ema_decay: EMA of the transformer weights. sigma_distribution /
    sigma_shift: the training noise levels (`training_sigmas`). train_text_encoders: the CLIP and T5 encoders train
    too, at the same learning rate (kept in eval mode: no dropout). layout_loss_weight: weight of the layout head's
    loss (`rl_policy.layout_head`) beside the rectified-flow loss; 0: no head. object_loss_weight: the flow loss of an
    image token counts 1 + this x the share of it that the prompt's objects cover (`object_token_weights`; objects
    cover a few percent of a 32 px image, and an object left out costs the plain loss little); 0: plain. eval_*: the
    ODE sampler of the evaluation (steps, true classifier-free guidance scale, seed); eval_every_epochs: evaluate at
    every N-th epoch end (short epochs, a GPU batch over a small set, would otherwise spend their time sampling).
    """

    def __init__(
        self,
        policy: FluxPolicy,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        decay_steps: int = 0,
        total_steps: int | None = None,
        prompt_dropout: float = 0.1,
        ema_decay: float = 0.999,
        sigma_distribution: str = "logit_normal",
        sigma_shift: float = 1.0,
        train_text_encoders: bool = False,
        layout_loss_weight: float = 0.0,
        object_loss_weight: float = 0.0,
        eval_steps: int = 20,
        eval_cfg_scale: float = 3.0,
        eval_seed: int = 0,
        eval_every_epochs: int = 1,
    ) -> None:
        super().__init__()
        if eval_every_epochs < 1:
            raise ValueError(f"eval_every_epochs must be >= 1, got {eval_every_epochs}")
        if not 0 <= prompt_dropout < 1 or not 0 <= ema_decay < 1:
            raise ValueError(f"prompt_dropout and ema_decay must lie in [0, 1), got {prompt_dropout}, {ema_decay}")
        check_sigma_settings(sigma_distribution, sigma_shift)
        if not layout_loss_weight >= 0:
            raise ValueError(f"layout_loss_weight must be >= 0, got {layout_loss_weight}")
        if not object_loss_weight >= 0:
            raise ValueError(f"object_loss_weight must be >= 0, got {object_loss_weight}")
        if decay_steps < 0 or (decay_steps and (total_steps is None or total_steps < decay_steps)):
            raise ValueError(f"decay_steps ({decay_steps}) needs total_steps >= it, got total_steps={total_steps}")
        self.save_hyperparameters(ignore=["policy"])
        self.policy = policy
        pipeline = policy.pipeline
        for component in frozen_components(pipeline):
            component.requires_grad_(False).eval()
        self.transformer = policy.transformer.requires_grad_(True)
        self.ema = copy.deepcopy(self.transformer).requires_grad_(False).eval()
        self.layout_features: torch.Tensor | None = None
        if layout_loss_weight > 0:
            # on the image stream after the double-stream blocks (hooked on the live transformer, not the EMA copy)
            self.layout_head = nn.Linear(self.transformer.inner_dim, len(COLOURS) + 1)
            self.transformer.transformer_blocks[-1].register_forward_hook(self._keep_layout_features)
        if train_text_encoders:
            # registered only when they train, so a frozen-encoder run's checkpoints keep their keys
            self.text_encoders = nn.ModuleDict(
                {"text_encoder": pipeline.text_encoder, "text_encoder_2": pipeline.text_encoder_2}
            ).requires_grad_(True)
            self.ema_text_encoders = copy.deepcopy(self.text_encoders).requires_grad_(False).eval()
        self.last_eval: dict[str, float] = {}

    def _keep_layout_features(self, module: nn.Module, inputs: Any, outputs: tuple) -> None:
        self.layout_features = outputs[1]  # (encoder_hidden_states, hidden_states): the image tokens [B, N, D]

    def layout_loss(
        self, features: torch.Tensor, regions: torch.Tensor, colours: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """The layout head's `layout_loss` on image-stream features [B, N, D] against the objects' regions [B, K, R, R]
        and colours [B, K] (`ImagePromptDataset`), averaged over the samples in `keep` [B] (not prompt-dropped: the
        empty prompt says nothing of the layout)."""
        grid = self.policy.latent_grid(*regions.shape[-2:])
        target = layout_targets(regions.to(self.device), colours.to(self.device), grid, len(COLOURS))
        losses = layout_loss(self.layout_head(features), target)  # [B]
        keep = keep.to(self.device)
        return losses[keep].mean() if keep.any() else losses.sum() * 0

    def _trained_and_averaged(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.transformer, self.ema)]
        if self.hparams.train_text_encoders:
            pairs.append((self.text_encoders, self.ema_text_encoders))
        return pairs

    def on_train_epoch_start(self) -> None:
        if self.hparams.train_text_encoders:
            self.text_encoders.eval()  # T5's dropout off: the encoders train as they are used

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeddings:
        """The policy's (cached) prompt embeddings, or with `train_text_encoders` a fresh differentiable encoding."""
        if not self.hparams.train_text_encoders:
            return self.policy.encode_prompts(prompts)
        self.policy._check_length(list(dict.fromkeys(prompts)))
        embeds, pooled, _ = self.policy.pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.policy.max_sequence_length
        )
        return PromptEmbeddings(embeds, pooled, None)

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Within the block the pipeline holds the EMA transformer (and EMA text encoders when they train), with the
        policy's prompt cache emptied on the way in and out (cached embeddings belong to one set of encoders)."""
        pipeline = self.policy.pipeline
        live = {"transformer": pipeline.transformer}
        averaged = {"transformer": self.ema}
        if self.hparams.train_text_encoders:
            live |= {name: getattr(pipeline, name) for name in self.text_encoders}
            averaged |= dict(self.ema_text_encoders.items())
        self.policy._cache.clear()
        for name, module in averaged.items():
            setattr(pipeline, name, module)
        try:
            yield
        finally:
            for name, module in live.items():
                setattr(pipeline, name, module)
            self.policy._cache.clear()

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, prompts, regions, colours = batch
        height, width = images.shape[-2:]
        dropped = torch.rand(len(prompts)) < self.hparams.prompt_dropout
        prompts = ["" if drop else prompt for prompt, drop in zip(prompts, dropped.tolist(), strict=True)]
        clean = self.policy.encode_images(images.to(self.device))  # [B, N, C]
        noise = torch.randn_like(clean)
        sigma = training_sigmas(
            len(prompts), self.hparams.sigma_distribution, self.hparams.sigma_shift, device=self.device
        )  # [B]
        noisy = noised_latents(clean, noise, sigma)
        velocity = self.policy.velocity(noisy, sigma, self.encode_prompts(prompts), height, width)
        weights = None
        if self.hparams.object_loss_weight:
            grid = self.policy.latent_grid(height, width)
            weights = object_token_weights(
                regions.to(self.device), colours.to(self.device), grid, self.hparams.object_loss_weight
            )
        loss = flow_loss = rectified_flow_loss(velocity, noise, clean, weights)
        if self.hparams.layout_loss_weight:
            layout = self.layout_loss(self.layout_features, regions, colours, ~dropped)
            self.layout_features = None
            loss = flow_loss + self.hparams.layout_loss_weight * layout
            self.log("train/layout_loss", layout, batch_size=len(prompts))
            self.log("train/flow_loss", flow_loss, batch_size=len(prompts))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(prompts))
        return loss

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        decay = min(self.hparams.ema_decay, (1 + self.global_step) / (10 + self.global_step))  # warm-up of the EMA
        for trained, averaged in self._trained_and_averaged():
            for average, current in zip(averaged.parameters(), trained.parameters(), strict=True):
                average.lerp_(current.detach(), 1 - decay)

    def _place_pipeline(self) -> None:
        """The frozen pipeline parts on this module's device (Lightning moves it back to the CPU after a GPU fit)."""
        for component in frozen_components(self.policy.pipeline):
            component.to(self.device)

    def on_fit_start(self) -> None:
        self._place_pipeline()

    @torch.no_grad()
    def evaluate(
        self, prompts: list[str], metadata: list[dict[str, Any]], resolution: int
    ) -> tuple[dict, torch.Tensor]:
        """ODE samples of `prompts` with the EMA weights, scored by the SpatialWorld oracle -> (`oracle_metrics`,
        images). The initial noise is drawn on the CPU from `eval_seed` whatever the device."""
        self._place_pipeline()
        generator = torch.Generator(device="cpu").manual_seed(self.hparams.eval_seed)
        with self.averaged_weights():
            images = sample_ode(
                self.policy,
                prompts,
                height=resolution,
                width=resolution,
                num_steps=self.hparams.eval_steps,
                cfg_scale=self.hparams.eval_cfg_scale,
                generator=generator,
            )
        oracle = SpatialWorldOracle()
        verdicts = [oracle.judge(image, meta) for image, meta in zip(images.cpu(), metadata, strict=True)]
        return oracle_metrics(verdicts), images

    def on_train_epoch_end(self) -> None:
        if (self.current_epoch + 1) % self.hparams.eval_every_epochs == 0:
            self._evaluate_and_log()

    def evaluate_held_out(self, datamodule: GeneratorPretrainDataModule) -> tuple[dict, torch.Tensor]:
        """`evaluate` on the data module's held-out prompts; remembered in `last_eval`."""
        metrics, images = self.evaluate(datamodule.eval_prompts, datamodule.eval_metadata, datamodule.resolution)
        self.last_eval = metrics
        return metrics, images

    def _evaluate_and_log(self) -> None:
        metrics, images = self.evaluate_held_out(self.trainer.datamodule)
        self.log_dict({f"val/{name}": value for name, value in metrics.items() if not math.isnan(value)})
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_images"):
            experiment.add_images("val/samples", images[:16].cpu(), self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        trained = [parameter for module, _ in self._trained_and_averaged() for parameter in module.parameters()]
        if self.hparams.layout_loss_weight:
            trained += list(self.layout_head.parameters())
        optimizer = torch.optim.AdamW(trained, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            partial(
                lr_factor,
                warmup_steps=self.hparams.warmup_steps,
                decay_steps=self.hparams.decay_steps,
                total_steps=self.hparams.total_steps,
            ),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def save_generator(module: GeneratorPretrainModule, out_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """The pipeline with the EMA weights (transformer, and text encoders when they trained) as a diffusers directory
    (safetensors), plus `pretrain_metrics.json` in it. Written to a temporary sibling and renamed, so a kill leaves no
    half dir."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by a killed save
    with module.averaged_weights():
        module.policy.pipeline.save_pretrained(partial, safe_serialization=True)
    atomic_write_json(partial / "pretrain_metrics.json", metrics)
    if out_dir.exists():
        backup = out_dir.with_name(out_dir.name + ".old")
        out_dir.rename(backup)
        partial.rename(out_dir)
        shutil.rmtree(backup)
    else:
        partial.rename(out_dir)
    return out_dir
