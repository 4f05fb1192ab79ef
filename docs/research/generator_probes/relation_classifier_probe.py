"""Research probe (docs/research/generator.md, 2026-12-06 seventh session): does a generator's conditional model tell
a pair's two prompts apart, as a diffusion classifier?

Each SpatialWorld pair has a perfect image with its prompt and a perturbed image with the perturbed prompt; the two
prompts differ only in the broken relations (e.g. "left of" -> "right of"). For each image, the rectified-flow
error under its own prompt and under the other side's prompt, at the same noisy latents, averaged over a fixed grid
of noise levels and noise draws: right when its own prompt gives the lower error (chance .5). Reported by the pair's
broken family and noise level. A generator whose sampling follows a relation must at least assign its pictures the
lower error under the prompt that states it.

    python docs/research/generator_probes/relation_classifier_probe.py PIPELINE_DIR [--data DIR] [--split val]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from data_synthesis import load_pairs
from rl_policy.policy import FluxPolicy, load_pipeline
from rl_policy.pretrain import load_split_images
from rl_policy.sde import noised_latents

SIGMAS = (0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline")
    parser.add_argument("--data", default="data/spatialworld-rl")
    parser.add_argument("--split", default="val")
    parser.add_argument("--draws", type=int, default=4, help="noise draws per noise level")
    parser.add_argument("--batch", type=int, default=64)
    arguments = parser.parse_args()
    torch.manual_seed(0)
    dataset_dir, (_, frame) = Path(arguments.data), load_pairs(arguments.data)
    frame = frame[(frame["split"] == arguments.split) & (frame["perturbed_prompt"] != frame["prompt"])]
    policy = FluxPolicy(load_pipeline(arguments.pipeline, torch_dtype=torch.float32), max_sequence_length=97)
    perturbed = frame.assign(perfect_image=frame["perturbed_image"])
    images = torch.cat([load_split_images(dataset_dir, frame, 32), load_split_images(dataset_dir, perturbed, 32)])
    images = images.float() / 255
    own = list(frame["prompt"]) + list(frame["perturbed_prompt"])
    other = list(frame["perturbed_prompt"]) + list(frame["prompt"])
    families = list(frame["broken_families"]) * 2
    # errors[sigma] -> [2 * pairs] summed over draws, under own and other prompt
    errors = {sigma: torch.zeros(2, len(own)) for sigma in SIGMAS}
    for start in range(0, len(own), arguments.batch):
        end = min(start + arguments.batch, len(own))
        clean = policy.encode_images(images[start:end])
        for prompts, row in ((own[start:end], 0), (other[start:end], 1)):
            embeddings = policy.encode_prompts(prompts)
            generator = torch.Generator().manual_seed(start)  # the same noise for both prompts
            for sigma in SIGMAS:
                for _ in range(arguments.draws):
                    noise = torch.randn(clean.shape, generator=generator)
                    level = torch.full((end - start,), sigma)
                    velocity = policy.velocity(noised_latents(clean, noise, level), level, embeddings, 32, 32)
                    error = (velocity - (noise - clean)).square().flatten(1).mean(1)  # the flow loss per image
                    errors[sigma][row, start:end] += error
    table = {}
    total = sum(errors.values())
    for family in sorted(set(families)):
        rows = [i for i, name in enumerate(families) if name == family]
        table[family] = {"n": len(rows), "all sigmas": (total[0, rows] < total[1, rows]).float().mean().item()}
        for sigma in SIGMAS:
            table[family][f"sigma {sigma}"] = (errors[sigma][0, rows] < errors[sigma][1, rows]).float().mean().item()
    print(json.dumps({"pipeline": arguments.pipeline, "split": arguments.split, "accuracy": table}, indent=1))


if __name__ == "__main__":
    main()
