"""Model FLOPs of the full-size passes, counted from the model configs (issue 22's convention), for exact MFU.

A forward pass costs 2 FLOPs per multiply-add of every matmul it runs: each linear layer on each row it is applied to
(2 * rows * in * out; per token for the token-wise layers, per sample for the modulation and time embeddings), the
image patch embedding, and attention's two matmuls (Q K^T and A V: 4 * query-key pairs * heads * head_dim, every
pair counted, causal or not: what the matmuls run). LoRA adds 2 * rows * rank * (in + out) per adapted layer.
Elementwise work (norms, activations, softmax, rotary) is not counted.

Convention for the passes (so that every figure compares): a forward counts once; the backward through a frozen base
with LoRA counts once more (activation gradients only: the base weights get none); the reference forward (adapter
off) counts when beta > 0; recomputation from gradient checkpointing is not counted. MFU = FLOPs / seconds /
`PEAK_BF16_DENSE`.

Checked against `torch.utils.flop_counter.FlopCounterMode` on the tiny models and against hand values
(tests/test_rl_gpu_bench.py, tests/test_reward_gpu_bench.py): FLUX.1-dev at 512 px with 512 text tokens is about
21.5 TFLOP per image-step, Qwen2.5-VL-7B about 6.0 TFLOP per 448 px image with a 120-word prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PEAK_BF16_DENSE = 989e12  # H100 / H200 SXM, bf16 dense tensor cores, FLOP/s

# The LoRA of rl_policy.policy.FLUX_LORA_TARGETS: the double blocks' attention projections of both streams and the
# single blocks' q, k, v (single blocks have no to_out), each inner -> inner.
FLUX_DOUBLE_LORA_PER_STREAM = 4
FLUX_SINGLE_LORA = 3


def linear(rows: int, in_features: int, out_features: int) -> int:
    return 2 * rows * in_features * out_features


def attention(queries: int, keys: int, width: int) -> int:
    """Q K^T and A V over `queries` x `keys` pairs, width = heads * head_dim."""
    return 4 * queries * keys * width


def lora(rows: int, in_features: int, out_features: int, rank: int) -> int:
    return 2 * rows * rank * (in_features + out_features)


def flux_forward_flops(config: Mapping[str, Any], image_tokens: int, text_tokens: int, lora_rank: int = 0) -> int:
    """One FluxTransformer2DModel forward of one sample (diffusers' blocks, MLP ratio 4) with `image_tokens` latent
    tokens and `text_tokens` T5 tokens; LoRA of `lora_rank` on rl_policy's FLUX_LORA_TARGETS (0: none, the base or
    the reference policy). config: the transformer's config.json fields."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    out_channels = config.get("out_channels") or config["in_channels"]
    tokens = image_tokens + text_tokens
    # per sample: timestep (256 sinusoidal features), guidance and pooled-text embeddings, the blocks' modulations
    embedders = 2 if config["guidance_embeds"] else 1  # the timestep's and the distilled guidance's
    flops = embedders * (linear(1, 256, inner) + linear(1, inner, inner))
    flops += linear(1, config["pooled_projection_dim"], inner) + linear(1, inner, inner)
    flops += config["num_layers"] * 2 * linear(1, inner, 6 * inner)  # AdaLayerNormZero of each stream
    flops += config["num_single_layers"] * linear(1, inner, 3 * inner)  # AdaLayerNormZeroSingle
    flops += linear(1, inner, 2 * inner)  # AdaLayerNormContinuous before the output projection
    # per token: the embeddings in, the blocks, the projection out
    flops += linear(image_tokens, config["in_channels"], inner) + linear(
        text_tokens, config["joint_attention_dim"], inner
    )
    per_token_block = 4 * linear(1, inner, inner) + linear(1, inner, 4 * inner) + linear(1, 4 * inner, inner)
    flops += config["num_layers"] * tokens * per_token_block  # each token through its own stream's weights
    single = 3 * linear(1, inner, inner) + linear(1, inner, 4 * inner) + linear(1, 5 * inner, inner)
    flops += config["num_single_layers"] * tokens * single
    flops += linear(image_tokens, inner, config["patch_size"] ** 2 * out_channels)
    flops += (config["num_layers"] + config["num_single_layers"]) * attention(tokens, tokens, inner)
    if lora_rank:
        adapted = config["num_layers"] * FLUX_DOUBLE_LORA_PER_STREAM + config["num_single_layers"] * FLUX_SINGLE_LORA
        flops += adapted * lora(tokens, inner, inner, lora_rank)
    return flops


