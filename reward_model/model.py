"""SpatialScore network builders: a Qwen2.5-VL backbone, a `<|reward|>` token and a Gaussian (mean, std) head.

Implements the reward model of "Enhancing Spatial Understanding in Image Generation via Reward Modeling"
(arXiv 2602.24233): the chat text holds the image, then the prompt, then a special reward token as the last
non-padding token; an MLP head on that token's final hidden state predicts the mean and the standard deviation of
a Gaussian reward. The backbone is `Qwen2_5_VLModel` (Qwen2.5-VL without its LM head: no vocabulary logits), built
either from a `Qwen2_5_VLConfig` with random weights (the tiny embedded default, see `tiny_backbone_config`) or
from a local pretrained directory (`Qwen2_5_VLModel.from_pretrained(path)`, e.g. Qwen2.5-VL-7B-Instruct); both go
through `build_spatialscore`.

Training choices, all arguments of `build_spatialscore`:
- LoRA (peft) on the language model's projections with rank, alpha, dropout and target modules as arguments; the
  vision tower is frozen unless `vision_lora_target_modules` names modules to LoRA there. Of the embedding matrix
  only the reward token's row trains (peft's `trainable_token_indices`, a delta on that row alone).
- `lora_rank=None`: full fine-tune of the language model (and of the vision tower with `train_vision=True`).
- The head always runs in fp32 (autocast off), whatever the backbone's dtype.
- `quantization="4bit"` (NF4, double quantization) or `"8bit"` (LLM.int8) loads a pretrained directory's language
  model through bitsandbytes for QLoRA on one small GPU; the vision tower stays in `dtype` (it is 0.67B of 8.3B
  parameters at 7B and frozen by default). LoRA is required then.
- A backbone directory written by stage A (`reward_model.stage_a.model.save_grounded_backbone`) may hold a learned
  patch position embedding (`patch_position_embedding.safetensors`); it is attached to the vision tower and trains
  exactly when the vision tower's own weights do (full fine-tune with `train_vision`; frozen under LoRA).

`qwen2_5_vl_7b_config` gives the published Qwen2.5-VL-7B-Instruct architecture (for meta-device checks and the GPU
benchmark without weights).

Simplified: no prompt truncation (a batch whose reward token is not the last non-padding token is refused with an
error instead).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import BatchFeature, BitsAndBytesConfig, Qwen2_5_VLConfig, Qwen2_5_VLModel

from reward_model.position_embedding import attach_pretrained_position_embedding
from reward_model.tokenizer import (
    IMAGE_TOKEN,
    PAD_TOKEN,
    REWARD_TOKEN,
    SPECIAL_TOKENS,
    VIDEO_TOKEN,
    VISION_END_TOKEN,
    VISION_START_TOKEN,
    SpatialScoreProcessor,
    build_spatialworld_processor,
    load_processor,
)
from shared.dtypes import check_dtype_name, torch_dtype

TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_LORA_TARGETS = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")  # an option; the default is frozen
log = logging.getLogger(__name__)

QUANTIZATIONS = ("4bit", "8bit")
# Special-token ids of Qwen2.5-VL's own tokenizer (its config.json) and of the SpatialWorld tokenizer (SPECIAL_TOKENS
# in order), for configs that must match one or the other.
QWEN_TOKEN_IDS = {
    PAD_TOKEN: 151643,
    "<|im_end|>": 151645,
    VISION_START_TOKEN: 151652,
    VISION_END_TOKEN: 151653,
    IMAGE_TOKEN: 151655,
    VIDEO_TOKEN: 151656,
}
SPATIALWORLD_TOKEN_IDS = {token: index for index, token in enumerate(SPECIAL_TOKENS)}


def tiny_backbone_config(
    *,
    vocab_size: int = 256,
    text_hidden_size: int = 128,
    text_layers: int = 4,
    text_heads: int = 4,
    text_kv_heads: int = 2,
    text_intermediate_size: int = 256,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    vision_heads: int = 2,
    vision_intermediate_size: int = 128,
    patch_size: int = 14,
    spatial_merge_size: int = 2,
    temporal_patch_size: int = 2,
    window_size: int = 112,
    rope_theta: float = 10000.0,
    mrope_section: tuple[int, int, int] | None = None,
    max_position_embeddings: int = 4096,
) -> Qwen2_5_VLConfig:
    """A small `Qwen2_5_VLConfig` whose special-token ids are those of `build_spatialworld_tokenizer`.

    `mrope_section` splits the rotary frequencies of a text head (head_dim / 2 of them) between the temporal,
    height and width positions; None splits them 1/4, 3/8, 3/8 as Qwen2.5-VL-7B does ([16, 24, 24] of 64). The
    vision tower attends within windows of `window_size` pixels except in its last block (full attention).
    """
    if text_hidden_size % text_heads or text_heads % text_kv_heads:
        raise ValueError(
            f"text_hidden_size ({text_hidden_size}) must be divisible by text_heads ({text_heads}) and text_heads by "
            f"text_kv_heads ({text_kv_heads})"
        )
    if vision_hidden_size % vision_heads:
        raise ValueError(
            f"vision_hidden_size ({vision_hidden_size}) must be divisible by vision_heads ({vision_heads})"
        )
    half_head_dim = text_hidden_size // text_heads // 2
    if mrope_section is None:
        temporal = half_head_dim // 4
        height = (half_head_dim - temporal) // 2
        mrope_section = (temporal, height, half_head_dim - temporal - height)
    if len(mrope_section) != 3 or sum(mrope_section) != half_head_dim:
        raise ValueError(
            f"mrope_section {list(mrope_section)} must have 3 entries summing to head_dim / 2 = {half_head_dim}"
        )
    ids = SPATIALWORLD_TOKEN_IDS
    if vocab_size < len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size ({vocab_size}) must hold at least the {len(SPECIAL_TOKENS)} special tokens")
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": text_hidden_size,
            "intermediate_size": text_intermediate_size,
            "num_hidden_layers": text_layers,
            "num_attention_heads": text_heads,
            "num_key_value_heads": text_kv_heads,
            "max_position_embeddings": max_position_embeddings,
            "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": list(mrope_section)},
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids[PAD_TOKEN],
        },
        vision_config={
            "depth": vision_layers,
            "hidden_size": vision_hidden_size,
            "intermediate_size": vision_intermediate_size,
            "num_heads": vision_heads,
            "patch_size": patch_size,
            "spatial_merge_size": spatial_merge_size,
            "temporal_patch_size": temporal_patch_size,
            "window_size": window_size,
            "out_hidden_size": text_hidden_size,
            "fullatt_block_indexes": [vision_layers - 1],
        },
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids[VIDEO_TOKEN],
        vision_start_token_id=ids[VISION_START_TOKEN],
        vision_end_token_id=ids[VISION_END_TOKEN],
    )


def qwen2_5_vl_7b_config(*, token_ids: dict[str, int] | None = None) -> Qwen2_5_VLConfig:
    """The architecture of Qwen2.5-VL-7B-Instruct, from its published config.json: text 28 layers of hidden 3584, 28
    query / 4 key-value heads, MLP 18944, vocabulary 152,064 (rows; the tokenizer uses 151,665), rope theta 1e6 with
    mrope_section [16, 24, 24]; vision 32 blocks of hidden 1280, 16 heads, MLP 3420, 14 px patches merged 2 x 2 into
    3584-wide tokens, windows of 112 px except full attention in blocks 7, 15, 23, 31.

    token_ids: the special-token ids the config names (`QWEN_TOKEN_IDS` by default); `SPATIALWORLD_TOKEN_IDS` pairs
    the full-size architecture with the offline SpatialWorld processor (no Qwen tokenizer files needed), which is
    what the meta-device test and the GPU benchmark do. Sizes are the same either way.
    """
    ids = QWEN_TOKEN_IDS if token_ids is None else token_ids
    missing = sorted(set(QWEN_TOKEN_IDS) - set(ids))
    if missing:
        raise ValueError(f"token_ids lacks the ids of {missing}")
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "hidden_act": "silu",
            "max_position_embeddings": 128000,
            "max_window_layers": 28,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            "sliding_window": 32768,
            "use_sliding_window": False,
            "tie_word_embeddings": False,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "bos_token_id": ids[PAD_TOKEN],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids[PAD_TOKEN],
        },
        vision_config={
            "depth": 32,
            "hidden_act": "silu",
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "in_channels": 3,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
            "initializer_range": 0.02,
        },
        image_token_id=ids[IMAGE_TOKEN],
        video_token_id=ids[VIDEO_TOKEN],
        vision_start_token_id=ids[VISION_START_TOKEN],
        vision_end_token_id=ids[VISION_END_TOKEN],
        tie_word_embeddings=False,
    )


def reward_text(prompt: str, *, system_prompt: str | None = None) -> str:
    """Qwen2.5-VL chat text for scoring (prompt, image): the image, then the prompt in the user turn, then the
    reward token alone in the assistant turn, so that it is the last token and attends to everything before it."""
    if "<|" in prompt:
        raise ValueError(f"prompt must not contain special-token markup '<|': {prompt[:80]!r}")
    system = f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if system_prompt is not None else ""
    return (
        f"{system}<|im_start|>user\n{VISION_START_TOKEN}{IMAGE_TOKEN}{VISION_END_TOKEN}{prompt}<|im_end|>\n"
        f"<|im_start|>assistant\n{REWARD_TOKEN}"
    )


def truncate_prompt(tokenizer, prompt: str, max_prompt_tokens: int) -> tuple[str, bool]:
    """The prompt cut after its first `max_prompt_tokens` tokens (at the end of that token in the text, through the
    tokenizer's offsets), and whether it was cut. The reward token comes after the prompt in `reward_text`, so
    truncating the prompt, never the encoded sequence, keeps it as the last token."""
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be positive, got {max_prompt_tokens}")
    encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if len(offsets) <= max_prompt_tokens:
        return prompt, False
    return prompt[: offsets[max_prompt_tokens - 1][1]], True


def encode(
    processor: SpatialScoreProcessor,
    prompts: Sequence[str],
    images: Sequence[Image.Image],
    *,
    system_prompt: str | None = None,
    padding_side: str = "right",
    max_prompt_tokens: int | None = None,
) -> BatchFeature:
    """Processor inputs for one (prompt, image) pair per row: `input_ids, attention_mask, mm_token_type_ids` [B, T],
    `pixel_values` [sum of patches, C * t * p * p], `image_grid_thw` [B, 3]. Images are converted to RGB.
    max_prompt_tokens: prompts longer than this are cut (`truncate_prompt`; the reward token stays last), each cut
    logged as a warning with the running count (`truncated_prompt_count()`); None: no limit."""
    if len(prompts) != len(images):
        raise ValueError(f"got {len(prompts)} prompts but {len(images)} images: one image per prompt")
    if not prompts:
        raise ValueError("nothing to encode: prompts and images are empty")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if max_prompt_tokens is not None:
        prompts = [_truncated(processor.tokenizer, prompt, max_prompt_tokens) for prompt in prompts]
    texts = [reward_text(prompt, system_prompt=system_prompt) for prompt in prompts]
    return processor(
        images=[image.convert("RGB") for image in images],
        text=texts,
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
    )


_TRUNCATED = [0]  # prompts cut by `encode` in this process


def truncated_prompt_count() -> int:
    """How many prompts `encode` has truncated in this process (data-loader workers count their own)."""
    return _TRUNCATED[0]


def _truncated(tokenizer, prompt: str, max_prompt_tokens: int) -> str:
    text, cut = truncate_prompt(tokenizer, prompt, max_prompt_tokens)
    if cut:
        _TRUNCATED[0] += 1
        log.warning(
            "prompt truncated to %d tokens, keeping the reward token (%d truncated so far): %.60s...",
            max_prompt_tokens,
            _TRUNCATED[0],
            prompt,
        )
    return text


def reward_token_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, reward_token_id: int) -> torch.Tensor:
    """Index of the last non-padding token of each row, checked to be the reward token; works for left and right
    padding alike.  input_ids, attention_mask: [B, T] -> [B]"""
    mask = attention_mask.bool()
    if not mask.any(dim=1).all():
        raise ValueError("a sequence in the batch is all padding (attention_mask is zero everywhere)")
    steps = torch.arange(input_ids.shape[1], device=input_ids.device)  # [T]
    positions = torch.where(mask, steps, -1).amax(dim=1)  # [B]
    last_tokens = input_ids.gather(1, positions[:, None]).squeeze(1)  # [B]
    wrong = (last_tokens != reward_token_id).nonzero().flatten().tolist()
    if wrong:
        raise ValueError(
            f"the last non-padding token of rows {wrong} is not {REWARD_TOKEN} (id {reward_token_id}): build the "
            "texts with reward_model.model.reward_text and do not truncate them"
        )
    return positions


class RewardHead(nn.Module):
    """fp32 MLP from a hidden state to a Gaussian reward: mean, and std = clamp(softplus(s) + min_std, max_std)."""

    def __init__(
        self, hidden_size: int, head_hidden_size: int, min_std: float, max_std: float, initial_std: float
    ) -> None:
        super().__init__()
        if not 0 < min_std < initial_std < max_std:
            raise ValueError(f"need 0 < min_std < initial_std < max_std, got {min_std}, {initial_std}, {max_std}")
        self.min_std, self.max_std = min_std, max_std
        self.layers = nn.Sequential(
            nn.Linear(hidden_size, head_hidden_size), nn.SiLU(), nn.Linear(head_hidden_size, 2)
        ).float()
        with torch.no_grad():  # start every std near initial_std: softplus(b) + min_std = initial_std
            self.layers[-1].bias[1] = math.log(math.expm1(initial_std - min_std))

    @torch.no_grad()
    def init_mean_from_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Make the mean output equal `hidden @ weight.T + bias` exactly (weight: [1, H] or [H], bias: [1] or []),
        keeping the std's other weights: two hidden units carry +z and -z, z = that linear map, and since
        silu(z) - silu(-z) = z sigmoid(z) + z (1 - sigmoid(z)) = z, the mean reads them as +1 and -1 and the other
        units with weight 0 (they still get gradients through the mean's row, so they learn from the first step).
        Used to start stage B from a stage-A matching head read at the same token."""
        first, _, last = self.layers
        weight, bias = weight.reshape(-1).float(), bias.reshape(()).float()
        if weight.numel() != first.in_features:
            raise ValueError(f"the linear map reads {weight.numel()} features; the head reads {first.in_features}")
        if first.out_features < 2:
            raise ValueError(f"a mean from a linear map needs head_hidden_size >= 2, got {first.out_features}")
        first.weight[:2] = torch.stack([weight, -weight])
        first.bias[:2] = torch.stack([bias, -bias])
        last.weight[0] = 0.0
        last.weight[0, :2] = torch.tensor([1.0, -1.0])
        last.bias[0] = 0.0
        last.weight[1, :2] = 0.0  # the std does not read the two repurposed units

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden: [B, H] (any dtype) -> mean [B], std [B] in fp32.

        The weights are read as fp32 too: FSDP's mixed precision hands every parameter to the forward in bf16 (its
        fp32 master copy is kept), and the head must not compute in it."""
        first, activation, last = self.layers
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            hidden = activation(F.linear(hidden.float(), first.weight.float(), first.bias.float()))  # [B, head]
            mean, std_logit = F.linear(hidden, last.weight.float(), last.bias.float()).unbind(-1)  # [B], [B]
            std = (F.softplus(std_logit) + self.min_std).clamp(max=self.max_std)
        return mean, std


class SpatialScore(nn.Module):
    """Backbone (plain or peft-wrapped `Qwen2_5_VLModel`) + `RewardHead` on the reward token.

    `forward(**encode(...)) -> (mean [B], std [B])`. The processor rides along (not a submodule) so that callers
    encode inputs exactly as the model expects.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: RewardHead,
        processor: SpatialScoreProcessor,
        reward_token_id: int,
        max_prompt_tokens: int | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.processor = processor
        self.reward_token_id = reward_token_id
        self.image_token_id = processor.image_token_id
        self.max_prompt_tokens = max_prompt_tokens  # longer prompts are truncated by `encode` (None: no limit)

    def encode(self, prompts: Sequence[str], images: Sequence[Image.Image], **kwargs) -> BatchFeature:
        """`encode(self.processor, prompts, images, max_prompt_tokens=self.max_prompt_tokens, **kwargs)`."""
        return encode(self.processor, prompts, images, **({"max_prompt_tokens": self.max_prompt_tokens} | kwargs))

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        attention_mask: torch.Tensor,  # [B, T]
        pixel_values: torch.Tensor,  # [sum of patches, C * t * p * p]
        image_grid_thw: torch.Tensor,  # [B, 3]
        mm_token_type_ids: torch.Tensor | None = None,  # [B, T]: 1 on image tokens; derived when absent
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positions = reward_token_positions(input_ids, attention_mask, self.reward_token_id)  # [B]
        if mm_token_type_ids is None:  # without it Qwen2.5-VL silently falls back to 1-D positions
            mm_token_type_ids = (input_ids == self.image_token_id).long()
        output = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            use_cache=False,
        )
        hidden = output.last_hidden_state  # [B, T, H]
        reward_hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]  # [B, H]
        return self.head(reward_hidden)


