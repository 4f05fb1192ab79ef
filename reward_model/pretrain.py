"""Stage A for the tiny embedded backbone: grounded-caption pretraining of a small Qwen2.5-VL on SpatialWorld scenes.

The paper (arXiv 2602.24233) fine-tunes a pretrained Qwen2.5-VL-7B, whose pretraining includes grounding. The
embedded default's tiny Qwen2.5-VL starts from random weights, and Bradley-Terry alone collapses it to an
input-independent reward (see the reward-model issue), so it first learns to say what is where, the way Qwen2.5-VL
learns grounding:

- data: SpatialWorld scenes drawn on the fly from a seed stream of their own (`stable_seed("grounded-caption",
  seed, split, index)`, never the pair builder's `stable_seed(seed, "pair", index)`), rendered at 112 px, each with a
  dense caption listing every object as "colour shape col row" in palette order, e.g. "red triangle 5 4 ; green
  square 5 7", where col and row are the centre of the object's drawn box binned on a `grid_size` x `grid_size`
  grid (digits, 0 = left / top). Palette order makes each position a query by colour ("where is the red one?"),
  which is what a prompt asks of the reward model. An optional easy-first curriculum raises the most objects per
  scene (2 up to 6) with the training step.
- text: the Qwen2.5-VL chat, the image then the instruction "where are the objects ?" in the user turn, the caption
  and `<|im_end|>` in the assistant turn; the loss covers only those answer tokens.
- network: `Qwen2_5_VLForConditionalGeneration` (with its LM head) from `tiny_backbone_config`, every parameter
  trained, plus a learned absolute position embedding added to the vision patch embeddings
  (`PatchPositionEmbedding`, by forward hooks, so the backbone's state dict keys stay those of Qwen2.5-VL). Measured
  before: captions only learnt positions once it was there; the tiny model's 2-D rotary frequencies carry little
  absolute position over a 4 x 4 token grid. It starts from a 2-D sine-cosine table (as MAE's fixed one) so that
  every patch is told apart from step 0, and is trained from there.
- metrics: `train/loss`, `{train,val}/acc_colour_shape` and `{train,val}/acc_position` (teacher-forced next-token
  accuracy on colour/shape words and on position digits), `val/loss`, `val/acc_exact` (captions with every answer
  token right) on a fixed held-out set.
- output: `save_pretrained_backbone` writes a directory that `build_spatialscore(dir)` loads as a local pretrained
  backbone (config.json, model.safetensors, processor files), plus the position embedding in
  `patch_position_embedding.safetensors`, which `attach_pretrained_position_embedding` puts back on a loaded model.

Simplified: teacher-forced accuracy rather than free generation; one instruction wording; images of one size.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchmetrics import MeanMetric
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from data_synthesis import COLOURS, SHAPES, Scene, WorldConfig, render, sample_scene
from reward_model.tokenizer import (
    IMAGE_TOKEN,
    VISION_END_TOKEN,
    VISION_START_TOKEN,
    SpatialScoreProcessor,
    build_spatialworld_processor,
    load_processor,
)
from shared import stable_seed
from shared.io import atomic_directory
from shared.schedules import lr_factor

INSTRUCTION = "where are the objects ?"  # every word is in the SpatialWorld vocabulary
END_TOKEN = "<|im_end|>"
POSITION_EMBEDDING_FILE = "patch_position_embedding.safetensors"
IGNORE_INDEX = -100
# Kinds of answer token, as stored in `CaptionBatch.token_kinds`.
NOT_SUPERVISED, OBJECT_WORD, POSITION_DIGIT, OTHER_ANSWER = 0, 1, 2, 3

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


# --- captions ----------------------------------------------------------------------------------------------------
def position_bin(fraction: float, grid_size: int) -> int:
    """The bin (0 .. grid_size - 1) of a coordinate given as a fraction of the image side; 1.0 falls in the last."""
    return min(max(int(fraction * grid_size), 0), grid_size - 1)


def grounded_caption(scene: Scene, grid_size: int = 8) -> str:
    """Every object of `scene` as "colour shape col row", in palette order (`COLOURS`), joined by " ; ".

    col and row bin the centre of the object's drawn box (not of its bounding square: a triangle's box is not
    centred on it) on a grid_size x grid_size grid, x to the right and y downwards.
    """
    if not 1 <= grid_size <= 10:
        raise ValueError(f"grid_size must be in [1, 10] (positions are single digits), got {grid_size}")
    palette = list(COLOURS)
    parts = []
    for obj in sorted(scene.objects, key=lambda o: palette.index(o.colour)):
        x0, y0, x1, y1 = obj.box
        col, row = position_bin((x0 + x1) / 2, grid_size), position_bin((y0 + y1) / 2, grid_size)
        parts.append(f"{obj.colour} {obj.shape} {col} {row}")
    return " ; ".join(parts)


def caption_chat_text(caption: str) -> str:
    """The full training text: the image, then the instruction, in the user turn; the caption as the answer."""
    return (
        f"<|im_start|>user\n{VISION_START_TOKEN}{IMAGE_TOKEN}{VISION_END_TOKEN}{INSTRUCTION}{END_TOKEN}\n"
        f"<|im_start|>assistant\n{caption}{END_TOKEN}"
    )


class CaptionExample(NamedTuple):
    image: Image.Image  # RGB, resolution x resolution
    caption: str
    num_objects: int


class CaptionBatch(NamedTuple):
    """B captioned images; labels and token kinds are aligned with input_ids (the loss shifts them)."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, mm_token_type_ids [B, T]; pixel_values
    # [B * patches, C * t * p * p]; image_grid_thw [B, 3]
    labels: torch.Tensor  # [B, T] int64: the token on answer positions, IGNORE_INDEX elsewhere
    token_kinds: torch.Tensor  # [B, T] int64: NOT_SUPERVISED, OBJECT_WORD, POSITION_DIGIT or OTHER_ANSWER
    captions: list[str]  # B
    num_objects: torch.Tensor  # [B] int64

    @property
    def batch_size(self) -> int:
        return len(self.captions)


