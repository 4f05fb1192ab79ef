"""One-shot GPU check of the full-size reward model: SpatialScore on Qwen2.5-VL-7B, with random weights.

Builds `qwen2_5_vl_7b_config()` (the published architecture; the offline SpatialWorld processor's token ids, since
no Qwen tokenizer files are needed for timing) with the LoRA of configs/reward/qwen2_5_vl_7b.yaml on the `meta`
device, materialises it in bf16 on the GPU (Hugging Face's own initialisation for the backbone, peft's for LoRA and
the reward-token row, a fresh fp32 head), and measures on one GPU:

- a training step at `--pairs` pairs per GPU (2 as in the 7B config): one forward pass of 2 x pairs sequences, each
  an image of `--image-pixels` pixels (200,704 = 448 x 448: 1,024 patches, 256 image tokens) and a prompt of
  `--prompt-words` words, the `gaussian_bt` loss, backward, AdamW step: seconds per step and peak memory;
- scoring (no gradients, eval mode) at `--score-batch` images per forward pass: images per second.

Switches for before/after comparisons (bench/gpu_check.sh): `--compile` (regional torch.compile of the decoder
layers and vision blocks, reward_model.model.compile_blocks), `--no-gradient-checkpointing`, larger `--pairs`, and
`--scorer-rows N`: N rows with prompts of 10 to `--prompt-words` words scored through `SpatialScorer` (preprocessing
included) at `--score-batch` rows per pass, or in length buckets under `--max-batch-tokens`.

Every timed phase reports its model FLOPs and MFU (bench/flops.py, counted from the config on the unpadded rows:
scoring one forward; training the forward plus the backward through the language model, counted once more as the
vision tower has no trainable weights; checkpointing's recomputation not counted) and its peak memory.

It prints one JSON object. Without CUDA it exits with a message saying so. The FSDP run shards the fp32 master
weights over 8 GPUs instead of holding bf16 weights whole; per-GPU compute at the same micro-batch is what this
measures, not FSDP's communication. `--size tiny` runs the same path on the tiny embedded model (a quick check).

    python bench/reward_gpu.py                      # about 1-3 minutes on one H100
    python bench/reward_gpu.py --size tiny --train-steps 2 --score-batches 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

from reward_model.export import is_peft_model
from reward_model.loss import gaussian_bt_loss
from reward_model.model import (
    SPATIALWORLD_TOKEN_IDS,
    TEXT_LORA_TARGETS,
    RewardHead,
    SpatialScore,
    build_spatialscore,
    compile_blocks,
    qwen2_5_vl_7b_config,
    tiny_backbone_config,
)
from reward_model.scorer import SpatialScorer

PROMPT_SENTENCE = "a small red circle is to the left of a large blue square and above the green triangle"


def _load_flops():
    spec = importlib.util.spec_from_file_location("flops", Path(__file__).with_name("flops.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flops = _load_flops()  # bench/ is not a package


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/reward_gpu.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", choices=("7b", "tiny"), default="7b", help="Qwen2.5-VL-7B or the tiny model")
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--lora-alpha", type=float, default=128.0)
    parser.add_argument("--pairs", type=int, default=2, help="pairs per training step (2 x pairs sequences)")
    parser.add_argument("--image-pixels", type=int, default=200_704, help="pixels per image (square) and budget")
    parser.add_argument("--prompt-words", type=int, default=120, help="words per prompt (one token each)")
    parser.add_argument("--train-steps", type=int, default=5, help="timed training steps (after --warmup-steps)")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--score-batch", type=int, default=32, help="images per scoring forward pass")
    parser.add_argument("--score-batches", type=int, default=3, help="timed scoring batches (after one warm-up)")
    parser.add_argument("--lr", type=float, default=2e-6)
    parser.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa, eager or flash_attention_2")
    parser.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True, help="as the 7B config"
    )
    parser.add_argument("--compile", action="store_true", help="regional torch.compile of the backbone's blocks")
    parser.add_argument("--scorer-rows", type=int, default=0, help="rows of varied length through SpatialScorer")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="SpatialScorer's token budget per pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda", help="cuda; cpu only with --size tiny (a dry run)")
    args = parser.parse_args(argv)
    if args.device != "cuda" and args.size != "tiny":
        parser.error("--device other than cuda is for a dry run with --size tiny")
    for name in ("pairs", "image_pixels", "prompt_words", "train_steps", "score_batch", "score_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


def build_on_meta(args: argparse.Namespace) -> SpatialScore:
    """The SpatialScore of `args` with every weight on the meta device (no memory): bf16 backbone, LoRA, fp32 head."""
    if args.size == "7b":
        config = qwen2_5_vl_7b_config(token_ids=SPATIALWORLD_TOKEN_IDS)
    else:
        config = tiny_backbone_config(text_hidden_size=64, text_layers=2, text_intermediate_size=128)
    with torch.device("meta"):
        return build_spatialscore(
            config,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            lora_dropout=0.0,
            lora_target_modules=TEXT_LORA_TARGETS,
            dtype="bfloat16",
            attn_implementation=args.attn,
            gradient_checkpointing=args.gradient_checkpointing,
            max_pixels=args.image_pixels,
        )


@torch.no_grad()
def materialize(network: SpatialScore, device: torch.device, *, initial_std: float = 1.0) -> SpatialScore:
    """Allocate a meta-device `network` on `device` and initialise it as its builders would: the backbone with
    Hugging Face's `_init_weights` (normal(0, 0.02) weights, unit norms, rotary frequencies recomputed), LoRA with
    peft's (A Kaiming, B zero), the reward-token row from the embedding matrix, and a new fp32 head."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    network.to_empty(device=device)
    base = network.backbone.get_base_model() if is_peft_model(network.backbone) else network.backbone
    for module in base.modules():
        base._init_weights(module)
    for module in base.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A:
                module.reset_lora_parameters(adapter, init_lora_weights=True)
        elif isinstance(module, TrainableTokensLayer):
            for adapter, rows in module.token_indices.items():
                original = module.get_base_layer().weight[rows]  # [k, H]
                module.trainable_tokens_delta[adapter].copy_(original)
                module.trainable_tokens_original[adapter].copy_(original)
    first, _, last = network.head.layers
    network.head = RewardHead(
        first.in_features, first.out_features, network.head.min_std, network.head.max_std, initial_std
    ).to(device)
    return network