def compile_blocks(network: SpatialScore, *, vision: bool = True, **options) -> int:
    """Regional torch.compile of the backbone's repeated blocks, in place: each language-model decoder layer and
    (vision=True) each vision-tower block, the rest eager; blocks of one class share their graphs. `options` go to
    torch.compile (default dynamic=True: sequence lengths and patch counts change from batch to batch).
    -> blocks compiled."""
    backbone = network.backbone
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone  # under peft's wrapper
    blocks = [*base.language_model.layers, *(base.visual.blocks if vision else [])]
    for block in blocks:
        block.compile(**({"dynamic": True} | options))
    return len(blocks)


def _check_processor_matches(processor: SpatialScoreProcessor, config: Qwen2_5_VLConfig) -> None:
    tokenizer, image_processor, vision = processor.tokenizer, processor.image_processor, config.vision_config
    for token, config_id in (
        (IMAGE_TOKEN, config.image_token_id),
        (VISION_START_TOKEN, config.vision_start_token_id),
        (VISION_END_TOKEN, config.vision_end_token_id),
    ):
        if tokenizer.convert_tokens_to_ids(token) != config_id:
            raise ValueError(
                f"tokenizer id of {token} ({tokenizer.convert_tokens_to_ids(token)}) differs from the backbone "
                f"config's ({config_id}): processor and backbone do not belong together"
            )
    for name, processor_value, config_value in (
        ("patch_size", image_processor.patch_size, vision.patch_size),
        ("merge_size / spatial_merge_size", image_processor.merge_size, vision.spatial_merge_size),
        ("temporal_patch_size", image_processor.temporal_patch_size, vision.temporal_patch_size),
    ):
        if processor_value != config_value:
            raise ValueError(f"image processor {name} is {processor_value} but the vision config's is {config_value}")


