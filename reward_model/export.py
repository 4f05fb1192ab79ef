"""Export a trained SpatialScore network as a reward checkpoint dir (docs/DESIGN.md, "Artifacts").

Layout, all safetensors and JSON (never pickle):

    config.json          format tag and version; backbone reference; LoRA settings; head sizes and std range;
                         reward token and id; preprocessing (patch/merge sizes, pixel budget, system prompt);
                         the resolved training config when given
    processor/           the processor's own files (tokenizer with <|reward|>, image processor)
    adapter/             the peft adapter (adapter_config.json, adapter_model.safetensors): LoRA weights and the
                         reward token's trained embedding row; absent for a full fine-tune
    backbone/            a Hugging Face `Qwen2_5_VLModel` dir (config.json, model.safetensors), written when there is
                         no local pretrained dir to point at: the tiny embedded model, or any full fine-tune
    head.safetensors     the (mean, std) head's weights (`layers.*`) and `reward_token_embedding` [H], the row the
                         reward token is embedded with
    patch_position_embedding.safetensors
                         the stage-A vision position embedding (`reward_model.position_embedding`, same file
                         format as in a stage-A backbone dir), when the network has one; never inside backbone/
    metrics.json         when given

The backbone reference is either `{"source": "embedded", "path": "backbone", "config": {...}}` or, for LoRA on a
local pretrained dir, `{"source": "pretrained", "path": "/the/dir/it/was/loaded/from"}`, reloaded from there. It
also records the backbone dtype, `quantization` (None, "4bit" or "8bit": a QLoRA backbone is reloaded quantized the
same way, so scores match) and `patch_position_embedding` (the file name, or None).

Writes are atomic: everything goes into a hidden temp dir beside `out_dir`, which is then renamed into place; an
existing `out_dir` is moved aside first and deleted after the rename, so a reader sees the old or the new checkpoint,
never a mix.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import Qwen2_5_VLModel

from reward_model.model import SpatialScore
from reward_model.position_embedding import POSITION_EMBEDDING_FILE, PatchPositionEmbedding, save_position_embedding
from reward_model.tokenizer import REWARD_TOKEN
from shared import atomic_write_json
from shared.io import atomic_directory

CHECKPOINT_FORMAT = "spatialscore-reward-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HEAD_FILE = "head.safetensors"
PROCESSOR_DIR = "processor"
ADAPTER_DIR = "adapter"
BACKBONE_DIR = "backbone"
REWARD_ROW_KEY = "reward_token_embedding"


def is_peft_model(backbone: nn.Module) -> bool:
    return hasattr(backbone, "peft_config") and hasattr(backbone, "get_base_model")


def _base_model(backbone: nn.Module) -> Qwen2_5_VLModel:
    return backbone.get_base_model() if is_peft_model(backbone) else backbone


def patch_position_embedding(backbone: nn.Module) -> PatchPositionEmbedding | None:
    """The stage-A position embedding attached to the backbone's vision tower, if any."""
    return getattr(_base_model(backbone).visual, "patch_position_embedding", None)


def _without_position_embedding(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items() if ".patch_position_embedding." not in name}


def quantization_of(config) -> tuple[str | None, str | None]:
    """("4bit" or "8bit", compute dtype name) for a backbone loaded through bitsandbytes, (None, None) otherwise. The
    compute dtype is a 4-bit setting; an 8-bit backbone has None."""
    settings = getattr(config, "quantization_config", None)
    if settings is None:
        return None, None
    settings = settings if isinstance(settings, dict) else settings.to_dict()
    if settings.get("load_in_4bit"):
        return "4bit", str(settings["bnb_4bit_compute_dtype"]).removeprefix("torch.")
    if settings.get("load_in_8bit"):
        return "8bit", None
    raise ValueError(f"backbone quantization {settings.get('quant_method')!r} is not bitsandbytes 4-bit or 8-bit")


def reward_token_row(network: SpatialScore) -> torch.Tensor:
    """The embedding the reward token is looked up as (the trained row with LoRA, else the matrix row).  -> [H]"""
    embeddings = network.backbone.get_input_embeddings()
    token = torch.tensor([network.reward_token_id], device=embeddings.weight.device)
    with torch.no_grad():
        return embeddings(token)[0].detach()


