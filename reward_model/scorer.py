"""`SpatialScorer`: score (prompt, image) pairs with an exported reward checkpoint dir (see `reward_model.export`).

    scorer = SpatialScorer.from_pretrained("runs/reward/tiny/export")
    mean, std = scorer.score(prompts=["a red circle left of a blue square"], images=["sample.png"])

The network is loaded once and kept in eval mode; `score` runs under `torch.no_grad` in batches of prompts sorted by
length (so a batch pads little) and returns the results in input order. With `max_batch_tokens` the batches are
length buckets under a token budget instead of a fixed count: rows are added (shortest first) while rows x the
longest row's length stays within the budget (and the count within `batch_size`), so short rows go through in
larger batches and long ones in smaller, the padded tokens per forward roughly constant. `compile=True` compiles
the backbone's blocks (`reward_model.model.compile_blocks`) for long scoring runs on a GPU.

Images may be PIL images (RGBA composited on white, greyscale and palette images converted to RGB), paths, uint8
tensors or arrays [3, H, W] or [H, W, 3] (channels-first when both readings fit), or float tensors in [0, 1] of
those shapes.

The scorer also satisfies rl_policy's keyword-only `Reward` protocol: `scorer(prompts=..., images=...,
metadata=None)` returns the means [N] as the reward; the std is what `score` adds.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from reward_model.export import (
    ADAPTER_DIR,
    BACKBONE_DIR,
    CHECKPOINT_FORMAT,
    CONFIG_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    PROCESSOR_DIR,
    REWARD_ROW_KEY,
    is_peft_model,
)
from reward_model.model import (
    RewardHead,
    SpatialScore,
    _add_reward_token,
    _check_processor_matches,
    _load_backbone,
    compile_blocks,
    encode,
    truncate_prompt,
)
from reward_model.position_embedding import POSITION_EMBEDDING_FILE, attach_pretrained_position_embedding
from reward_model.tokenizer import load_processor
from shared.dtypes import check_dtype_name, torch_dtype

ImageInput = Image.Image | str | os.PathLike | torch.Tensor | np.ndarray


def read_checkpoint_config(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """config.json of a reward checkpoint dir, after checking that every file it names is there; one
    `FileNotFoundError` naming everything that is missing otherwise."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"reward checkpoint dir {directory} does not exist: `python -m reward_model fit` writes one to "
            "<default_root_dir>/export (`make train-reward` writes the embedded default's, runs/reward/tiny/export)"
        )
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a reward checkpoint: {CONFIG_FILE} is missing (write one with "
            "`python -m reward_model export` or `reward_model.export.export_checkpoint`)"
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{directory} is not a reward checkpoint: {config_path} lacks format {CHECKPOINT_FORMAT!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path} has format_version {config.get('format_version')}; this code reads {FORMAT_VERSION}"
        )
    required = [
        f"{PROCESSOR_DIR}/tokenizer_config.json",
        f"{PROCESSOR_DIR}/processor_config.json|{PROCESSOR_DIR}/preprocessor_config.json",
        HEAD_FILE,
    ]
    if config["lora"] is not None:
        required += [f"{ADAPTER_DIR}/adapter_config.json", f"{ADAPTER_DIR}/adapter_model.safetensors"]
    if config["backbone"]["source"] == "embedded":
        required += [f"{BACKBONE_DIR}/config.json", f"{BACKBONE_DIR}/model.safetensors"]
    if config["backbone"].get("patch_position_embedding") is not None:
        required.append(POSITION_EMBEDDING_FILE)
    missing = [name for name in required if not any((directory / option).is_file() for option in name.split("|"))]
    if missing:
        raise FileNotFoundError(f"{directory} is not a complete reward checkpoint: missing {', '.join(missing)}")
    return config


