"""Stage A's network: a `Qwen2_5_VLModel` (no LM head, as stage B) from `tiny_backbone_config` with the patch
position embedding of `reward_model.position_embedding` on its vision patches, every parameter trained, and small linear
heads that read the hidden states the losses supervise (`losses.py`): the verdict of each relation sentence at its
final "." (decoder layer `verdict_layer`), the image-text match at `<|reward|>` (final layer), the colours under each
image token (the vision tower's output), each mention's object cell and position (layer `binding_layer`), and each
sentence's objects' cells, offset, relation kind and stated margin (at its "."; `verdict_layer`).

`save_grounded_backbone` writes a directory that stage B's `build_spatialscore(dir)` loads, the position
embedding and the heads beside it; `build_verification_network(init_from=dir)` starts the next phase from one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

from data_synthesis import COLOURS
from data_synthesis.relations import KINDS
from reward_model.model import build_spatialscore, reward_token_positions, tiny_backbone_config
from reward_model.position_embedding import POSITION_EMBEDDING_FILE, PatchPositionEmbedding, save_position_embedding
from reward_model.stage_a.data import POSITION_BINS
from reward_model.tokenizer import REWARD_TOKEN, SpatialScoreProcessor, build_spatialworld_processor
from shared.io import atomic_directory

HEADS_FILE = "grounding_heads.safetensors"


class GroundingOutput(NamedTuple):
    sentence_logits: torch.Tensor  # [S]: the verdict logit of each relation sentence (order of sentence_ends)
    match_logits: torch.Tensor  # [B]: the image-text matching logit at `<|reward|>`
    reward_hidden: torch.Tensor  # [B, H]: the final hidden state of `<|reward|>`
    token_colour_logits: torch.Tensor  # [N, m * m * C]: per image token and merged patch, which colours it shows
    binding_logits: torch.Tensor  # [M, 2, bins]: per object mention, its object's column and row bin
    image_cell_logits: torch.Tensor | None = None  # [N, 2, bins]: per image token, its own column and row bin
    slot_logits: torch.Tensor | None = None  # [S, 2, 2, bins]: per relation sentence, objects a, b: column, row bin
    mention_xy: torch.Tensor | None = None  # [M, 2]: per mention, COORD_SCALE * its object's (x, y)
    slot_offsets: torch.Tensor | None = None  # [S, 2]: per relation sentence, COORD_SCALE * (centre a - centre b)
    kind_logits: torch.Tensor | None = None  # [S, len(KINDS)]: per relation sentence, its relation kind
    stated_offsets: torch.Tensor | None = None  # [S]: per relation sentence, COORD_SCALE * the stated offset


class GroundingNetwork(nn.Module):
    """A `Qwen2_5_VLModel` with a verdict head (reading layer `verdict_layer`'s output at sentence ends) and an
    image-text matching head (reading the final hidden state of `<|reward|>`)."""

    def __init__(
        self,
        backbone: Qwen2_5_VLModel,
        reward_token_id: int,
        verdict_layer: int | None = None,
        binding_layer: int | None = None,
        position_bins: int = POSITION_BINS,
    ) -> None:
        super().__init__()
        layers = backbone.config.text_config.num_hidden_layers
        self.verdict_layer = layers - 1 if verdict_layer is None else verdict_layer
        if not 1 <= self.verdict_layer <= layers:
            raise ValueError(f"verdict_layer must be in [1, {layers}], got {self.verdict_layer}")
        self.binding_layer = max(layers // 2, 1) if binding_layer is None else binding_layer
        if not 1 <= self.binding_layer <= layers:
            raise ValueError(f"binding_layer must be in [1, {layers}], got {self.binding_layer}")
        self.position_bins = position_bins
        hidden = backbone.config.text_config.hidden_size
        self.backbone = backbone
        self.reward_token_id = reward_token_id
        self.verdict_head = nn.Linear(hidden, 1)
        self.match_head = nn.Linear(hidden, 1)
        merge_size = backbone.config.vision_config.spatial_merge_size
        self.colour_head = nn.Linear(hidden, merge_size * merge_size * len(COLOURS))
        self.binding_head = nn.Linear(hidden, 2 * position_bins)
        self.slot_head = nn.Linear(hidden, 4 * position_bins)
        self.mention_xy_head = nn.Linear(hidden, 2)
        self.offset_head = nn.Linear(hidden, 2)
        self.kind_head = nn.Linear(hidden, len(KINDS))
        self.stated_head = nn.Linear(hidden, 1)
        self.image_token_id = backbone.config.image_token_id

    def forward(
        self, inputs: dict[str, torch.Tensor], sentence_ends: torch.Tensor, mentions: torch.Tensor | None = None
    ) -> GroundingOutput:
        """inputs: `encode(...)` of B rows; sentence_ends: [S, 2] and mentions: [M, 2] (row, token index)."""
        output = self.backbone(**inputs, output_hidden_states=True, use_cache=False)
        # hidden_states[i] is the output of decoder layer i (0: the embeddings; the last one is after the norm).
        verdict_states = output.hidden_states[self.verdict_layer]  # [B, T, H]
        sentence_hidden = verdict_states[sentence_ends[:, 0], sentence_ends[:, 1]]  # [S, H]
        positions = reward_token_positions(inputs["input_ids"], inputs["attention_mask"], self.reward_token_id)
        final = output.last_hidden_state  # [B, T, H]
        reward_hidden = final[torch.arange(final.shape[0], device=final.device), positions]  # [B, H]
        if mentions is None:
            mentions = torch.zeros(0, 2, dtype=torch.long, device=final.device)
        binding_states = output.hidden_states[self.binding_layer]  # [B, T, H]
        mention_hidden = binding_states[mentions[:, 0], mentions[:, 1]]  # [M, H]
        image_hidden = binding_states[inputs["input_ids"] == self.image_token_id]  # [N, H]
        return GroundingOutput(
            sentence_logits=self.verdict_head(sentence_hidden).squeeze(-1),
            match_logits=self.match_head(reward_hidden).squeeze(-1),
            reward_hidden=reward_hidden,
            # The language model's input at image tokens is the vision tower's output: this supervises the tower.
            token_colour_logits=self.colour_head(output.hidden_states[0][inputs["input_ids"] == self.image_token_id]),
            binding_logits=self.binding_head(mention_hidden).reshape(-1, 2, self.position_bins),
            image_cell_logits=self.binding_head(image_hidden).reshape(-1, 2, self.position_bins),
            slot_logits=self.slot_head(sentence_hidden).reshape(-1, 2, 2, self.position_bins),
            mention_xy=self.mention_xy_head(mention_hidden),
            slot_offsets=self.offset_head(sentence_hidden),
            kind_logits=self.kind_head(sentence_hidden),
            stated_offsets=self.stated_head(sentence_hidden).squeeze(-1),
        )


def build_grounding_network(
    config: Qwen2_5_VLConfig,
    reward_token_id: int,
    *,
    verdict_layer: int | None = None,
    binding_layer: int | None = None,
    position_grid_size: int = 10,
    attn_implementation: str = "sdpa",
) -> GroundingNetwork:
    """Random-weight `Qwen2_5_VLModel` from `config` with a `PatchPositionEmbedding` for images of up to
    `position_grid_size` patches per side, and the two heads; every parameter trainable."""
    backbone = Qwen2_5_VLModel._from_config(config, attn_implementation=attn_implementation)
    vision = config.vision_config
    PatchPositionEmbedding(position_grid_size, vision.hidden_size, vision.spatial_merge_size).attach(backbone.visual)
    network = GroundingNetwork(backbone, reward_token_id, verdict_layer, binding_layer)
    network.requires_grad_(True)
    return network


def build_verification_network(
    *,
    text_hidden_size: int = 128,
    text_layers: int = 4,
    text_intermediate_size: int = 256,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    max_pixels: int = 140 * 140,
    verdict_layer: int | None = None,
    binding_layer: int | None = None,
    init_from: str | None = None,
) -> GroundingNetwork:
    """Stage A's network from plain numbers (a LightningCLI `class_path`), its processor as `network.processor`.

    text_* / vision_*: `tiny_backbone_config` sizes (the shipped backbone: 128 wide, 4 layers; vision 64, 2 blocks).
    max_pixels: the processor's pixel budget (140 x 140: 5 x 5 image tokens for the 128 px SpatialWorld images).
    verdict_layer / binding_layer: decoder layers the sentence and mention heads read (None: second-to-last, middle).
    init_from: a stage-A directory (`save_grounded_backbone`) whose backbone and heads replace the random start;
        heads it lacks (older phases saved fewer) keep their random start. The optimizer starts afresh.
    """
    config = tiny_backbone_config(
        text_hidden_size=text_hidden_size,
        text_layers=text_layers,
        text_intermediate_size=text_intermediate_size,
        vision_hidden_size=vision_hidden_size,
        vision_layers=vision_layers,
    )
    processor = build_spatialworld_processor(max_pixels=max_pixels)
    processor.tokenizer.add_tokens([REWARD_TOKEN], special_tokens=True)  # already an id of the tiny tokenizer
    reward_token_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    network = build_grounding_network(config, reward_token_id, verdict_layer=verdict_layer, binding_layer=binding_layer)
    if init_from is not None:
        if not (Path(init_from) / "config.json").is_file():
            raise FileNotFoundError(f"init_from {init_from} holds no stage-A backbone: config.json is missing")
        state = build_spatialscore(init_from, lora_rank=None).backbone.state_dict()  # position embedding included
        network.backbone.load_state_dict(state)
        load_grounding_heads(network, init_from)
    network.processor = processor
    return network


# --- saving ------------------------------------------------------------------------------------------------------
# The heads saved beside the stage-A backbone, in HEADS_FILE as "<head>.<parameter>"; checkpoints written before the
# later ones existed hold only the required three.
HEAD_NAMES = (
    "verdict_head",
    "match_head",
    "colour_head",
    "binding_head",
    "slot_head",
    "mention_xy_head",
    "offset_head",
    "kind_head",
    "stated_head",
)
REQUIRED_HEADS = ("verdict_head", "match_head", "colour_head")


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
    with atomic_directory(directory) as staging:
        backbone = network.backbone
        state = {k: v for k, v in backbone.state_dict().items() if "patch_position_embedding" not in k}
        backbone.save_pretrained(staging, state_dict=state, safe_serialization=True)
        processor.save_pretrained(staging)
        embedding = backbone.visual.patch_position_embedding
        save_position_embedding(embedding, staging / POSITION_EMBEDDING_FILE)
        heads = {f"{name}.{k}": v for name in HEAD_NAMES for k, v in getattr(network, name).state_dict().items()}
        save_file(
            {k: v.detach().contiguous() for k, v in heads.items()},
            staging / HEADS_FILE,
            metadata={"verdict_layer": str(network.verdict_layer), "binding_layer": str(network.binding_layer)},
        )
        if metrics is not None:
            (staging / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return directory


def read_grounding_heads(directory: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """The heads saved by `save_grounded_backbone` in `directory`: head name -> its state dict ("weight", "bias").
    Heads added after a checkpoint was written are absent from it."""
    path = Path(directory) / HEADS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no grounding heads: {HEADS_FILE} is missing")
    heads: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path)).items():
        name, parameter = key.split(".", 1)
        heads.setdefault(name, {})[parameter] = value
    return heads


def load_grounding_heads(network: GroundingNetwork, directory: str | os.PathLike) -> None:
    """Put the heads saved by `save_grounded_backbone` back on `network` (a binding head only where one was saved:
    checkpoints written before it existed have none)."""
    heads = read_grounding_heads(directory)
    for name in HEAD_NAMES:
        if name in heads or name in REQUIRED_HEADS:  # the others are absent from older checkpoints
            getattr(network, name).load_state_dict(heads.get(name, {}))
