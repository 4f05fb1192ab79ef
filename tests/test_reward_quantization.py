"""QLoRA on CPU: `build_spatialscore(dir, quantization=...)` loads the language model through bitsandbytes (4-bit
NF4 or 8-bit), keeps the vision tower unquantized, trains only LoRA, the reward-token row and the head, and a
4-bit checkpoint exports and reloads (quantized again) to identical scores. bitsandbytes' CPU 4-bit kernels fail
for Linear layers narrower than 64 inputs, so the tiny backbone here has widths of at least 64."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import Qwen2_5_VLModel

from reward_model.export import export_checkpoint
from reward_model.model import build_spatialscore, tiny_backbone_config
from reward_model.scorer import SpatialScorer, read_checkpoint_config
from reward_model.tokenizer import build_spatialworld_processor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL dir (widths >= 64; no position embedding) with its processor."""
    torch.manual_seed(0)
    config = tiny_backbone_config(text_hidden_size=64, text_intermediate_size=128, vision_hidden_size=64)
    directory = tmp_path_factory.mktemp("quantized") / "backbone"
    Qwen2_5_VLModel._from_config(config).save_pretrained(directory)
    build_spatialworld_processor(max_pixels=112 * 112).save_pretrained(directory)
    return directory


def images() -> list[Image.Image]:
    """Four 112 px images that differ in where the red square is."""
    pictures = []
    for left in (0, 28, 56, 84):
        picture = Image.new("RGB", (112, 112), (255, 255, 255))
        picture.paste((220, 20, 20), (left, 40, left + 28, 68))
        pictures.append(picture)
    return pictures


PROMPTS = ["a red square on the left", "a red square on the right", "a red square", "a blue circle above"]


@pytest.mark.parametrize(("quantization", "layer_class"), [("4bit", bnb.nn.Linear4bit), ("8bit", bnb.nn.Linear8bitLt)])
def test_quantized_backbone_trains_only_lora_token_row_and_head(backbone_dir, quantization, layer_class):
    network = build_spatialscore(backbone_dir, quantization=quantization, lora_rank=4, lora_alpha=8.0)
    base = network.backbone.get_base_model()
    for index in range(len(base.language_model.layers)):
        layer = base.language_model.layers[index]
        assert isinstance(layer.self_attn.q_proj.base_layer, layer_class)
        assert isinstance(layer.mlp.down_proj.base_layer, layer_class)
    vision_linears = [module for module in base.visual.modules() if isinstance(module, nn.Linear)]
    assert vision_linears and not any(isinstance(module, layer_class) for module in vision_linears)
    # peft's k-bit preparation: every unquantized floating weight in fp32
    assert all(p.dtype == torch.float32 for p in network.parameters() if p.is_floating_point())

    trainable = {name for name, parameter in network.named_parameters() if parameter.requires_grad}
    assert trainable and all(
        "lora_" in name or "trainable_tokens_delta" in name or name.startswith("head.") for name in trainable
    )
    mean, std = network(**network.encode(PROMPTS, images()))  # [4], [4]
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    (mean.sum() + std.sum()).backward()
    lora_a = base.language_model.layers[0].self_attn.q_proj.lora_A["default"].weight
    lora_b = base.language_model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert lora_a.grad is None or lora_a.grad.abs().sum() == 0  # B starts at zero, so A gets no gradient yet
    assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0


def test_4bit_checkpoint_reloads_quantized_to_identical_scores(backbone_dir, tmp_path):
    network = build_spatialscore(backbone_dir, quantization="4bit", dtype="float32", lora_rank=4, lora_alpha=8.0)
    base = network.backbone.get_base_model()
    with torch.no_grad():  # as after training: LoRA B away from zero
        for name, parameter in base.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    out = export_checkpoint(network, tmp_path / "export")
    config = read_checkpoint_config(out)
    assert config["backbone"]["quantization"] == "4bit" and config["backbone"]["dtype"] == "float32"
    assert config["backbone"]["source"] == "pretrained"

    reloaded = SpatialScorer.from_pretrained(out)
    reloaded_base = reloaded.network.backbone.get_base_model()
    assert isinstance(reloaded_base.language_model.layers[0].mlp.up_proj.base_layer, bnb.nn.Linear4bit)
    mean, std = reloaded.score(prompts=PROMPTS, images=images())
    expected_mean, expected_std = SpatialScorer.from_network(network).score(prompts=PROMPTS, images=images())
    assert torch.equal(mean, expected_mean) and torch.equal(std, expected_std)
    assert mean.std() > 0


def test_quantization_errors_name_the_problem(backbone_dir):
    with pytest.raises(ValueError, match="needs LoRA"):
        build_spatialscore(backbone_dir, quantization="4bit", lora_rank=None)
    with pytest.raises(ValueError, match="loads a pretrained directory"):
        build_spatialscore(tiny_backbone_config(), quantization="8bit")
    with pytest.raises(ValueError, match=r"quantization must be None or one of \['4bit', '8bit'\]"):
        build_spatialscore(backbone_dir, quantization="2bit")