def _get(config: Any, name: str) -> Any:
    return config[name] if isinstance(config, Mapping) else getattr(config, name)


def qwen2_5_vl_vision_flops(vision_config: Any, grid: Sequence[int]) -> int:
    """The Qwen2.5-VL vision tower on one image of `grid` = (t, h, w) patches: patch embedding, the blocks (window
    attention within `window_size`-pixel windows, full attention in `fullatt_block_indexes`), the 2 x 2 merger."""
    t, h, w = (int(size) for size in grid)
    hidden, intermediate = _get(vision_config, "hidden_size"), _get(vision_config, "intermediate_size")
    merge, patch = _get(vision_config, "spatial_merge_size"), _get(vision_config, "patch_size")
    patches = t * h * w
    patch_features = _get(vision_config, "in_channels") * _get(vision_config, "temporal_patch_size") * patch**2
    flops = linear(patches, patch_features, hidden)
    per_patch = linear(1, hidden, 3 * hidden) + linear(1, hidden, hidden)
    per_patch += 2 * linear(1, hidden, intermediate) + linear(1, intermediate, hidden)
    depth = _get(vision_config, "depth")
    flops += depth * patches * per_patch
    # windows of window_size / patch / merge merged tokens per side, cut from the top left (the last ones partial)
    side = _get(vision_config, "window_size") // patch // merge
    rows, columns = h // merge, w // merge
    window_pairs = 0
    for height in [side] * (rows // side) + ([rows % side] if rows % side else []):
        for width in [side] * (columns // side) + ([columns % side] if columns % side else []):
            window_pairs += (height * width * merge**2) ** 2
    full = set(_get(vision_config, "fullatt_block_indexes"))
    for block in range(depth):
        pairs = t * (h * w) ** 2 if block in full else t * window_pairs  # attention within each frame
        flops += 4 * pairs * hidden
    merged = patches // merge**2
    flops += linear(merged, hidden * merge**2, hidden * merge**2)
    flops += linear(merged, hidden * merge**2, _get(vision_config, "out_hidden_size"))
    return flops


def qwen2_5_vl_language_flops(text_config: Any, sequence_length: int, lora_rank: int = 0) -> int:
    """The Qwen2.5-VL language model (no LM head) on one sequence of `sequence_length` tokens, image tokens included;
    LoRA of `lora_rank` on every projection of its layers (reward_model's TEXT_LORA_TARGETS)."""
    hidden, intermediate = _get(text_config, "hidden_size"), _get(text_config, "intermediate_size")
    heads, kv_heads = _get(text_config, "num_attention_heads"), _get(text_config, "num_key_value_heads")
    head_dim = hidden // heads
    shapes = [(hidden, heads * head_dim), (hidden, kv_heads * head_dim), (hidden, kv_heads * head_dim)]
    shapes += [(heads * head_dim, hidden), (hidden, intermediate), (hidden, intermediate), (intermediate, hidden)]
    per_layer = sum(linear(sequence_length, n_in, n_out) for n_in, n_out in shapes)
    per_layer += attention(sequence_length, sequence_length, heads * head_dim)
    if lora_rank:
        per_layer += sum(lora(sequence_length, n_in, n_out, lora_rank) for n_in, n_out in shapes)
    return _get(text_config, "num_hidden_layers") * per_layer


def qwen2_5_vl_forward_flops(
    config: Any, sequence_lengths: Sequence[int], image_grids: Sequence[Sequence[int]], lora_rank: int = 0
) -> dict[str, int]:
    """A SpatialScore forward of rows with these unpadded `sequence_lengths` and image `image_grids` (t, h, w):
    {"vision": ..., "language": ...} FLOPs (padding is not model work; the reward head's two small layers on one
    token per row are left out)."""
    return {
        "vision": sum(qwen2_5_vl_vision_flops(config.vision_config, grid) for grid in image_grids),
        "language": sum(qwen2_5_vl_language_flops(config.text_config, n, lora_rank) for n in sequence_lengths),
    }


def mfu(flops: float, seconds: float, peak: float = PEAK_BF16_DENSE) -> float:
    """Model FLOP utilisation: achieved FLOP/s over the peak."""
    return flops / seconds / peak