def quantization_config(quantization: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """bitsandbytes settings for `quantization`: "4bit" is QLoRA's NF4 with double quantization, computing in
    `compute_dtype`; "8bit" is LLM.int8. The vision tower (`visual`) stays unquantized."""
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=["visual"],
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["visual"])
    raise ValueError(f"quantization must be None or one of {list(QUANTIZATIONS)}, got {quantization!r}")


def _load_backbone(
    path: Path, dtype: torch.dtype, attn_implementation: str, quantization: str | None = None
) -> Qwen2_5_VLModel:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no pretrained backbone: config.json is missing")
    quantization_kwargs = (
        {} if quantization is None else {"quantization_config": quantization_config(quantization, dtype)}
    )
    backbone, loading_info = Qwen2_5_VLModel.from_pretrained(
        str(path), dtype=dtype, attn_implementation=attn_implementation, output_loading_info=True, **quantization_kwargs
    )
    if loading_info["missing_keys"]:
        missing = sorted(loading_info["missing_keys"])
        raise ValueError(f"checkpoint {path} lacks {len(missing)} backbone weights, e.g. {missing[:5]}")
    return backbone


def set_pixel_range(processor: SpatialScoreProcessor, min_pixels: int | None, max_pixels: int | None) -> None:
    """Resize every image into [min_pixels, max_pixels] (aspect ratio kept, sides multiples of patch * merge size);
    None keeps the processor's own bound."""
    image_processor = processor.image_processor
    token_pixels = (image_processor.patch_size * image_processor.merge_size) ** 2
    low = image_processor.size["shortest_edge"] if min_pixels is None else min_pixels
    high = image_processor.size["longest_edge"] if max_pixels is None else max_pixels
    if low < token_pixels:
        raise ValueError(f"min_pixels ({low}) must be at least one merged token ({token_pixels} pixels)")
    if high < low:
        raise ValueError(f"max_pixels ({high}) must be at least min_pixels ({low})")
    image_processor.size = dataclasses.replace(image_processor.size, shortest_edge=low, longest_edge=high)


