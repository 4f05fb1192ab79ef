"""Stage A in stage B's own input format: sentence verification and image-text matching on SpatialWorld scenes.

The caption stage A (`reward_model.pretrain`) teaches the tiny backbone what is where, but the reward model then
has to compare a long prompt with the image and carry the verdict to `<|reward|>`, which Bradley-Terry alone never
taught a 2-layer model (see the reward-model issue). This stage trains exactly that, with dense exact labels, on
the input stage B sees (`reward_text`: image, SpatialWorld prompt, `<|reward|>`):

- data: a scene pair from `sample_pair` drawn from a seed stream of its own (`stable_seed("stage-a-verify", seed,
  split, index)`, never the pair builder's); one of its two scenes is shown, and each stated relation is written
  either as it holds there or as its opposite; the oracle (`evaluate` on the shown scene's exact layout) labels
  every sentence. Half the examples state only true relations (as a dataset prompt with its own image); the others
  falsify 1 to 3 sentences, preferring the relations the perturbation moved (the hard negatives of the test).
- objectives (as BLIP's image-text matching, plus a dense per-sentence one):
  1. per-sentence verification: a linear verdict head reads the hidden state of each relation sentence's final
     "." at the output of decoder layer `verdict_layer` (by default the second-to-last, so the last layer is free
     to gather the verdicts), BCE against the oracle label;
  2. image-text matching: a linear head on the final hidden state of `<|reward|>` says whether every sentence
     holds, BCE;
  3. dense vision grounding: a linear head on each image token as the language model receives it (the vision
     tower's output) says which colours' boxes overlap each of the patches it merges, multi-label BCE. Unlike
     captions, it supervises the vision tower directly, so it needs no text model that can already read.
- network: `Qwen2_5_VLModel` (no LM head, as stage B) from `tiny_backbone_config`, every parameter trained, with the
  `PatchPositionEmbedding` of the caption stage on the vision patches.
- output: `save_grounded_backbone` writes a directory that `build_spatialscore(dir)` loads, with the position
  embedding and the two heads beside it.

Simplified: one prompt generator (SpatialWorld's `describe_sentences`); the caption loss is not mixed in (the
token-colour loss takes its place as the vision-grounding task).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import IterableDataset, get_worker_info
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

from data_synthesis import COLOURS, Relation, Scene, SceneLayout, Truth, WorldConfig, evaluate, render
from data_synthesis.perturb import sample_pair
from data_synthesis.prompts import describe_sentences
from reward_model.model import encode, reward_token_positions
from reward_model.pretrain import (
    POSITION_EMBEDDING_FILE,
    OptimizerFactory,
    PatchPositionEmbedding,
    SchedulerFactory,
    save_position_embedding,
)
from reward_model.tokenizer import SpatialScoreProcessor
from shared import stable_seed

HEADS_FILE = "grounding_heads.safetensors"


# --- examples ----------------------------------------------------------------------------------------------------
class VerificationExample(NamedTuple):
    image: Image.Image  # RGB, resolution x resolution
    prompt: str  # intro sentences, then one sentence per relation
    sentence_truth: list[bool]  # per relation sentence, in prompt order: does it hold in the image?
    relations: list[Relation]  # the relation each sentence states, in prompt order
    scene: Scene  # the scene shown in the image

    @property
    def matches(self) -> bool:
        """Image-text match: every stated relation holds."""
        return all(self.sentence_truth)


def holds(relation: Relation, layout: SceneLayout) -> bool | None:
    """True / False where the oracle is sure (HOLDS / BROKEN), None otherwise (UNCLEAR, MISSING)."""
    truth = evaluate(relation, layout)
    return True if truth is Truth.HOLDS else False if truth is Truth.BROKEN else None


def verification_example(
    seed: int,
    world: WorldConfig,
    *,
    resolution: int = 128,
    jitter: int = 8,
    match_fraction: float = 0.5,
    hard_fraction: float = 0.5,
    max_false: int = 3,
) -> VerificationExample:
    """One labelled (image, prompt) drawn from `seed`: see the module docstring.

    match_fraction: share of examples whose sentences all hold. hard_fraction: chance that a falsified sentence is
    one the perturbation broke (the two scenes differ there) rather than any. max_false: most falsified sentences.
    """
    rng = random.Random(seed)
    while True:  # a pair without a verified perturbation is skipped, as the builder does
        sample = sample_pair(rng, world, rng.randint(1, 3))
        if sample is not None:
            break
    broken = set(sample.perturbation.broken)
    show_perturbed = rng.random() < 0.5
    scene: Scene = sample.perturbation.scene if show_perturbed else sample.scene
    # What holds in the shown scene: the stated relations in the perfect one, the broken ones flipped otherwise.
    true_relations = [r.opposite() if show_perturbed and i in broken else r for i, r in enumerate(sample.stated)]
    relations = list(true_relations)
    if rng.random() >= match_fraction:
        count = rng.randint(1, min(max_false, len(relations)))
        hard = [i for i in range(len(relations)) if i in broken]
        chosen: set[int] = set()
        while len(chosen) < count:
            pool = [i for i in hard if i not in chosen] if rng.random() < hard_fraction else []
            pool = pool or [i for i in range(len(relations)) if i not in chosen]
            chosen.add(rng.choice(pool))
        for i in chosen:
            relations[i] = relations[i].opposite()
    layout = SceneLayout(scene)
    truth = [holds(relation, layout) for relation in relations]
    for i, value in enumerate(truth):
        if value is None:  # the opposite is not clearly broken either: state the true relation instead
            relations[i], truth[i] = true_relations[i], True
    pieces = describe_sentences(scene, relations, style_seed=rng.randrange(2**31))
    image = render(scene, resolution, jitter=jitter, seed=rng.randrange(2**31))
    return VerificationExample(
        image=image,
        prompt=" ".join(pieces.intro + pieces.sentences),
        sentence_truth=[bool(truth[slot]) for slot in pieces.slots],
        relations=[relations[slot] for slot in pieces.slots],
        scene=scene,
    )


def token_colour_targets(scene: Scene, rows: int, cols: int, merge_size: int = 2) -> torch.Tensor:
    """Per image token (a rows x cols grid in raster order), which colours' drawn boxes overlap each of its
    merge_size x merge_size sub-cells (the patches it merges), so that the token also says where in its cell an
    object is.  -> [rows * cols, merge_size^2 * len(COLOURS)] float multi-hot, sub-cells in raster order."""
    fine_rows, fine_cols, palette = rows * merge_size, cols * merge_size, list(COLOURS)
    fine = torch.zeros(fine_rows, fine_cols, len(palette))
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        top, bottom = max(int(y0 * fine_rows), 0), min(int(y1 * fine_rows), fine_rows - 1)
        left, right = max(int(x0 * fine_cols), 0), min(int(x1 * fine_cols), fine_cols - 1)
        fine[top : bottom + 1, left : right + 1, palette.index(obj.colour)] = 1.0
    blocks = fine.reshape(rows, merge_size, cols, merge_size, len(palette)).permute(0, 2, 1, 3, 4)
    return blocks.reshape(rows * cols, merge_size * merge_size * len(palette))


class VerificationBatch(NamedTuple):
    inputs: dict[str, torch.Tensor]  # encode(...): input_ids, attention_mask, mm_token_type_ids [B, T], pixels
    sentence_ends: torch.Tensor  # [S, 2] int64: (row, token index) of each relation sentence's final "."
    sentence_truth: torch.Tensor  # [S] float: 1 where that sentence holds
    matches: torch.Tensor  # [B] float: 1 where every sentence of the row holds
    token_colours: torch.Tensor  # [N, m * m * C] float: per image token (N in all rows) and merged patch (m * m),
    # which of the C colours' boxes overlap that patch
    num_objects: torch.Tensor  # [B] int64

    @property
    def batch_size(self) -> int:
        return len(self.matches)


class VerificationCollator:
    """Encodes examples as stage B does (`encode`, right padding) and finds each relation sentence's last token.

    The k-th "." of a prompt ends its k-th sentence (no SpatialWorld sentence holds another "."), so relation
    sentence j ends at the (num_intro + j)-th "." of the row, counted from the end.
    """

    def __init__(self, processor: SpatialScoreProcessor) -> None:
        self.processor = processor
        self.period_id = processor.tokenizer.convert_tokens_to_ids(".")
        self.merge_size = processor.image_processor.merge_size

    def __call__(self, examples: Sequence[VerificationExample]) -> VerificationBatch:
        inputs = encode(self.processor, [e.prompt for e in examples], [e.image for e in examples])
        ends: list[tuple[int, int]] = []
        for row, example in enumerate(examples):
            periods = (inputs["input_ids"][row] == self.period_id).nonzero().flatten().tolist()
            count = len(example.sentence_truth)
            if len(periods) < count:
                raise ValueError(f"prompt has {len(periods)} '.' tokens but {count} relation sentences: {example}")
            ends += [(row, position) for position in periods[len(periods) - count :]]
        grids = inputs["image_grid_thw"][:, 1:] // self.merge_size  # [B, 2]: image tokens per column, per row
        colours = [
            token_colour_targets(e.scene, int(h), int(w), self.merge_size)
            for e, (h, w) in zip(examples, grids, strict=True)
        ]
        return VerificationBatch(
            inputs=dict(inputs),
            sentence_ends=torch.tensor(ends, dtype=torch.long).reshape(-1, 2),
            sentence_truth=torch.tensor([t for e in examples for t in e.sentence_truth], dtype=torch.float),
            matches=torch.tensor([e.matches for e in examples], dtype=torch.float),
            token_colours=torch.cat(colours),
            num_objects=torch.tensor([len(e.scene.objects) for e in examples], dtype=torch.long),
        )


def world_at(step: int, curriculum: Sequence[tuple[int, int]], min_objects: int) -> WorldConfig:
    """The scene distribution at a training step: `curriculum` ((first_step, max_objects), sorted, from step 0)."""
    current = curriculum[0][1]
    for first_step, max_objects in curriculum:
        if step >= first_step:
            current = max_objects
    return WorldConfig(min_objects=min(min_objects, current), max_objects=current)


class VerificationStream(IterableDataset):
    """Endless examples; example i depends only on (seed, i) and its object count on the step i // batch_size."""

    def __init__(
        self,
        *,
        seed: int,
        batch_size: int,
        start_step: int = 0,
        curriculum: Sequence[tuple[int, int]] = ((0, 6),),
        min_objects: int = 3,
        resolution: int = 128,
    ) -> None:
        super().__init__()
        self.seed, self.batch_size, self.start_step = seed, batch_size, start_step
        self.curriculum, self.min_objects, self.resolution = tuple(curriculum), min_objects, resolution

    def __iter__(self) -> Iterator[VerificationExample]:
        worker = get_worker_info()
        offset, stride = (0, 1) if worker is None else (worker.id, worker.num_workers)
        index = self.start_step * self.batch_size + offset
        while True:
            world = world_at(index // self.batch_size, self.curriculum, self.min_objects)
            yield verification_example(
                stable_seed("stage-a-verify", self.seed, "train", index), world, resolution=self.resolution
            )
            index += stride


def validation_examples(seed: int, size: int, *, resolution: int = 128) -> list[VerificationExample]:
    """A fixed held-out set with the test's scene distribution (3-6 objects), from its own seed stream."""
    world = WorldConfig(min_objects=3, max_objects=6)
    return [
        verification_example(stable_seed("stage-a-verify", seed, "val", i), world, resolution=resolution)
        for i in range(size)
    ]


# --- the network -------------------------------------------------------------------------------------------------
class GroundingOutput(NamedTuple):
    sentence_logits: torch.Tensor  # [S]: the verdict logit of each relation sentence (order of sentence_ends)
    match_logits: torch.Tensor  # [B]: the image-text matching logit at `<|reward|>`
    reward_hidden: torch.Tensor  # [B, H]: the final hidden state of `<|reward|>`
    token_colour_logits: torch.Tensor  # [N, m * m * C]: per image token and merged patch, which colours it shows


class GroundingNetwork(nn.Module):
    """A `Qwen2_5_VLModel` with a verdict head (reading layer `verdict_layer`'s output at sentence ends) and an
    image-text matching head (reading the final hidden state of `<|reward|>`)."""

    def __init__(self, backbone: Qwen2_5_VLModel, reward_token_id: int, verdict_layer: int | None = None) -> None:
        super().__init__()
        layers = backbone.config.text_config.num_hidden_layers
        self.verdict_layer = layers - 1 if verdict_layer is None else verdict_layer
        if not 1 <= self.verdict_layer <= layers:
            raise ValueError(f"verdict_layer must be in [1, {layers}], got {self.verdict_layer}")
        hidden = backbone.config.text_config.hidden_size
        self.backbone = backbone
        self.reward_token_id = reward_token_id
        self.verdict_head = nn.Linear(hidden, 1)
        self.match_head = nn.Linear(hidden, 1)
        merge_size = backbone.config.vision_config.spatial_merge_size
        self.colour_head = nn.Linear(hidden, merge_size * merge_size * len(COLOURS))
        self.image_token_id = backbone.config.image_token_id

    def forward(self, inputs: dict[str, torch.Tensor], sentence_ends: torch.Tensor) -> GroundingOutput:
        """inputs: `encode(...)` of B rows; sentence_ends: [S, 2] (row, token index)."""
        output = self.backbone(**inputs, output_hidden_states=True, use_cache=False)
        # hidden_states[i] is the output of decoder layer i (0: the embeddings; the last one is after the norm).
        verdict_states = output.hidden_states[self.verdict_layer]  # [B, T, H]
        sentence_hidden = verdict_states[sentence_ends[:, 0], sentence_ends[:, 1]]  # [S, H]
        positions = reward_token_positions(inputs["input_ids"], inputs["attention_mask"], self.reward_token_id)
        final = output.last_hidden_state  # [B, T, H]
        reward_hidden = final[torch.arange(final.shape[0], device=final.device), positions]  # [B, H]
        return GroundingOutput(
            sentence_logits=self.verdict_head(sentence_hidden).squeeze(-1),
            match_logits=self.match_head(reward_hidden).squeeze(-1),
            reward_hidden=reward_hidden,
            # The language model's input at image tokens is the vision tower's output: this supervises the tower.
            token_colour_logits=self.colour_head(output.hidden_states[0][inputs["input_ids"] == self.image_token_id]),
        )


def build_grounding_network(
    config: Qwen2_5_VLConfig,
    reward_token_id: int,
    *,
    verdict_layer: int | None = None,
    position_grid_size: int = 10,
    attn_implementation: str = "sdpa",
) -> GroundingNetwork:
    """Random-weight `Qwen2_5_VLModel` from `config` with a `PatchPositionEmbedding` for images of up to
    `position_grid_size` patches per side, and the two heads; every parameter trainable."""
    backbone = Qwen2_5_VLModel._from_config(config, attn_implementation=attn_implementation)
    vision = config.vision_config
    PatchPositionEmbedding(position_grid_size, vision.hidden_size, vision.spatial_merge_size).attach(backbone.visual)
    network = GroundingNetwork(backbone, reward_token_id, verdict_layer)
    network.requires_grad_(True)
    return network


def grounding_losses(output: GroundingOutput, batch: VerificationBatch) -> dict[str, torch.Tensor]:
    """BCE of the verdicts against the oracle ([S]), of the matching logits against all-true ([B]) and of the image
    tokens' colour logits against the colours whose boxes overlap their cells ([N, C])."""
    return {
        "verdict": F.binary_cross_entropy_with_logits(output.sentence_logits.float(), batch.sentence_truth),
        "match": F.binary_cross_entropy_with_logits(output.match_logits.float(), batch.matches),
        "colour": F.binary_cross_entropy_with_logits(output.token_colour_logits.float(), batch.token_colours),
    }


class GroundingPretrainModule(LightningModule):
    """Stage A (verification): `loss = verdict BCE + match_weight * matching BCE + colour_weight * token colour BCE`,
    every parameter trained.

    Logs `train/loss`, `{train,val}/acc_verdict` (sentence accuracy), `{train,val}/acc_match`, `{train,val}/acc_colour`
    (per image token and colour).
    """

    def __init__(
        self,
        network: GroundingNetwork,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        *,
        match_weight: float = 1.0,
        colour_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.network = network
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.match_weight, self.colour_weight = match_weight, colour_weight

    def step(self, batch: VerificationBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and detached metrics of one batch."""
        output = self.network(batch.inputs, batch.sentence_ends)
        losses = grounding_losses(output, batch)
        loss = losses["verdict"] + self.match_weight * losses["match"] + self.colour_weight * losses["colour"]
        metrics = {
            "loss": loss.detach(),
            "acc_verdict": ((output.sentence_logits > 0).float() == batch.sentence_truth).float().mean(),
            "acc_match": ((output.match_logits > 0).float() == batch.matches).float().mean(),
            "acc_colour": ((output.token_colour_logits > 0).float() == batch.token_colours).float().mean(),
        }
        return loss, metrics

    def training_step(self, batch: VerificationBatch, batch_idx: int) -> torch.Tensor:
        loss, metrics = self.step(batch)
        for name, value in metrics.items():
            self.log(f"train/{name}", value, on_step=True, prog_bar=name != "loss", batch_size=batch.batch_size)
        return loss

    def validation_step(self, batch: VerificationBatch, batch_idx: int) -> None:
        _, metrics = self.step(batch)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, on_epoch=True, batch_size=batch.batch_size)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory([p for p in self.network.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# --- saving ------------------------------------------------------------------------------------------------------
def save_grounded_backbone(
    network: GroundingNetwork,
    processor: SpatialScoreProcessor,
    directory: str | os.PathLike,
    *,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write the stage-A backbone where `build_spatialscore(directory)` loads it (config.json, model.safetensors,
    processor files), its position embedding (`POSITION_EMBEDDING_FILE`), the verdict and matching heads
    (`HEADS_FILE`, with the verdict layer in its metadata) and `metrics` in `pretrain_metrics.json`. Atomic."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        backbone = network.backbone
        state = {k: v for k, v in backbone.state_dict().items() if "patch_position_embedding" not in k}
        backbone.save_pretrained(staging, state_dict=state, safe_serialization=True)
        processor.save_pretrained(staging)
        embedding = backbone.visual.patch_position_embedding
        save_position_embedding(embedding, staging / POSITION_EMBEDDING_FILE)
        heads = {f"verdict_head.{k}": v for k, v in network.verdict_head.state_dict().items()}
        heads |= {f"match_head.{k}": v for k, v in network.match_head.state_dict().items()}
        heads |= {f"colour_head.{k}": v for k, v in network.colour_head.state_dict().items()}
        save_file(
            {k: v.detach().contiguous() for k, v in heads.items()},
            staging / HEADS_FILE,
            metadata={"verdict_layer": str(network.verdict_layer)},
        )
        if metrics is not None:
            (staging / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        staging.chmod(0o755)
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def load_grounding_heads(network: GroundingNetwork, directory: str | os.PathLike) -> None:
    """Put the verdict and matching heads saved by `save_grounded_backbone` back on `network`."""
    path = Path(directory) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no grounding heads: {HEADS_FILE} is missing")
    state = load_file(str(path))
    network.verdict_head.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("verdict")})
    network.match_head.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("match")})
    network.colour_head.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("colour")})