def load_network(
    checkpoint_dir: str | os.PathLike,
    *,
    dtype: str | None = None,
    backbone_path: str | os.PathLike | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[SpatialScore, dict[str, Any]]:
    """The `SpatialScore` of a reward checkpoint dir (eval mode, no gradients) and its config.

    dtype: backbone dtype ("float32", "bfloat16", "float16"); None: the one it was exported in. The head stays fp32.
        A quantized (QLoRA) backbone is reloaded quantized as it was trained (bitsandbytes), with this compute dtype.
    backbone_path: where the pretrained backbone lives on this machine, when it is not where training found it.
    """
    directory = Path(checkpoint_dir)
    config = read_checkpoint_config(directory)
    dtype = dtype or config["backbone"]["dtype"]
    check_dtype_name(dtype)
    processor = load_processor(directory / PROCESSOR_DIR)
    reference = config["backbone"]
    if reference["source"] == "embedded":
        source = directory / reference["path"]
    else:
        source = Path(backbone_path if backbone_path is not None else reference["path"])
        if not (source / "config.json").is_file():
            raise FileNotFoundError(
                f"the pretrained backbone of {directory} is not at {source} (config.json missing): pass "
                "backbone_path= where it lives on this machine"
            )
    quantization = reference.get("quantization")
    backbone = _load_backbone(source, torch_dtype(dtype), attn_implementation, quantization)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        # as in training: the unquantized weights in fp32
        backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
    if reference.get("patch_position_embedding") is not None:  # the exported one, not the backbone dir's
        attach_pretrained_position_embedding(backbone.visual, directory)
    _check_processor_matches(processor, backbone.config)
    reward_token_id = _add_reward_token(processor, backbone)
    if reward_token_id != config["reward_token_id"]:
        raise ValueError(
            f"{directory}: the processor gives {config['reward_token']} id {reward_token_id}, config.json says "
            f"{config['reward_token_id']}"
        )
    if config["lora"] is not None:
        from peft import PeftModel  # peft is only needed for LoRA checkpoints

        backbone = PeftModel.from_pretrained(backbone, str(directory / ADAPTER_DIR), is_trainable=False)

    head_config = config["head"]
    head_weights = load_file(str(directory / HEAD_FILE))
    reward_row = head_weights.pop(REWARD_ROW_KEY)  # [H]
    min_std, max_std = head_config["min_std"], head_config["max_std"]
    head = RewardHead(
        head_config["input_size"], head_config["hidden_size"], min_std, max_std, math.sqrt(min_std * max_std)
    )
    head.load_state_dict(head_weights, strict=True)

    with torch.no_grad():  # the saved row is the one the network was trained and exported with
        embeddings = backbone.get_input_embeddings()
        if is_peft_model(backbone):
            delta = embeddings.token_adapter.trainable_tokens_delta["default"]  # [1, H]
            delta.copy_(reward_row[None].to(delta))
        else:
            embeddings.weight[reward_token_id] = reward_row.to(embeddings.weight)
    max_prompt_tokens = config["preprocessing"].get("max_prompt_tokens")  # absent in older checkpoints
    network = SpatialScore(backbone, head, processor, reward_token_id, max_prompt_tokens).eval()
    network.requires_grad_(False)
    return network, config


def to_pil(image: ImageInput) -> Image.Image:
    """An RGB PIL image from a PIL image, a path, or a tensor/array [3, H, W] / [H, W, 3] (uint8, or float in
    [0, 1]). Transparent pixels are composited on white."""
    if isinstance(image, str | os.PathLike):
        try:
            with Image.open(image) as handle:
                image = handle.copy()
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"cannot read image {image}: {error}") from error
    elif isinstance(image, torch.Tensor | np.ndarray):
        image = _array_to_pil(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"an image must be a PIL image, a path or a tensor/array, got {type(image).__name__}")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _array_to_pil(array: torch.Tensor | np.ndarray) -> Image.Image:
    pixels = array.detach().cpu() if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array))
    if pixels.ndim != 3 or 3 not in (pixels.shape[0], pixels.shape[-1]):
        raise ValueError(f"an image tensor must be [3, H, W] or [H, W, 3], got shape {list(pixels.shape)}")
    if pixels.shape[0] == 3:  # channels-first, the torch convention, wins when both readings fit
        pixels = pixels.permute(1, 2, 0)  # [H, W, 3]
    if pixels.dtype.is_floating_point:
        if pixels.numel() and (pixels.min() < 0 or pixels.max() > 1):
            raise ValueError("a float image tensor must hold values in [0, 1]; pass uint8 for 0-255 pixels")
        pixels = (pixels * 255).round().to(torch.uint8)
    elif pixels.dtype != torch.uint8:
        raise ValueError(f"an image tensor must be uint8 (or float in [0, 1]), got {pixels.dtype}")
    return Image.fromarray(pixels.contiguous().numpy(), mode="RGB")