def _add_reward_token(processor: SpatialScoreProcessor, backbone: Qwen2_5_VLModel) -> int:
    """Id of `<|reward|>`, added to the tokenizer (and the embedding matrix grown) when the checkpoint lacks it."""
    tokenizer = processor.tokenizer
    if REWARD_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([REWARD_TOKEN], special_tokens=True)
    reward_token_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    if reward_token_id >= backbone.get_input_embeddings().num_embeddings:
        # Qwen2.5-VL pads its matrix to 152,064 rows, so at full size the new id usually fits without this.
        backbone.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    return reward_token_id


def _lora_pattern(text_targets: Sequence[str], vision_targets: Sequence[str]) -> str:
    """One regex (peft full-matches it against module names) so that the text targets cannot also catch the vision
    tower's identically named MLP projections."""

    def alternatives(names: Sequence[str]) -> str:
        return "|".join(re.escape(name) for name in names)

    pattern = rf"(?:.*\.)?language_model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{alternatives(text_targets)})"
    if vision_targets:
        pattern += rf"|(?:.*\.)?visual\.blocks\.\d+\.(?:attn|mlp)\.(?:{alternatives(vision_targets)})"
    return pattern


def _check_targets(module: nn.Module, targets: Sequence[str], where: str) -> None:
    available = {name.rsplit(".", 1)[-1] for name, child in module.named_modules() if isinstance(child, nn.Linear)}
    unknown = sorted(set(targets) - available)
    if unknown:
        raise ValueError(f"LoRA targets {unknown} are not Linear layers of the {where}; available: {sorted(available)}")


