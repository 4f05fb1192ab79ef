"""One-shot GPU check of full-size Flow-GRPO: the FLUX.1-dev transformer with LoRA 32 and, beside it, the 7B
SpatialScore critic, both with random weights (no checkpoint is needed to measure memory and time).

Builds the published FLUX.1-dev transformer config on the `meta` device with the LoRA of configs/rl/flux_dev.yaml,
materialises it in bf16 on the GPU, and measures, with text embeddings of FLUX.1-dev's shapes (T5: 512 x 4096,
CLIP pooled: 768; the text encoders themselves are not loaded, they run once per prompt and are cached):

- sampling one group: G images (24) at `--resolution` (512: 1,024 latent tokens) with `--steps` (6) Flow-GRPO SDE
  steps (rl_policy.sde), in micro-batches of `--sample-batch`, guidance 3.5 through the guidance embedding;
- the training pass on the kept samples (2k = 12 of 24, every SDE step but the last): LoRA forward + backward of the
  recomputed log-probs, the reference forward (adapter off) for the KL, in micro-batches of `--train-batch`, then
  the AdamW step;
  with `--objective nft` instead, DiffusionNFT's pass (rl_policy.nft): each kept sample re-noised `--nft-draws`
  times, the rollout policy's velocity there (no grad) and the LoRA forward + backward of the NFT loss;
- the critic (unless `--no-critic`): SpatialScore on Qwen2.5-VL-7B (bench/reward_gpu.py's builder) scoring the G
  images at the 7B config's pixel budget, resident during the whole run so that the peak memory includes it.

Throughput switches, each off by default so that a run with and one without it compare (bench/gpu_check.sh runs
both): `--compile` (regional torch.compile of the blocks, rl_policy.policy.compile_transformer_blocks),
`--sampling-attention` / `--training-attention` (the SDPA backend of the no-grad and the grad passes),
`--sample-batch 24` (the whole group per forward), `--beta 0` (no reference forward). One warm-up forward (and
backward) at each batch size runs before the timers, so compilation and autotuning are not timed.

It prints one JSON object: seconds, images/s, peak GiB per phase, and the model FLOPs and MFU of each phase
(bench/flops.py: counted from the transformer config, issue 22's convention), plus the end-to-end time of one
group (sampling + critic scoring + training the kept samples). Without CUDA it exits with a message saying so; `--size
tiny` runs the same path on the tiny embedded transformer (a quick check, CPU included).

    python bench/rl_gpu.py                       # a few minutes on one H100
    python bench/rl_gpu.py --objective nft       # the NFT training pass instead of GRPO's
    python bench/rl_gpu.py --size tiny --no-critic --resolution 32 --group 4
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel

from rl_policy.grpo import grpo_clip_loss, kl_to_reference
from rl_policy.nft import nft_loss, optimality_probability
from rl_policy.policy import (
    ATTENTION_BACKENDS,
    FLUX_LORA_TARGETS,
    add_lora,
    attention_backend,
    compile_transformer_blocks,
    reference_policy,
    trainable_parameters,
)
from rl_policy.sde import flux_shift_mu, flux_sigmas, noised_latents, sde_step_with_logprob

FLUX_DEV = dict(  # FLUX.1-dev's transformer/config.json
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
TINY = dict(
    patch_size=1,
    in_channels=48,
    num_layers=1,
    num_single_layers=2,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    pooled_projection_dim=64,
    guidance_embeds=True,
    axes_dims_rope=(8, 12, 12),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/rl_gpu.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("flux-dev", "tiny"), default="flux-dev")
    parser.add_argument("--lora-rank", type=int, default=32)
    parser.add_argument("--group", type=int, default=24, help="G: images per prompt")
    parser.add_argument("--keep-per-side", type=int, default=6, help="k: kept top and bottom samples")
    parser.add_argument("--steps", type=int, default=6, help="denoising steps (the last one deterministic)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--sample-batch", type=int, default=8, help="images per forward pass when sampling")
    parser.add_argument("--train-batch", type=int, default=2, help="(sample, step) pairs per training forward")
    parser.add_argument("--objective", choices=("grpo", "nft"), default="grpo", help="the training pass measured")
    parser.add_argument("--nft-draws", type=int, default=2, help="NFT: noised copies per kept sample")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-critic", action="store_true", help="skip the 7B SpatialScore")
    parser.add_argument(
        "--cudnn-attention",
        action="store_true",
        help="allow cuDNN's fused attention (its backward failed here on H100 with torch 2.11+cu130; off: flash)",
    )
    parser.add_argument("--compile", action="store_true", help="regional torch.compile of the transformer blocks")
    parser.add_argument("--sampling-attention", choices=tuple(ATTENTION_BACKENDS), help="SDPA backend, no-grad passes")
    parser.add_argument("--training-attention", choices=tuple(ATTENTION_BACKENDS), help="SDPA backend, grad passes")
    parser.add_argument("--beta", type=float, default=0.01, help="KL weight; 0 skips the reference forward")
    parser.add_argument("--kl-form", choices=("flow_grpo", "gaussian"), default="flow_grpo")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if min(args.group, args.keep_per_side, args.steps, args.sample_batch, args.train_batch, args.nft_draws) < 1:
        parser.error("sizes must be positive")
    if 2 * args.keep_per_side > args.group:
        parser.error(f"--keep-per-side {args.keep_per_side} exceeds half of --group {args.group}")
    if args.beta < 0:
        parser.error(f"--beta must be >= 0, got {args.beta}")
    return args


def build_transformer(args: argparse.Namespace, device: torch.device) -> FluxTransformer2DModel:
    """The transformer with LoRA, built on meta then materialised in bf16 with random weights."""
    config = FLUX_DEV if args.size == "flux-dev" else TINY
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**config)
        add_lora(transformer, rank=args.lora_rank, target_modules=FLUX_LORA_TARGETS)
    transformer = transformer.to_empty(device=device).to(torch.bfloat16)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if "lora_B" in name:
                parameter.zero_()
            elif parameter.ndim >= 2:
                parameter.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.fill_(1.0)
    for parameter in transformer.parameters():  # LoRA in fp32, as mixed precision trains it
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer


def load_sibling(name: str):
    """A script beside this one as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_reward_bench():
    return load_sibling("reward_gpu")