class PromptCut(NamedTuple):
    """What `SpatialScorer.fit_prompt` cut from a prompt longer than the model reads."""

    tokens: int  # the prompt's length in the model's tokens
    budget: int  # how many the model reads
    reason: str  # where the budget comes from
    dropped: str  # the text that is not scored


class SpatialScorer:
    """A loaded reward checkpoint: `score(*, prompts, images)` -> (mean [N], std [N]); `__call__` -> mean [N].

    Build with `SpatialScorer.from_pretrained(dir)`, or `SpatialScorer(dir)` from a config's `class_path`.
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: str | None = None,
        batch_size: int = 16,
        backbone_path: str | os.PathLike | None = None,
        max_batch_tokens: int | None = None,
        compile: bool = False,
    ) -> None:
        """checkpoint_dir: a reward checkpoint dir; device: where to run; dtype: backbone dtype (None: as exported);
        batch_size: default pairs per forward pass (at most, with max_batch_tokens); backbone_path: the pretrained
        backbone's dir on this machine when it moved since training; max_batch_tokens: a token budget per forward
        pass (length buckets, module docstring; None: batches of batch_size); compile: compile the backbone's
        blocks."""
        network, config = load_network(checkpoint_dir, dtype=dtype, backbone_path=backbone_path)
        self._setup(
            network,
            device=device,
            batch_size=batch_size,
            system_prompt=config["preprocessing"]["system_prompt"],
            max_batch_tokens=max_batch_tokens,
            compile=compile,
        )
        self.checkpoint_dir = Path(checkpoint_dir)
        self.config = config

    @classmethod
    def from_pretrained(
        cls,
        checkpoint_dir: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: str | None = None,
        batch_size: int = 16,
        backbone_path: str | os.PathLike | None = None,
        max_batch_tokens: int | None = None,
        compile: bool = False,
    ) -> SpatialScorer:
        """Load a reward checkpoint dir (see `__init__`)."""
        return cls(
            checkpoint_dir,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            backbone_path=backbone_path,
            max_batch_tokens=max_batch_tokens,
            compile=compile,
        )

    @classmethod
    def from_network(
        cls,
        network: SpatialScore,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        system_prompt: str | None = None,
        max_batch_tokens: int | None = None,
        compile: bool = False,
    ) -> SpatialScorer:
        """A scorer around an in-memory network (e.g. during training); it is put in eval mode."""
        scorer = cls.__new__(cls)
        scorer._setup(
            network,
            device=device,
            batch_size=batch_size,
            system_prompt=system_prompt,
            max_batch_tokens=max_batch_tokens,
            compile=compile,
        )
        scorer.checkpoint_dir, scorer.config = None, None
        return scorer

    def _setup(
        self,
        network: SpatialScore,
        *,
        device: str | torch.device,
        batch_size: int,
        system_prompt: str | None,
        max_batch_tokens: int | None = None,
        compile: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be None or positive, got {max_batch_tokens}")
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.batch_size = batch_size
        self.system_prompt = system_prompt
        self.max_batch_tokens = max_batch_tokens
        if compile:
            compile_blocks(self.network)

    def _cost(self, prompt: str, image: Image.Image) -> int:
        """Sequence length a (prompt, image) row will have, roughly: prompt tokens plus image tokens."""
        image_processor = self.network.processor.image_processor
        token_pixels = (image_processor.patch_size * image_processor.merge_size) ** 2
        pixels = min(image.width * image.height, image_processor.size["longest_edge"])
        return len(self.network.processor.tokenizer(prompt)["input_ids"]) + pixels // token_pixels

    def fit_prompt(self, prompt: str, images: Sequence[ImageInput]) -> tuple[str, PromptCut | None]:
        """The prompt as the model reads it, and what was cut (None: nothing). The budget is the checkpoint's
        `max_prompt_tokens` where it has one, else the positions the language model has (max_position_embeddings)
        less the chat template and the largest image's tokens."""
        network = self.network
        tokenizer = network.processor.tokenizer
        tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if getattr(network, "max_prompt_tokens", None):
            budget, reason = network.max_prompt_tokens, "the checkpoint's max_prompt_tokens"
        else:
            positions = network.backbone.config.get_text_config().max_position_embeddings
            overhead = max(
                encode(network.processor, [""], [to_pil(image)], system_prompt=self.system_prompt)["input_ids"].shape[1]
                for image in images
            )
            budget, reason = positions - overhead, f"{positions} positions less {overhead} for the template and image"
        if tokens <= budget:
            return prompt, None
        kept, _ = truncate_prompt(tokenizer, prompt, max(budget, 1))
        return kept, PromptCut(tokens, budget, reason, prompt[len(kept) :])

    @torch.no_grad()
    def score(
        self, *, prompts: Sequence[str], images: Sequence[ImageInput], batch_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian reward of each (prompt, image): mean [N], std [N] (fp32, on the scorer's device), input order."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        if len(prompts) != len(images):
            raise ValueError(f"got {len(prompts)} prompts but {len(images)} images: one image per prompt")
        batch_size = batch_size or self.batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        mean = torch.empty(len(prompts), device=self.device)  # [N]
        std = torch.empty(len(prompts), device=self.device)  # [N]
        if not prompts:
            return mean, std
        pictures = [to_pil(image) for image in images]
        costs = [self._cost(prompt, picture) for prompt, picture in zip(prompts, pictures, strict=True)]
        order = sorted(range(len(prompts)), key=costs.__getitem__)
        for rows in self._batches(order, costs, batch_size):
            inputs = encode(
                self.network.processor,
                [prompts[row] for row in rows],
                [pictures[row] for row in rows],
                system_prompt=self.system_prompt,
                max_prompt_tokens=getattr(self.network, "max_prompt_tokens", None),
            )
            batch_mean, batch_std = self.network(**inputs.to(self.device))  # [b], [b]
            index = torch.tensor(rows, device=self.device)
            mean[index], std[index] = batch_mean.float(), batch_std.float()
        return mean, std

    def _batches(self, order: list[int], costs: list[int], batch_size: int) -> list[list[int]]:
        """The rows in `order` (shortest first) cut into forward passes: `batch_size` each, or, with a token
        budget, as many as fit rows x longest length <= max_batch_tokens (one row at least) up to `batch_size`."""
        if self.max_batch_tokens is None:
            return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        batches: list[list[int]] = [[]]
        for row in order:
            current = batches[-1]
            if current and (len(current) == batch_size or (len(current) + 1) * costs[row] > self.max_batch_tokens):
                batches.append(current := [])
            current.append(row)
        return batches

    def __call__(
        self, *, prompts: Sequence[str], images: Sequence[ImageInput], metadata: Sequence[Any] | None = None
    ) -> torch.Tensor:
        """The `Reward` protocol: mean reward [N] of each (prompt, image); `metadata` is not used."""
        mean, _ = self.score(prompts=prompts, images=images)
        return mean

    def mean_and_std(
        self, *, prompts: Sequence[str], images: Sequence[ImageInput]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian reward rl_policy asks for (`rl_policy.reward.reward_and_std`): `score`'s mean and std [N]."""
        return self.score(prompts=prompts, images=images)