def build_spatialscore(
    backbone: str | Path | Qwen2_5_VLConfig,
    processor: SpatialScoreProcessor | str | Path | None = None,
    *,
    lora_rank: int | None = 16,
    lora_alpha: float = 32.0,
    lora_dropout: float = 0.05,
    lora_target_modules: Sequence[str] = TEXT_LORA_TARGETS,
    vision_lora_target_modules: Sequence[str] = (),
    train_vision: bool = False,
    head_hidden_size: int = 256,
    min_std: float = 0.05,
    max_std: float = 10.0,
    initial_std: float = 1.0,
    head_seed: int = 0,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    quantization: Literal["4bit", "8bit"] | None = None,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    max_prompt_tokens: int | None = None,
) -> SpatialScore:
    """The SpatialScore reward model.

    backbone: a local pretrained directory (`Qwen2_5_VLModel.from_pretrained`; a Qwen2.5-VL checkpoint with an LM
        head loads too, the head is dropped) or a `Qwen2_5_VLConfig` for random weights (`tiny_backbone_config`).
    processor: a processor or its directory; None takes it from the backbone directory, or for a config builds
        the SpatialWorld one with the config's patch and merge sizes.
    lora_rank: LoRA rank; None fine-tunes every language-model weight instead (and the vision tower with
        `train_vision`). With LoRA only the adapters, the reward token's embedding row and the head train.
    lora_target_modules / vision_lora_target_modules: Linear names inside each text decoder layer / vision block;
        no vision targets keeps the vision tower frozen.
    head_hidden_size, min_std, max_std, initial_std: the head (std starts near initial_std, stays in
        [min_std, max_std]); head_seed makes its initialisation independent of the global RNG.
    dtype: backbone dtype ("float32", "bfloat16", "float16"); the head is always fp32. With quantization it is the
        compute dtype and that of the unquantized parts (which peft's k-bit preparation then keeps in fp32).
    attn_implementation: "sdpa", "eager" or "flash_attention_2".
    gradient_checkpointing: recompute activations in the backward pass (non-reentrant), for long image sequences.
    quantization: None, "4bit" (NF4, QLoRA) or "8bit": load a pretrained directory's language model through
        bitsandbytes; needs LoRA. The model is prepared with peft's `prepare_model_for_kbit_training`.
    max_pixels: the processor's pixel budget (images above it are resized down, aspect kept); None keeps the
        processor's own (a Qwen2.5-VL checkpoint's is 12,845,056; the 7B config uses 200,704 = 256 image tokens).
    min_pixels: the processor's floor (smaller images are resized up, aspect kept); None keeps the processor's own
        (3,136 = 4 tokens for Qwen2.5-VL). A reward model trained on one image size should see every image at it: a
        generator's small samples then reach the token grid the head was trained on, not a coarser one.
    max_prompt_tokens: prompts longer than this many tokens are truncated (the reward token stays last) with a
        counted warning; None: no limit.

    A backbone directory with a stage-A patch position embedding (`patch_position_embedding.safetensors`) gets it
    attached to `visual`; it is frozen unless the vision tower trains (`train_vision`).
    """
    check_dtype_name(dtype)
    if lora_rank is not None and lora_rank < 1:
        raise ValueError(f"lora_rank must be a positive integer or None (full fine-tune), got {lora_rank}")
    if lora_rank is None and vision_lora_target_modules:
        raise ValueError("vision_lora_target_modules needs LoRA (lora_rank); for full fine-tune use train_vision")
    if lora_rank is not None and train_vision:
        raise ValueError(
            "train_vision is for full fine-tune (lora_rank=None); with LoRA use vision_lora_target_modules"
        )
    if quantization is not None:
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be None or one of {list(QUANTIZATIONS)}, got {quantization!r}")
        if lora_rank is None:
            raise ValueError(
                f"quantization={quantization!r} needs LoRA (lora_rank): quantized weights cannot be fine-tuned"
            )
        if isinstance(backbone, Qwen2_5_VLConfig):
            raise ValueError(
                f"quantization={quantization!r} loads a pretrained directory: save the config's model with "
                "save_pretrained and pass that directory as backbone"
            )

    if isinstance(backbone, Qwen2_5_VLConfig):
        weights_dtype = torch_dtype(dtype)
        model = Qwen2_5_VLModel._from_config(backbone, dtype=weights_dtype, attn_implementation=attn_implementation)
        if processor is None:
            processor = build_spatialworld_processor(
                patch_size=backbone.vision_config.patch_size,
                merge_size=backbone.vision_config.spatial_merge_size,
                temporal_patch_size=backbone.vision_config.temporal_patch_size,
            )
    else:
        model = _load_backbone(Path(backbone), torch_dtype(dtype), attn_implementation, quantization)
        attach_pretrained_position_embedding(model.visual, backbone)
        processor = Path(backbone) if processor is None else processor
    if not isinstance(processor, SpatialScoreProcessor):
        processor = load_processor(processor)
    if max_pixels is not None or min_pixels is not None:
        set_pixel_range(processor, min_pixels, max_pixels)
    _check_processor_matches(processor, model.config)
    reward_token_id = _add_reward_token(processor, model)

    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        # Freezes the base, keeps the unquantized weights in fp32 and turns on gradient checkpointing when asked.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_rank is None:
        model.requires_grad_(True)
        model.visual.requires_grad_(train_vision)
    else:
        from peft import LoraConfig, get_peft_model  # peft is only needed for LoRA

        _check_targets(model.language_model.layers, lora_target_modules, "language model")
        _check_targets(model.visual.blocks, vision_lora_target_modules, "vision tower")
        lora_config = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=_lora_pattern(lora_target_modules, vision_lora_target_modules),
            trainable_token_indices={"embed_tokens": [reward_token_id]},
        )
        model = get_peft_model(model, lora_config)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(head_seed)
        head = RewardHead(model.config.text_config.hidden_size, head_hidden_size, min_std, max_std, initial_std)
    return SpatialScore(model, head, processor, reward_token_id, max_prompt_tokens)