class CaptionCollator:
    """Encodes `CaptionExample`s (right padding) and marks the answer tokens: the caption and its `<|im_end|>`.
    A plain class so that DataLoader workers can pickle it."""

    def __init__(self, processor: SpatialScoreProcessor) -> None:
        self.processor = processor
        tokenizer = processor.tokenizer
        self.object_word_ids = torch.tensor(tokenizer.convert_tokens_to_ids([*COLOURS, *SHAPES]))
        self.position_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list("0123456789")))
        unknown = tokenizer.convert_tokens_to_ids(tokenizer.unk_token)
        if (self.object_word_ids == unknown).any():
            raise ValueError("the processor's tokenizer lacks SpatialWorld colour or shape words")

    def __call__(self, examples: Sequence[CaptionExample]) -> CaptionBatch:
        captions = [example.caption for example in examples]
        inputs = self.processor(
            images=[example.image.convert("RGB") for example in examples],
            text=[caption_chat_text(caption) for caption in captions],
            padding=True,
            padding_side="right",
            return_tensors="pt",
        )
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]  # [B, T]
        labels = torch.full_like(input_ids, IGNORE_INDEX)  # [B, T]
        lengths = attention_mask.sum(dim=1).tolist()  # right padding: row i's tokens are 0 .. lengths[i] - 1
        for row, caption in enumerate(captions):
            answer = self.processor.tokenizer(caption + END_TOKEN, add_special_tokens=False)["input_ids"]
            start, end = lengths[row] - len(answer), lengths[row]
            assert input_ids[row, start:end].tolist() == answer, "the answer must be the last tokens of its row"
            labels[row, start:end] = input_ids[row, start:end]
        token_kinds = torch.full_like(labels, NOT_SUPERVISED)
        token_kinds[labels != IGNORE_INDEX] = OTHER_ANSWER
        token_kinds[torch.isin(labels, self.object_word_ids)] = OBJECT_WORD
        token_kinds[torch.isin(labels, self.position_ids)] = POSITION_DIGIT
        return CaptionBatch(
            inputs=dict(inputs),
            labels=labels,
            token_kinds=token_kinds,
            captions=captions,
            num_objects=torch.tensor([example.num_objects for example in examples], dtype=torch.long),
        )


