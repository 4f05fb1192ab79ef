"""Network recipes for configs: builder functions that take plain numbers, so a LightningCLI YAML can name them with
`class_path` / `init_args` (jsonargparse calls a function whose return annotation is the expected class).

`build_tiny_spatialscore` is `build_spatialscore(tiny_backbone_config(...), ...)` with every choice flattened into
one signature: the tiny Qwen2.5-VL of the embedded default (random weights, built on CPU in well under a second).
A local pretrained directory (Qwen2.5-VL-7B and friends) needs no recipe: configs name
`reward_model.model.build_spatialscore` with `backbone: /path/to/dir` directly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reward_model.model import TEXT_LORA_TARGETS, SpatialScore, build_spatialscore, tiny_backbone_config
from reward_model.position_embedding import attach_pretrained_position_embedding
from reward_model.stage_a.model import HEADS_FILE, read_grounding_heads
from reward_model.tokenizer import build_spatialworld_processor

HEAD_INITS = ("random", "match")


def build_tiny_spatialscore(
    *,
    text_hidden_size: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    text_kv_heads: int = 2,
    text_intermediate_size: int = 128,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    vision_heads: int = 2,
    vision_intermediate_size: int = 128,
    max_pixels: int = 112 * 112,
    lora_rank: int | None = 4,
    lora_alpha: float = 8.0,
    lora_dropout: float = 0.0,
    lora_target_modules: list[str] | None = None,
    vision_lora_target_modules: list[str] | None = None,
    train_vision: bool = False,
    head_hidden_size: int = 32,
    min_std: float = 0.05,
    max_std: float = 10.0,
    initial_std: float = 1.0,
    seed: int = 0,
) -> SpatialScore:
    """A tiny SpatialScore with random backbone weights drawn from `seed` (independent of the global RNG).

    text_*: the language model (hidden size, decoder layers, query and key/value heads, MLP width).
    vision_*: the vision tower (hidden size, blocks, heads, MLP width); patches of 14 px merged 2 x 2.
    max_pixels: the processor's pixel budget; larger images are resized down to it (112 x 112 gives 16 image tokens).
    lora_rank: LoRA rank; None fine-tunes the whole language model (and the vision tower with `train_vision`).
    lora_alpha, lora_dropout: LoRA scaling numerator and dropout.
    lora_target_modules: Linear names inside each decoder layer; None: all of q/k/v/o and the MLP projections.
    vision_lora_target_modules: Linear names inside each vision block to LoRA; None keeps the vision tower frozen.
    head_hidden_size, min_std, max_std, initial_std: the (mean, std) head.
    seed: draws the backbone and head initialisation.
    """
    config = tiny_backbone_config(
        text_hidden_size=text_hidden_size,
        text_layers=text_layers,
        text_heads=text_heads,
        text_kv_heads=text_kv_heads,
        text_intermediate_size=text_intermediate_size,
        vision_hidden_size=vision_hidden_size,
        vision_layers=vision_layers,
        vision_heads=vision_heads,
        vision_intermediate_size=vision_intermediate_size,
    )
    processor = build_spatialworld_processor(
        patch_size=config.vision_config.patch_size,
        merge_size=config.vision_config.spatial_merge_size,
        temporal_patch_size=config.vision_config.temporal_patch_size,
        max_pixels=max_pixels,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_spatialscore(
            config,
            processor,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_target_modules=tuple(lora_target_modules or TEXT_LORA_TARGETS),
            vision_lora_target_modules=tuple(vision_lora_target_modules or ()),
            train_vision=train_vision,
            head_hidden_size=head_hidden_size,
            min_std=min_std,
            max_std=max_std,
            initial_std=initial_std,
            head_seed=seed,
        )


def build_pretrained_tiny_spatialscore(
    *,
    backbone_dir: str,
    lora_rank: int | None = 16,
    lora_alpha: float = 32.0,
    lora_dropout: float = 0.0,
    lora_target_modules: list[str] | None = None,
    vision_lora_target_modules: list[str] | None = None,
    head_hidden_size: int = 64,
    min_std: float = 0.05,
    max_std: float = 10.0,
    initial_std: float = 1.0,
    head_init: str = "random",
    head_init_scale: float = 1.0,
    min_pixels: int | None = None,
    seed: int = 0,
) -> SpatialScore:
    """The tiny SpatialScore on a stage-A backbone directory (`reward_model.stage_a.save_grounded_backbone`), with
    the patch position embedding saved beside it.

    backbone_dir: the stage-A directory (config.json, model.safetensors, processor files, position embedding).
    lora_rank: LoRA rank on the language model; None fine-tunes the whole language model (vision tower frozen).
    lora_alpha, lora_dropout, lora_target_modules: as `build_tiny_spatialscore`.
    vision_lora_target_modules: Linear names inside each vision block to LoRA as well (e.g. `VISION_LORA_TARGETS`);
        None keeps the stage-A vision tower frozen, as it saw only clean renders.
    head_hidden_size, min_std, max_std, initial_std: the (mean, std) head; seed draws its initialisation.
    head_init: "random" (the paper's fresh head) or "match": the head's mean starts equal to the stage-A image-text
        matching logit (`match_head` in the directory's grounding heads), which reads the same `<|reward|>` hidden
        state, so Bradley-Terry refines a score that already orders pairs instead of learning one from scratch
        (`RewardHead.init_mean_from_linear`; the std part keeps its random start).
    head_init_scale: "match" starts the mean at this multiple of the matching logit (same order of every pair).
        The matching logit's pair margins are large (~10), where the Gaussian Bradley-Terry loss is nearly flat and
        the std never learns which pairs are hard; a smaller scale puts the margins where the loss still acts.
    min_pixels: the processor's floor (`build_spatialscore`); 19,600 = 140 x 140 sends every image, the tiny
        generator's 32 px samples included, to the 10 x 10 patch grid of the 128 px SpatialWorld images.
    """
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {list(HEAD_INITS)}, got {head_init!r}")
    if not head_init_scale > 0:
        raise ValueError(f"head_init_scale must be positive, got {head_init_scale}")
    model = build_spatialscore(
        backbone_dir,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_target_modules=tuple(lora_target_modules or TEXT_LORA_TARGETS),
        vision_lora_target_modules=tuple(vision_lora_target_modules or ()),
        head_hidden_size=head_hidden_size,
        min_std=min_std,
        max_std=max_std,
        initial_std=initial_std,
        head_seed=seed,
        min_pixels=min_pixels,
    )
    visual = model.backbone.get_base_model().visual if lora_rank is not None else model.backbone.visual
    if not hasattr(visual, "patch_position_embedding"):  # older builders do not attach it themselves
        attach_pretrained_position_embedding(visual, backbone_dir)
    if head_init == "match":
        weight, bias = _matching_head(Path(backbone_dir))
        model.head.init_mean_from_linear(head_init_scale * weight, head_init_scale * bias)
    return model


def _matching_head(directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The stage-A matching head's (weight [1, H], bias [1]) from `directory`'s grounding heads file."""
    head = read_grounding_heads(directory).get("match_head", {})
    if set(head) != {"weight", "bias"}:
        raise ValueError(f"{directory / HEADS_FILE} has no match_head: it is not a stage-A grounding heads file")
    return head["weight"], head["bias"]