def make_rows(count: int, pixels: int, words: int, seed: int, fewest_words: int | None = None):
    """`count` (prompt, image) rows: random square RGB images of about `pixels` pixels, prompts of `words` words
    (or a number drawn from fewest_words..words)."""
    rng = np.random.default_rng(seed)
    side = int(round(pixels**0.5))
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]
    vocabulary = PROMPT_SENTENCE.split()
    lengths = [words if fewest_words is None else int(rng.integers(fewest_words, words + 1)) for _ in range(count)]
    prompts = [" ".join(rng.choice(vocabulary, size=length)) for length in lengths]
    return prompts, images


def make_inputs(network: SpatialScore, count: int, pixels: int, words: int, seed: int) -> BatchFeature:
    """The encoded `make_rows`."""
    return network.encode(*make_rows(count, pixels, words, seed))


def forward_flops(network: SpatialScore, inputs: BatchFeature) -> dict[str, int]:
    """Model FLOPs of one forward of the encoded rows (unpadded lengths), {"vision", "language"}."""
    config = network.backbone.config
    lora_rank = 0
    for module in network.backbone.modules():  # peft's LoRA layers carry their rank per adapter
        if hasattr(module, "r") and isinstance(module.r, dict) and module.r:
            lora_rank = next(iter(module.r.values()))
            break
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    return flops.qwen2_5_vl_forward_flops(config, lengths, inputs["image_grid_thw"].tolist(), lora_rank)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(network: SpatialScore, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Seconds per training step (forward of 2 x pairs sequences, gaussian_bt loss, backward, AdamW) and peak memory."""
    network.train()
    trainable = [parameter for parameter in network.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    inputs = make_inputs(network, 2 * args.pairs, args.image_pixels, args.prompt_words, args.seed).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    counted = forward_flops(network, inputs)
    step_flops = 2 * counted["language"] + counted["vision"]  # forward + the backward through the language model
    durations, losses = [], []
    for step in range(args.warmup_steps + args.train_steps):
        synchronize(device)
        start = time.perf_counter()
        mean, std = network(**inputs)  # [2P], [2P]; winners first
        mean_w, mean_l = mean.chunk(2)
        std_w, std_l = std.chunk(2)
        loss = gaussian_bt_loss(mean_w, std_w, mean_l, std_l)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= args.warmup_steps:
            durations.append(time.perf_counter() - start)
        losses.append(loss.item())
    return {
        "train_step_flop": step_flops,
        "train_mfu": flops.mfu(step_flops, float(np.median(durations))),
        "train_step_seconds": float(np.median(durations)),
        "train_step_seconds_all": durations,
        "train_sequence_tokens": int(inputs["input_ids"].shape[1]),
        "train_loss_first_last": [losses[0], losses[-1]],
        "train_peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "trainable_parameters": sum(parameter.numel() for parameter in trainable),
    }


@torch.no_grad()
def time_scoring(network: SpatialScore, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images per second at `--score-batch` images per forward pass, no gradients."""
    network.eval()
    inputs = make_inputs(network, args.score_batch, args.image_pixels, args.prompt_words, args.seed + 1).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    network(**inputs)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.score_batches):
        mean, _ = network(**inputs)
        assert torch.isfinite(mean).all(), "non-finite scores"
    synchronize(device)
    seconds = time.perf_counter() - start
    counted = args.score_batches * sum(forward_flops(network, inputs).values())
    return {
        "score_flop_per_image": counted // (args.score_batches * args.score_batch),
        "score_mfu": flops.mfu(counted, seconds),
        "score_images_per_second": args.score_batch * args.score_batches / seconds,
        "score_batch": args.score_batch,
        "score_peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


@torch.no_grad()
def time_scorer(network: SpatialScore, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """`--scorer-rows` rows of 10 to --prompt-words words through SpatialScorer (preprocessing, sorting, batches
    of --score-batch or buckets under --max-batch-tokens): images per second, MFU on the unpadded rows."""
    scorer = SpatialScorer.from_network(
        network, device=device, batch_size=args.score_batch, max_batch_tokens=args.max_batch_tokens
    )
    prompts, images = make_rows(
        args.scorer_rows, args.image_pixels, args.prompt_words, args.seed + 2, min(10, args.prompt_words)
    )
    scorer.score(prompts=prompts[: args.score_batch], images=images[: args.score_batch])  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    mean, _ = scorer.score(prompts=prompts, images=images)
    synchronize(device)
    seconds = time.perf_counter() - start
    assert torch.isfinite(mean).all(), "non-finite scores"
    counted = 0
    for start_row in range(0, len(prompts), 8):  # the FLOPs of every row, encoded in small groups
        counted += sum(
            forward_flops(
                network, network.encode(prompts[start_row : start_row + 8], images[start_row : start_row + 8])
            ).values()
        )
    return {
        "scorer_rows": args.scorer_rows,
        "scorer_max_batch_tokens": args.max_batch_tokens,
        "scorer_images_per_second": args.scorer_rows / seconds,
        "scorer_mfu": flops.mfu(counted, seconds),
        "scorer_peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/reward_gpu.py needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    network = build_on_meta(args)
    meta_seconds = time.perf_counter() - start
    parameters = sum(parameter.numel() for parameter in network.parameters())
    start = time.perf_counter()
    materialize(network, device)
    if args.compile:
        compile_blocks(network)
    synchronize(device)
    materialize_seconds = time.perf_counter() - start
    report = {
        "model": "Qwen2.5-VL-7B (random weights)" if args.size == "7b" else "tiny",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "parameters": parameters,
        "lora_rank": args.lora_rank,
        "pairs_per_step": args.pairs,
        "image_pixels": args.image_pixels,
        "prompt_words": args.prompt_words,
        "gradient_checkpointing": args.gradient_checkpointing,
        "attn_implementation": args.attn,
        "compile": args.compile,
        "build_meta_seconds": meta_seconds,
        "materialize_seconds": materialize_seconds,
        "weights_memory_gib": torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    report |= time_training(network, args, device)
    report |= time_scoring(network, args, device)
    if args.scorer_rows:
        report |= time_scorer(network, args, device)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
