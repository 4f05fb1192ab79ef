"""What does the critic like in the generator's samples? Within each prompt's 24 samples of the rollout that
critic_agreement.py cached (run it first), the Spearman correlation of the B-v9 critic's score with the oracle's
relation accuracy, with whether every named object was found, and with how much ink the image has; averaged over
the 16 prompts.

    OMP_NUM_THREADS=1 python experiments/rl_tiny/critic_likes.py
"""

import torch
from safetensors.torch import load_file

from data_synthesis import SpatialWorldOracle
from reward_model import SpatialScorer
from rl_policy.data import load_prompts

torch.set_num_threads(1)
records = load_prompts("data/spatialworld-rl", "train")[:16]
images = load_file("runs/rl/critic_agreement_images.safetensors")["images"]
oracle = SpatialWorldOracle()
scorer = SpatialScorer.from_pretrained("runs/reward/tiny_b9/export")
prompts = [r.prompt for r in records for _ in range(24)]
critic = scorer(prompts=prompts, images=list(images)).view(16, 24)
accuracy, found = torch.zeros(16, 24), torch.zeros(16, 24)
for i, record in enumerate(records):
    for j in range(24):
        verdict = oracle.judge(images[i * 24 + j], record.metadata)
        accuracy[i, j] = verdict.accuracy
        found[i, j] = float(verdict.all_found)


def spearman(a, b):
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    d = ra.norm() * rb.norm()
    return float(ra @ rb / d) if d > 0 else float("nan")


ink = (images.float() / 255).view(16, 24, 3, -1)
darkness = (1 - ink.mean(2)).mean(-1)  # share of non-background-ish ink per image
for name, values in (("oracle accuracy", accuracy), ("every object found", found), ("mean darkness", darkness)):
    rhos = [spearman(critic[i], values[i]) for i in range(16)]
    rhos = [r for r in rhos if r == r]
    print(f"{name}: mean within-prompt Spearman {sum(rhos) / max(len(rhos), 1):.3f} over {len(rhos)} prompts")
