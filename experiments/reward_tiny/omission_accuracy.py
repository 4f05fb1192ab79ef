"""Does a critic prefer an image with every named object to the same image missing one? On omission pairs of the
test split (reward_model.data.Omission: the winner's scene re-rendered with one object left out, both
orientations), the share where the critic scores the winner higher, overall and by the number of objects.

    OMP_NUM_THREADS=1 python experiments/reward_tiny/omission_accuracy.py --pairs 1000 \
        --critic b9=runs/reward/tiny_b9/export --critic omission=runs/reward/tiny_omission/export
"""

import argparse
import json
from collections import defaultdict

import torch
from tqdm import tqdm

from data_synthesis.scene import Scene
from reward_model import Omission, PairwiseDataModule, PairwiseDataset, SpatialScorer
from reward_model.data import render_settings

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--critic", action="append", required=True, help="NAME=DIR: a reward export dir")
parser.add_argument("--data", default="data/spatialworld")
parser.add_argument("--pairs", type=int, default=1000, help="omission pairs drawn from the test split")
parser.add_argument("--batch", type=int, default=32)
args = parser.parse_args()
torch.set_num_threads(1)

datamodule = PairwiseDataModule(
    args.data, processor="checkpoints/reward_tiny_stage_a"
)  # setup needs one; scorers encode
datamodule.setup("test")
records = datamodule.records["test"]
fraction = args.pairs / (2 * len(records))
dataset = PairwiseDataset(records, "both", None, Omission(fraction=fraction, seed=1), render_settings(datamodule.meta))
examples = [dataset[dataset.num_pairs + i] for i in range(dataset.num_omission)]
objects = {r.pair_id: len(Scene.from_json(r.perfect_scene).objects) for r in records}

results = {}
for spec in args.critic:
    name, _, directory = spec.partition("=")
    scorer = SpatialScorer.from_pretrained(directory)
    correct, by_count = [], defaultdict(list)
    for first in tqdm(range(0, len(examples), args.batch), desc=name):
        chunk = examples[first : first + args.batch]
        prompts = [e.prompt for e in chunk]
        winners = scorer(prompts=prompts, images=[e.winner for e in chunk])
        losers = scorer(prompts=prompts, images=[e.loser for e in chunk])
        for example, win, lose in zip(chunk, winners.tolist(), losers.tolist(), strict=True):
            correct.append(win > lose)
            by_count[objects[example.pair_id.split("-omission-")[0]]].append(win > lose)
    results[name] = {
        "accuracy": sum(correct) / len(correct),
        "pairs": len(correct),
        "by_objects": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_count.items())},
    }
    print(name, json.dumps(results[name]))
