"""What does a critic like in the generator's samples? Within each prompt's 24 samples of the rollout that
critic_agreement.py cached (run it first), the Spearman correlation of each critic's score with the oracle's
relation accuracy, with whether every named object was found, and with how much ink the image has; averaged over
the 16 prompts.

    OMP_NUM_THREADS=1 python experiments/rl_tiny/critic_likes.py --critic b9=runs/reward/tiny_b9/export
"""

import argparse

import torch
from safetensors.torch import load_file

from data_synthesis import SpatialWorldOracle
from reward_model import SpatialScorer
from rl_policy.data import load_prompts

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--critic", action="append", required=True, help="NAME=DIR: a reward export dir")
parser.add_argument("--images", default="runs/rl/critic_agreement_images.safetensors", help="rollout cache")
args = parser.parse_args()
torch.set_num_threads(1)
images = load_file(args.images)["images"]
prompt_count, group = images.shape[0] // 24, 24
records = load_prompts("data/spatialworld-rl", "train")[:prompt_count]
oracle = SpatialWorldOracle()
accuracy, found = torch.zeros(prompt_count, group), torch.zeros(prompt_count, group)
for i, record in enumerate(records):
    for j in range(group):
        verdict = oracle.judge(images[i * group + j], record.metadata)
        accuracy[i, j] = verdict.accuracy
        found[i, j] = float(verdict.all_found)


def spearman(a, b):
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    d = ra.norm() * rb.norm()
    return float(ra @ rb / d) if d > 0 else float("nan")


ink = (images.float() / 255).view(prompt_count, group, 3, -1)
darkness = (1 - ink.mean(2)).mean(-1)  # share of non-background-ish ink per image
prompts = [r.prompt for r in records for _ in range(group)]
for critic_spec in args.critic:
    name, _, directory = critic_spec.partition("=")
    critic = SpatialScorer.from_pretrained(directory)(prompts=prompts, images=list(images)).view(prompt_count, group)
    for label, values in (("oracle accuracy", accuracy), ("every object found", found), ("mean darkness", darkness)):
        rhos = [spearman(critic[i], values[i]) for i in range(prompt_count)]
        rhos = [r for r in rhos if r == r]
        print(
            f"{name}: {label}: mean within-prompt Spearman {sum(rhos) / max(len(rhos), 1):.3f} over {len(rhos)} prompts"
        )