flops = load_sibling("flops")


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def phase_flops(args: argparse.Namespace, config: dict, tokens: int, pairs: int) -> dict[str, int]:
    """Model FLOPs of the sampling and the training pass (bench/flops.py's convention): sampling G x steps adapted
    forwards; GRPO training per pair an adapted forward, its backward (once more) and, when beta > 0, the
    reference (base) forward; NFT per pair the rollout policy's forward, the adapted forward and its backward."""
    adapted = flops.flux_forward_flops(config, tokens, args.text_tokens, args.lora_rank)
    base = flops.flux_forward_flops(config, tokens, args.text_tokens)
    training = 3 * adapted if args.objective == "nft" else 2 * adapted + (base if args.beta > 0 else 0)
    return {"sampling": args.group * args.steps * adapted, "training": pairs * training}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/rl_gpu.py needs a CUDA GPU (none is visible); --device cpu --size tiny runs the CPU check")
        sys.exit(2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cuda.enable_cudnn_sdp(
            args.cudnn_attention or "cudnn" in (args.sampling_attention, args.training_attention)
        )
    config = FLUX_DEV if args.size == "flux-dev" else TINY
    started = time.perf_counter()
    transformer = build_transformer(args, device)
    if args.compile:
        compile_transformer_blocks(transformer)
    critic = None
    if not args.no_critic:
        reward_bench = load_reward_bench()
        reward_args = reward_bench.parse_args(["--size", "7b" if args.size == "flux-dev" else "tiny"])
        critic = reward_bench.materialize(reward_bench.build_on_meta(reward_args), device).eval()
    build_seconds = time.perf_counter() - started

    side = args.resolution // 16  # FLUX.1-dev: 8x VAE, then 2 x 2 packing: 1 token per 16 x 16 pixels
    tokens, channels = side * side, config["in_channels"]
    text = torch.randn(1, args.text_tokens, config["joint_attention_dim"], device=device, dtype=torch.bfloat16)
    pooled = torch.randn(1, config["pooled_projection_dim"], device=device, dtype=torch.bfloat16)
    txt_ids = torch.zeros(args.text_tokens, 3, device=device, dtype=torch.bfloat16)
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, columns], -1).reshape(-1, 3).to(device, torch.bfloat16)
    sigmas = flux_sigmas(args.steps, flux_shift_mu(tokens)).to(device)

    def velocity(latents: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        batch = latents.shape[0]
        backend = args.training_attention if torch.is_grad_enabled() else args.sampling_attention
        with attention_backend(backend):
            return _velocity(latents, sigma, batch)

    def _velocity(latents: torch.Tensor, sigma: torch.Tensor, batch: int) -> torch.Tensor:
        return transformer(
            hidden_states=latents,
            timestep=sigma.to(latents.dtype),
            guidance=torch.full((batch,), 3.5, device=device),
            pooled_projections=pooled.expand(batch, -1),
            encoder_hidden_states=text.expand(batch, -1, -1),
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]

    # --- warm-up: sampling forwards at each batch size (the training pass warms up below), so that compilation and
    # autotuning are not timed
    with torch.no_grad():
        for size in {min(args.sample_batch, args.group), args.group % args.sample_batch} - {0}:
            warm = torch.randn(size, tokens, channels, device=device).to(torch.bfloat16)
            velocity(warm, sigmas[0].expand(size))

    # --- sampling one group --------------------------------------------------------------------------------------
    generator = torch.Generator(device=device).manual_seed(0)
    synchronize(device)
    reset_peak(device)
    start = time.perf_counter()
    states, log_probs = [], []
    with torch.no_grad():
        for first in range(0, args.group, args.sample_batch):
            count = min(args.sample_batch, args.group - first)
            latents = torch.randn(count, tokens, channels, device=device, generator=generator).to(torch.bfloat16)
            chain, chain_log_probs = [latents], []
            for step in range(args.steps):
                sigma = sigmas[step].expand(count)
                if step < args.steps - 1:
                    result = sde_step_with_logprob(
                        velocity(latents, sigma), latents, sigmas[step], sigmas[step + 1], 0.8, generator=generator
                    )
                    latents = result.prev_sample
                    chain_log_probs.append(result.log_prob)
                else:
                    latents = (latents.float() + velocity(latents, sigma).float() * (sigmas[-1] - sigmas[-2])).to(
                        torch.bfloat16
                    )
                chain.append(latents)
            states.append(torch.stack(chain, 1))
            log_probs.append(torch.stack(chain_log_probs, 1))
    synchronize(device)
    sampling_seconds = time.perf_counter() - start
    sampling_peak = peak_gib(device)
    states, log_probs = torch.cat(states), torch.cat(log_probs)  # [G, T + 1, N, C], [G, T - 1]
    print(f"sampled one group in {sampling_seconds:.3f} s", file=sys.stderr, flush=True)

    scoring_seconds, scoring_flops = None, None
    if critic is not None:
        batch = min(8, args.group)
        inputs = reward_bench.make_inputs(critic, batch, 200_704, 120, 0).to(device)  # 8 images at the 7B budget
        scoring_flops = -(-args.group // batch) * sum(reward_bench.forward_flops(critic, inputs).values())
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(0, args.group, batch):
                critic(**inputs)
        synchronize(device)
        scoring_seconds = time.perf_counter() - start

    # --- training pass on the kept samples --------------------------------------------------------------------------
    kept = 2 * args.keep_per_side
    second = range(args.nft_draws) if args.objective == "nft" else range(args.steps - 1)
    pairs = [(sample, step) for sample in range(kept) for step in second]
    optimizer = torch.optim.AdamW(list(trainable_parameters(transformer).values()), lr=3e-4)
    advantages = torch.linspace(-1, 1, kept, device=device)

    def train_chunk(chunk: list[tuple[int, int]]) -> None:
        """Forward and backward of one micro-batch of (sample, step) pairs, gradients accumulated."""
        samples = torch.tensor([s for s, _ in chunk], device=device)
        steps = torch.tensor([t for _, t in chunk], device=device)
        if args.objective == "nft":  # re-noise the final latents; copy d at the sigma of step d mod (steps - 1)
            clean, sigma = states[samples, -1], sigmas[steps % max(args.steps - 1, 1)]
            noise = torch.randn(clean.shape, device=device, generator=generator, dtype=clean.dtype)
            noised = noised_latents(clean, noise, sigma).to(torch.bfloat16)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                with torch.no_grad():
                    old = velocity(noised, sigma)
                terms = nft_loss(
                    velocity(noised, sigma).float(),
                    old.float(),
                    (noise - clean).float(),
                    sigma,
                    optimality_probability(advantages[samples], 5.0),
                )
            (5.0 * terms.loss.mean() * len(chunk) / len(pairs)).backward()
            return
        latents, following = states[samples, steps], states[samples, steps + 1]
        sigma, sigma_next = sigmas[steps], sigmas[steps + 1]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            step = sde_step_with_logprob(
                velocity(latents, sigma), latents, sigma, sigma_next, 0.8, prev_sample=following
            )
            loss = grpo_clip_loss(step.log_prob, log_probs[samples, steps], advantages[samples]).loss
            if args.beta > 0:
                with torch.no_grad(), reference_policy(transformer):
                    reference = sde_step_with_logprob(
                        velocity(latents, sigma), latents, sigma, sigma_next, 0.8, prev_sample=following
                    )
                loss = loss + args.beta * kl_to_reference(step, reference.mean, args.kl_form).mean()
        (loss * len(chunk) / len(pairs)).backward()

    chunks = [pairs[first : first + args.train_batch] for first in range(0, len(pairs), args.train_batch)]
    for chunk in {len(chunk): chunk for chunk in chunks}.values():  # warm-up at each micro-batch size, untimed
        train_chunk(chunk)
    transformer.zero_grad(set_to_none=True)
    synchronize(device)
    print(f"critic scored the group in {scoring_seconds} s", file=sys.stderr, flush=True)
    reset_peak(device)
    start = time.perf_counter()
    for chunk in chunks:
        train_chunk(chunk)
    optimizer.step()
    synchronize(device)
    training_seconds = time.perf_counter() - start
    training_peak = peak_gib(device)
    counted = phase_flops(args, config, tokens, len(pairs))

    result = {
        "size": args.size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "transformer_parameters": sum(p.numel() for p in transformer.parameters()),
        "lora_parameters": sum(p.numel() for p in trainable_parameters(transformer).values()),
        "group": args.group,
        "steps": args.steps,
        "resolution": args.resolution,
        "build_seconds": round(build_seconds, 2),
        "sampling_seconds_per_group": round(sampling_seconds, 3),
        "sampling_images_per_second": round(args.group / sampling_seconds, 3),
        "training_seconds_kept_samples": round(training_seconds, 3),
        "objective": args.objective,
        "trained_pairs": len(pairs),
        "critic_scoring_seconds_per_group": None if scoring_seconds is None else round(scoring_seconds, 3),
        "peak_memory_gib": peak_gib(device) if device.type != "cuda" else max(sampling_peak, training_peak),
        "sampling_peak_memory_gib": sampling_peak,
        "training_peak_memory_gib": training_peak,
        "switches": {
            name: getattr(args, name)
            for name in ("compile", "sampling_attention", "training_attention", "sample_batch", "train_batch", "beta")
        },
        "sampling_flop": counted["sampling"],
        "sampling_mfu": flops.mfu(counted["sampling"], sampling_seconds),
        "training_flop": counted["training"],
        "training_mfu": flops.mfu(counted["training"], training_seconds),
        "critic_flop": scoring_flops,
        "critic_mfu": None if scoring_seconds is None else flops.mfu(scoring_flops, scoring_seconds),
        "end_to_end_seconds": round(sampling_seconds + (scoring_seconds or 0.0) + training_seconds, 3),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
