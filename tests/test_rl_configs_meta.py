"""The full-size transformers the paper trains, built on the meta device (no memory, no weights): parameter counts
match the published models and the default LoRA targets exist in both."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel

from rl_policy.policy import FLUX_LORA_TARGETS, add_lora, trainable_parameters

# black-forest-labs/FLUX.1-dev transformer/config.json
FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)  # fmt: skip
# Qwen/Qwen-Image transformer/config.json (diffusers 0.42's defaults are these numbers)
QWEN_IMAGE = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)  # fmt: skip


@pytest.mark.parametrize(
    ("model_class", "config", "num_parameters", "lora_parameters"),
    [
        # 11.9B; LoRA rank 32 on 19 double blocks x 8 projections of 3072 -> 3072
        (FluxTransformer2DModel, FLUX_DEV, 11_901_408_320, 19 * 8 * 32 * (3072 + 3072) + 38 * 3 * 32 * (3072 + 3072)),
        # 20.4B; 60 blocks x 8 projections of 3072 -> 3072
        (QwenImageTransformer2DModel, QWEN_IMAGE, 20_430_401_088, 60 * 8 * 32 * (3072 + 3072)),
    ],
)
def test_full_size_transformer_on_meta(model_class, config, num_parameters, lora_parameters):
    with torch.device("meta"):
        transformer = model_class(**config)
        num_base_parameters = sum(parameter.numel() for parameter in transformer.parameters())
        add_lora(transformer, rank=32)  # raises if a target matches no module; LoRA weights on meta too
    assert num_base_parameters == num_parameters
    trainable = trainable_parameters(transformer)
    for target in FLUX_LORA_TARGETS:
        assert any(f"{target}.lora_A" in name for name in trainable), target
    assert sum(parameter.numel() for parameter in trainable.values()) == lora_parameters
    assert all(parameter.device.type == "meta" for parameter in transformer.parameters())