# --- data --------------------------------------------------------------------------------------------------------
def max_objects_at(step: int, curriculum: Sequence[tuple[int, int]]) -> int:
    """The most objects per scene at a training step: the entry of `curriculum` ((first_step, max_objects), sorted by
    first_step, the first at step 0) in force at `step`."""
    current = curriculum[0][1]
    for first_step, max_objects in curriculum:
        if step >= first_step:
            current = max_objects
    return current


def caption_example(
    seed: int, *, min_objects: int, max_objects: int, resolution: int, grid_size: int, sky_ground_fraction: float
) -> CaptionExample:
    """One SpatialWorld scene drawn from `seed`, rendered, with its grounded caption."""
    rng = random.Random(seed)
    config = WorldConfig(min_objects=min_objects, max_objects=max_objects, sky_ground_fraction=sky_ground_fraction)
    scene = sample_scene(rng, config).scene
    image = render(scene, resolution, seed=rng.randrange(2**31))
    return CaptionExample(image, grounded_caption(scene, grid_size), len(scene.objects))


class GroundedCaptionStream(IterableDataset):
    """An endless stream of captioned scenes; example i depends only on (seed, i), and its object count on the
    curriculum step i // batch_size. DataLoader workers take interleaved indices."""

    def __init__(
        self,
        *,
        seed: int,
        batch_size: int,
        start_step: int,
        curriculum: Sequence[tuple[int, int]],
        min_objects: int,
        resolution: int,
        grid_size: int,
        sky_ground_fraction: float,
    ) -> None:
        super().__init__()
        self.seed, self.batch_size, self.start_step = seed, batch_size, start_step
        self.curriculum = tuple(curriculum)
        self.min_objects, self.resolution, self.grid_size = min_objects, resolution, grid_size
        self.sky_ground_fraction = sky_ground_fraction

    def __iter__(self) -> Iterator[CaptionExample]:
        worker = get_worker_info()
        offset, stride = (0, 1) if worker is None else (worker.id, worker.num_workers)
        index = self.start_step * self.batch_size + offset
        while True:
            step = index // self.batch_size
            yield caption_example(
                stable_seed("grounded-caption", self.seed, "train", index),
                min_objects=self.min_objects,
                max_objects=max(max_objects_at(step, self.curriculum), self.min_objects),
                resolution=self.resolution,
                grid_size=self.grid_size,
                sky_ground_fraction=self.sky_ground_fraction,
            )
            index += stride