def base_backbone_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the plain `Qwen2_5_VLModel` under a peft wrapper: LoRA and trainable-token entries dropped,
    peft's `base_layer` / `token_adapter` wrapper names removed, and the patch position embedding left out (it is not
    a Qwen2.5-VL weight; the export writes it to a file of its own)."""
    state = _without_position_embedding(backbone.get_base_model().state_dict())
    plain = {}
    for name, tensor in state.items():
        if "lora_" in name or "trainable_tokens_delta" in name:
            continue
        plain[re.sub(r"\.(?:base_layer|token_adapter)(?=\.)", "", name)] = tensor
    return plain


def _save_plain_backbone(backbone: nn.Module, directory: Path) -> None:
    """Write the base weights of `backbone` as a Hugging Face `Qwen2_5_VLModel` dir (no LoRA, no position embedding)."""
    if not is_peft_model(backbone):
        state = _without_position_embedding(backbone.state_dict())
        backbone.save_pretrained(str(directory), state_dict=state, safe_serialization=True)
        return
    with torch.device("meta"):
        plain = Qwen2_5_VLModel._from_config(backbone.get_base_model().config)
    plain.load_state_dict(base_backbone_state_dict(backbone), strict=True, assign=True)
    plain.save_pretrained(str(directory), safe_serialization=True)


def _pretrained_path(config) -> str | None:
    """The local dir a backbone with this config was loaded from, None for a backbone built from a config."""
    name = getattr(config, "name_or_path", "") or ""
    return name if name and (Path(name) / "config.json").is_file() else None


def _lora_settings(backbone: nn.Module) -> dict[str, Any] | None:
    if not is_peft_model(backbone):
        return None
    config = backbone.peft_config["default"]
    target_modules = config.target_modules
    return {
        "rank": config.r,
        "alpha": config.lora_alpha,
        "dropout": config.lora_dropout,
        "target_modules": target_modules if isinstance(target_modules, str) else sorted(target_modules),
        "trainable_token_indices": config.trainable_token_indices,
        "dir": ADAPTER_DIR,
    }


def checkpoint_config(network: SpatialScore, *, system_prompt: str | None = None) -> dict[str, Any]:
    """The `config.json` of `network`'s reward checkpoint (without the resolved training config)."""
    backbone = network.backbone
    plain_config = backbone.get_base_model().config if is_peft_model(backbone) else backbone.config
    pretrained = _pretrained_path(plain_config)
    if pretrained is not None and is_peft_model(backbone):
        backbone_reference = {"source": "pretrained", "path": pretrained}
    else:
        backbone_reference = {"source": "embedded", "path": BACKBONE_DIR, "config": plain_config.to_dict()}
    quantization, compute_dtype = quantization_of(plain_config)
    # A 4-bit backbone computes in its compute dtype; otherwise the (unquantized) weights' dtype is the one to reload.
    weights_dtype = next(parameter.dtype for parameter in backbone.parameters() if parameter.is_floating_point())
    backbone_reference["dtype"] = compute_dtype or str(weights_dtype).removeprefix("torch.")
    backbone_reference["quantization"] = quantization
    backbone_reference["trained"] = "lora" if is_peft_model(backbone) else "full"
    has_position_embedding = patch_position_embedding(backbone) is not None
    backbone_reference["patch_position_embedding"] = POSITION_EMBEDDING_FILE if has_position_embedding else None
    first, last = network.head.layers[0], network.head.layers[-1]
    image_processor = network.processor.image_processor
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "backbone": backbone_reference,
        "lora": _lora_settings(backbone),
        "head": {
            "file": HEAD_FILE,
            "input_size": first.in_features,
            "hidden_size": first.out_features,
            "output_size": last.out_features,
            "min_std": network.head.min_std,
            "max_std": network.head.max_std,
        },
        "reward_token": REWARD_TOKEN,
        "reward_token_id": network.reward_token_id,
        "preprocessing": {
            "processor_dir": PROCESSOR_DIR,
            "patch_size": image_processor.patch_size,
            "merge_size": image_processor.merge_size,
            "temporal_patch_size": image_processor.temporal_patch_size,
            "min_pixels": image_processor.size["shortest_edge"],
            "max_pixels": image_processor.size["longest_edge"],
            "system_prompt": system_prompt,
            "padding_side": "right",
            "max_prompt_tokens": network.max_prompt_tokens,
        },
    }


def _write_checkpoint(
    network: SpatialScore,
    target: Path,
    *,
    metrics: dict[str, Any] | None,
    resolved_config: dict[str, Any] | None,
    system_prompt: str | None,
) -> None:
    config = checkpoint_config(network, system_prompt=system_prompt)
    config["training_config"] = resolved_config
    network.processor.save_pretrained(str(target / PROCESSOR_DIR))
    if config["lora"] is not None:
        network.backbone.save_pretrained(str(target / ADAPTER_DIR), save_embedding_layers=False)
    if config["backbone"]["source"] == "embedded":
        _save_plain_backbone(network.backbone, target / BACKBONE_DIR)
    if config["backbone"]["patch_position_embedding"] is not None:
        save_position_embedding(patch_position_embedding(network.backbone), target / POSITION_EMBEDDING_FILE)
    head = {name: tensor.detach().float().contiguous().cpu() for name, tensor in network.head.state_dict().items()}
    head[REWARD_ROW_KEY] = reward_token_row(network).contiguous().cpu()
    save_file(head, str(target / HEAD_FILE), metadata={"format": "pt"})
    if metrics is not None:
        atomic_write_json(target / METRICS_FILE, metrics)
    atomic_write_json(target / CONFIG_FILE, config)  # last: its presence marks a complete checkpoint


def export_checkpoint(
    network: SpatialScore,
    out_dir: str | os.PathLike,
    *,
    metrics: dict[str, Any] | None = None,
    resolved_config: dict[str, Any] | None = None,
    system_prompt: str | None = None,
) -> Path:
    """Write `network` as a reward checkpoint dir at `out_dir` (replacing one that is there) and return its path.

    metrics: written as metrics.json (keys in docs/DESIGN.md, "Default locations").
    resolved_config: the full training config (e.g. LightningCLI's), kept in config.json as `training_config`.
    system_prompt: the system prompt the network was trained with (`encode(..., system_prompt=...)`); the scorer
        uses the same.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"cannot export to {out_dir}: it exists and is not a directory")
    json.dumps(metrics)  # fail before writing anything if these are not JSON
    json.dumps(resolved_config)
    with atomic_directory(out_dir) as staging:
        _write_checkpoint(
            network, staging, metrics=metrics, resolved_config=resolved_config, system_prompt=system_prompt
        )
    return out_dir
