"""Research probe (docs/research/generator.md, 2026-12-06 tenth session): does the layout head of a run with
`--layout-loss-weight` read each object's place from the prompt alone?

For every val pair whose two prompts differ (the perturbed prompt states the broken relation the other way), the head
of the run's last checkpoint (the live weights: the head has no EMA copy) predicts each image token's object colour at
pure noise (sigma 1: no image information, only the prompt) under the perfect prompt and under the perturbed one. Its
cross-entropy against the perfect scene's layout (the training target) should be lower under the perfect prompt: the
share where it is, by the pair's broken family (chance .5), and the mean margin. Then the same at sigma .7.

    python docs/research/generator_probes/layout_head_probe.py RUN_DIR --pipeline TEXT_STAGE_PIPELINE [--data DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from data_synthesis import load_pairs
from data_synthesis.scene import COLOURS
from rl_policy.layout_head import layout_loss, layout_targets
from rl_policy.policy import FluxPolicy, load_pipeline
from rl_policy.pretrain import GeneratorPretrainModule, load_split_images, load_split_objects
from rl_policy.sde import noised_latents

SIGMAS = (1.0, 0.7)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a pretrain --out dir with --layout-loss-weight")
    parser.add_argument("--pipeline", required=True, help="the pipeline the run started from (its text encoders)")
    parser.add_argument("--data", default="data/spatialworld-rl")
    parser.add_argument("--split", default="val")
    parser.add_argument("--draws", type=int, default=4, help="noise draws per image")
    arguments = parser.parse_args()
    torch.manual_seed(0)
    dataset_dir, (_, frame) = Path(arguments.data), load_pairs(arguments.data)
    frame = frame[(frame["split"] == arguments.split) & (frame["perturbed_prompt"] != frame["prompt"])]
    policy = FluxPolicy(load_pipeline(arguments.pipeline, torch_dtype=torch.float32), max_sequence_length=97)
    module = GeneratorPretrainModule(policy, layout_loss_weight=1.0)
    state = torch.load(arguments.run / "logs/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"], strict=False)
    module.eval()
    images = load_split_images(dataset_dir, frame, 32).float() / 255
    regions, colours = load_split_objects(list(frame["perfect_scene"]), 32)
    regions = regions.float() / 255
    clean = policy.encode_images(images)
    # one target per pair (the perfect scene's layout), scored per sample under both prompts
    target = layout_targets(regions, colours, policy.latent_grid(32, 32), len(COLOURS))
    table: dict[str, dict] = {}
    for sigma in SIGMAS:
        margins = torch.zeros(len(frame))
        for draw in range(arguments.draws):
            noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(draw))
            level = torch.full((len(frame),), sigma)
            noisy = noised_latents(clean, noise, level)
            losses = []
            for prompts in (list(frame["prompt"]), list(frame["perturbed_prompt"])):
                embeddings = policy.encode_prompts(prompts)
                module.policy.velocity(noisy, level, embeddings, 32, 32)  # fills module.layout_features
                losses.append(layout_loss(module.layout_head(module.layout_features), target))  # [pairs]
            margins += (losses[1] - losses[0]) / arguments.draws
        for family in sorted(set(frame["broken_families"])):
            rows = torch.tensor([name == family for name in frame["broken_families"]])
            table.setdefault(family, {"n": int(rows.sum())})
            table[family][f"own prompt preferred, sigma {sigma}"] = round((margins[rows] > 0).float().mean().item(), 3)
            table[family][f"mean margin, sigma {sigma}"] = round(margins[rows].mean().item(), 4)
    print(json.dumps({"run": str(arguments.run), "split": arguments.split, "by_broken_family": table}, indent=1))


if __name__ == "__main__":
    main()