class GroundedCaptionDataModule(LightningDataModule):
    """Grounded captions of SpatialWorld scenes, generated on the fly (training) and once (the held-out set).

    processor: the network's processor or its directory; None builds the SpatialWorld one (14 px patches, merge 2).
    batch_size: captions per training batch; eval_batch_size for the held-out set (default: batch_size).
    resolution: image side in pixels (112: 8 x 8 patches, 16 image tokens).
    grid_size: position bins per side (digits, at most 10).
    curriculum: (first_step, max_objects) entries, the first at step 0: easy first, e.g. ((0, 2), (300, 4), (900, 6)).
    min_objects: fewest objects per scene (at least 2).
    val_size / val_min_objects / val_max_objects: the held-out set, drawn from its own seed stream.
    seed: both streams; the training stream resumes at the trainer's global step.
    """

    def __init__(
        self,
        processor: SpatialScoreProcessor | str | os.PathLike | None = None,
        *,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        resolution: int = 112,
        grid_size: int = 8,
        curriculum: Sequence[tuple[int, int]] = ((0, 2), (300, 3), (600, 4), (900, 6)),
        min_objects: int = 2,
        val_size: int = 256,
        val_min_objects: int = 2,
        val_max_objects: int = 6,
        sky_ground_fraction: float = 0.5,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        curriculum = tuple((int(first_step), int(max_objects)) for first_step, max_objects in curriculum)
        if not curriculum or curriculum[0][0] != 0 or [s for s, _ in curriculum] != sorted(s for s, _ in curriculum):
            raise ValueError(f"curriculum must start at step 0 and be sorted by step, got {list(curriculum)}")
        for _, max_objects in curriculum:  # WorldConfig checks the bounds themselves
            WorldConfig(min_objects=min(min_objects, max_objects), max_objects=max_objects)
        WorldConfig(min_objects=val_min_objects, max_objects=val_max_objects)
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1) or val_size < 1:
            raise ValueError(
                f"batch sizes and val_size must be positive, got {batch_size}, {eval_batch_size}, {val_size}"
            )
        if not 1 <= grid_size <= 10:
            raise ValueError(f"grid_size must be in [1, 10] (positions are single digits), got {grid_size}")
        self.processor = load_processor(processor) if isinstance(processor, str | os.PathLike) else processor
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.resolution, self.grid_size = resolution, grid_size
        self.curriculum = curriculum
        self.min_objects = min_objects
        self.val_size, self.val_min_objects, self.val_max_objects = val_size, val_min_objects, val_max_objects
        self.sky_ground_fraction = sky_ground_fraction
        self.num_workers = num_workers
        self.seed = seed
        self.val_examples: list[CaptionExample] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.processor is None:
            self.processor = build_spatialworld_processor()
        if self.val_examples is None:
            self.val_examples = [
                caption_example(
                    stable_seed("grounded-caption", self.seed, "val", index),
                    min_objects=self.val_min_objects,
                    max_objects=self.val_max_objects,
                    resolution=self.resolution,
                    grid_size=self.grid_size,
                    sky_ground_fraction=self.sky_ground_fraction,
                )
                for index in range(self.val_size)
            ]

    def train_stream(self, start_step: int = 0) -> GroundedCaptionStream:
        """The endless training stream, from the first example of training step `start_step`."""
        return GroundedCaptionStream(
            seed=self.seed,
            batch_size=self.batch_size,
            start_step=start_step,
            curriculum=self.curriculum,
            min_objects=self.min_objects,
            resolution=self.resolution,
            grid_size=self.grid_size,
            sky_ground_fraction=self.sky_ground_fraction,
        )

    def train_dataloader(self) -> DataLoader:
        start_step = self.trainer.global_step if self.trainer is not None else 0  # resume where a checkpoint left
        return DataLoader(
            self.train_stream(start_step),
            batch_size=self.batch_size,
            collate_fn=CaptionCollator(self.processor),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_examples is None:
            raise RuntimeError("call setup() before asking for the held-out set")
        return DataLoader(
            self.val_examples,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=CaptionCollator(self.processor),
        )


# --- the vision position embedding -------------------------------------------------------------------------------
def patch_grid_positions(grid_thw: torch.Tensor, merge_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column (in patches) of every patch, in the order the Qwen2-VL image processor emits patches (frames,
    then merge blocks in raster order, then the merge_size x merge_size patches of a block).
    grid_thw: [N, 3] -> rows [P], cols [P], P = sum of t * h * w."""
    rows, cols = [], []
    for frames, height, width in grid_thw.tolist():
        grid_rows, grid_cols = torch.meshgrid(
            torch.arange(height, device=grid_thw.device), torch.arange(width, device=grid_thw.device), indexing="ij"
        )  # [h, w] each
        blocks = (height // merge_size, merge_size, width // merge_size, merge_size)
        rows.append(grid_rows.reshape(blocks).transpose(1, 2).flatten().repeat(frames))
        cols.append(grid_cols.reshape(blocks).transpose(1, 2).flatten().repeat(frames))
    return torch.cat(rows), torch.cat(cols)


def sincos_table(grid_size: int, dim: int) -> torch.Tensor:
    """MAE's 2-D sine-cosine table: half the channels encode the row, half the column.  -> [grid_size^2, dim]"""
    assert dim % 4 == 0, dim
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # [dim / 4]
    steps = torch.arange(grid_size, dtype=torch.float64)
    angles = steps[:, None] * frequencies[None]  # [grid, dim / 4]
    encoding = torch.cat([angles.sin(), angles.cos()], dim=1)  # [grid, dim / 2]
    rows = encoding[:, None, :].expand(grid_size, grid_size, dim // 2)
    cols = encoding[None, :, :].expand(grid_size, grid_size, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, dim).float()


class PatchPositionEmbedding(nn.Module):
    """A learned absolute position embedding added to the vision tower's patch embeddings.

    `weight` [grid_size^2, hidden] holds one row per (row, col) patch of images up to grid_size x grid_size patches.
    `attach` registers it as `visual.patch_position_embedding` (so it moves, trains, freezes and is saved with the
    vision tower) and adds two forward hooks: one on the tower, reading `grid_thw`, one on `patch_embed`, adding the
    rows of each patch to its embedding.
    """

    def __init__(self, grid_size: int, hidden_size: int, merge_size: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.grid_size, self.merge_size = grid_size, merge_size
        self.weight = nn.Parameter(init_scale * sincos_table(grid_size, hidden_size))  # [grid^2, hidden]
        self._grid_thw: torch.Tensor | None = None

    def forward(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """grid_thw: [N, 3] -> the embedding of every patch [P, hidden], in the processor's patch order."""
        if int(grid_thw[:, 1:].max()) > self.grid_size:
            raise ValueError(
                f"an image of {grid_thw[:, 1:].max().item()} patches per side exceeds the position embedding's "
                f"{self.grid_size}: resize images to at most {self.grid_size} patches per side"
            )
        rows, cols = patch_grid_positions(grid_thw, self.merge_size)  # [P], [P]
        return self.weight[rows * self.grid_size + cols]

    def attach(self, visual: nn.Module) -> None:
        """Put this embedding on a Qwen2.5-VL vision tower (`model.visual`); once per tower."""
        if hasattr(visual, "patch_position_embedding"):
            raise ValueError("this vision tower already has a patch position embedding")
        visual.add_module("patch_position_embedding", self)
        visual.register_forward_pre_hook(self._read_grid, with_kwargs=True)
        visual.patch_embed.register_forward_hook(self._add_positions)

    def _read_grid(self, visual: nn.Module, args: tuple, kwargs: dict) -> None:
        self._grid_thw = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]

    def _add_positions(self, patch_embed: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        assert self._grid_thw is not None, "the patch embedding ran outside the vision tower's forward"
        return output + self(self._grid_thw).to(output.dtype)  # [P, hidden]


# --- the network -------------------------------------------------------------------------------------------------
def build_caption_model(
    config: Qwen2_5_VLConfig,
    *,
    position_grid_size: int | None = 8,
    position_init_scale: float = 1.0,
    attn_implementation: str = "sdpa",
) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL with its LM head and random weights from `config` (e.g. `tiny_backbone_config()`), every parameter
    trainable; with a `PatchPositionEmbedding` for images of up to `position_grid_size` patches per side (None: none).
    """
    model = Qwen2_5_VLForConditionalGeneration._from_config(config, attn_implementation=attn_implementation)
    if position_grid_size is not None:
        vision = config.vision_config
        PatchPositionEmbedding(
            position_grid_size, vision.hidden_size, vision.spatial_merge_size, position_init_scale
        ).attach(model.model.visual)
    model.requires_grad_(True)
    return model


def _backbone_state_dict(model: Qwen2_5_VLForConditionalGeneration) -> dict[str, torch.Tensor]:
    return {name: value for name, value in model.state_dict().items() if "patch_position_embedding" not in name}


def save_pretrained_backbone(
    model: Qwen2_5_VLForConditionalGeneration,
    processor: SpatialScoreProcessor,
    directory: str | os.PathLike,
    *,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write the stage-A backbone where `build_spatialscore(directory)` loads it: config.json and model.safetensors
    (Hugging Face layout, LM head included; `Qwen2_5_VLModel.from_pretrained` drops it), the processor files, the
    position embedding (if any) in `POSITION_EMBEDDING_FILE` with its grid and merge sizes in the metadata, and
    `metrics` in `pretrain_metrics.json`. Atomic: written beside `directory`, then renamed into place."""
    directory = Path(directory)
    with atomic_directory(directory) as staging:
        model.save_pretrained(staging, state_dict=_backbone_state_dict(model), safe_serialization=True)
        processor.save_pretrained(staging)
        embedding = getattr(model.model.visual, "patch_position_embedding", None)
        if embedding is not None:
            save_position_embedding(embedding, staging / POSITION_EMBEDDING_FILE)
        if metrics is not None:
            (staging / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return directory


def save_position_embedding(embedding: PatchPositionEmbedding, path: str | os.PathLike) -> None:
    """`embedding` in the stage-A file format (weight, with grid and merge sizes in the metadata), which
    `attach_pretrained_position_embedding` reads back."""
    save_file(
        {"weight": embedding.weight.detach().contiguous().cpu()},
        str(path),
        metadata={"grid_size": str(embedding.grid_size), "merge_size": str(embedding.merge_size)},
    )


def attach_pretrained_position_embedding(visual: nn.Module, directory: str | os.PathLike) -> bool:
    """Load `POSITION_EMBEDDING_FILE` from a stage-A directory onto a vision tower (`model.visual` of a
    `Qwen2_5_VLModel`, or `model.model.visual` with the LM head); False if the directory has none."""
    path = Path(directory) / POSITION_EMBEDDING_FILE
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "grid_size" not in metadata or "merge_size" not in metadata:
        raise ValueError(f"{path} lacks the grid_size / merge_size metadata of a patch position embedding")
    weight = load_file(str(path))["weight"]  # [grid^2, hidden]
    grid_size, merge_size = int(metadata["grid_size"]), int(metadata["merge_size"])
    if weight.shape != (grid_size * grid_size, visual.patch_embed.embed_dim):
        raise ValueError(
            f"{path} holds a {list(weight.shape)} embedding; the vision tower needs "
            f"[{grid_size * grid_size}, {visual.patch_embed.embed_dim}]"
        )
    embedding = PatchPositionEmbedding(grid_size, weight.shape[1], merge_size)
    embedding.weight.data.copy_(weight)
    embedding.to(device=visual.patch_embed.proj.weight.device, dtype=visual.patch_embed.proj.weight.dtype)
    embedding.attach(visual)
    return True


def load_caption_model(directory: str | os.PathLike) -> Qwen2_5_VLForConditionalGeneration:
    """A stage-A model saved by `save_pretrained_backbone`, LM head and position embedding included."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} holds no stage-A backbone: config.json is missing")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(directory))
    attach_pretrained_position_embedding(model.model.visual, directory)
    return model


# --- training ----------------------------------------------------------------------------------------------------
def caption_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens: position t predicts labels[t + 1].
    logits: [B, T, V], labels: [B, T] (IGNORE_INDEX off the answer) -> scalar."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def token_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether the argmax next-token prediction equals each label.  -> bool [B, T - 1], aligned with labels[:, 1:]."""
    return logits[:, :-1].argmax(dim=-1) == labels[:, 1:]


class CaptionPretrainModule(LightningModule):
    """Stage A: next-token training of a captioning Qwen2.5-VL on `CaptionBatch`es, every parameter trained.

    network: `build_caption_model(...)` (or any module with `forward(**inputs) -> output with .logits [B, T, V]`).
    optimizer: a factory `params -> Optimizer`, e.g. `functools.partial(torch.optim.AdamW, lr=1e-3)`.
    scheduler: optional factory `optimizer -> LRScheduler`, stepped every training step.
    """

    def __init__(
        self, network: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None
    ) -> None:
        super().__init__()
        self.network = network
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_metrics = nn.ModuleDict(
            {name: MeanMetric() for name in ("loss", "acc_colour_shape", "acc_position", "acc_exact")}
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Encoded inputs -> logits [B, T, V]."""
        return self.network(**inputs, use_cache=False).logits

    @staticmethod
    def accuracies(logits: torch.Tensor, batch: CaptionBatch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per metric, (hits, weights) for a weighted mean: token accuracy on colour/shape words and on position
        digits ([B, T - 1] each), and whether every answer token of a caption is right ([B], weight 1)."""
        hits = token_hits(logits, batch.labels).float()  # [B, T - 1]
        kinds = batch.token_kinds[:, 1:]  # [B, T - 1]
        answer = kinds != NOT_SUPERVISED
        exact = (hits.bool() | ~answer).all(dim=1).float()  # [B]
        return {
            "acc_colour_shape": (hits, (kinds == OBJECT_WORD).float()),
            "acc_position": (hits, (kinds == POSITION_DIGIT).float()),
            "acc_exact": (exact, torch.ones_like(exact)),
        }

    def training_step(self, batch: CaptionBatch, batch_idx: int) -> torch.Tensor:
        logits = self(batch.inputs)  # [B, T, V]
        loss = caption_loss(logits, batch.labels)
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch.batch_size)
        with torch.no_grad():
            for name, (hits, weights) in self.accuracies(logits.detach(), batch).items():
                if name != "acc_exact" and weights.sum() > 0:
                    accuracy = (hits * weights).sum() / weights.sum()
                    self.log(f"train/{name}", accuracy, on_step=True, batch_size=batch.batch_size)
        self.log("train/num_objects", batch.num_objects.float().mean(), on_step=True, batch_size=batch.batch_size)
        return loss

    def validation_step(self, batch: CaptionBatch, batch_idx: int) -> None:
        logits = self(batch.inputs)
        answer_tokens = (batch.labels[:, 1:] != IGNORE_INDEX).sum().float()  # the loss is a mean over them
        values = {"loss": (caption_loss(logits, batch.labels), answer_tokens)} | self.accuracies(logits, batch)
        for name, (value, weight) in values.items():
            self.val_metrics[name].update(value, weight)
            self.log(
                f"val/{name}",
                self.val_metrics[name],
                on_epoch=True,
                prog_bar=name == "acc_position",
                batch_size=batch.batch_size,
            )

    def configure_optimizers(self) -> dict[str, Any]:
        trainable = [parameter for parameter in self.network.parameters() if parameter.requires_grad]
        if not trainable:
            raise ValueError("the network has no trainable parameters: nothing for the optimizer to train")
        optimizer = self.optimizer_factory(trainable)
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def warmup_constant(optimizer: torch.optim.Optimizer, *, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps`, then the base learning rate (the second measured run's schedule: the first
    run's cosine decay reached 0.2x about where the plateau ends)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, warmup_steps=warmup_steps))


def warmup_cosine(optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, floor: float = 0.1):
    """Linear warm-up over `warmup_steps`, then a cosine from the base learning rate down to `floor` times it at
    `total_steps` (held there after)."""
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
