"""Held-out sentence-verdict AUROC of a stage-A (verification) dir, by relation family, on the stage-A val stream
(3-6 objects, the full prompt distribution with the perturbation's hard negatives).

  OMP_NUM_THREADS=1 .venv/bin/python experiments/reward_tiny/verdict_by_family.py runs/stage_a/v10 [--size 256]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from stage_a_verify import auroc

from data_synthesis.relations import KINDS
from reward_model.grounding import GroundingNetwork, VerificationCollator, load_grounding_heads, validation_examples
from reward_model.model import build_spatialscore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone_dir", type=Path)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_spatialscore(args.backbone_dir, lora_rank=None)
    network = GroundingNetwork(model.backbone, model.reward_token_id).eval()
    load_grounding_heads(network, args.backbone_dir)
    collate = VerificationCollator(model.processor)
    examples = validation_examples(args.seed, args.size)
    logits, truth, families = [], [], []
    with torch.no_grad():
        for start in range(0, len(examples), 64):
            chunk = examples[start : start + 64]
            batch = collate(chunk)
            logits.append(network(batch.inputs, batch.sentence_ends).sentence_logits)
            truth.append(batch.sentence_truth)
            families += [KINDS[r.kind][2] for e in chunk for r in e.relations]
    logits, truth = torch.cat(logits), torch.cat(truth)
    result = {"all": {"sentences": len(truth), "auroc": round(auroc(logits, truth), 4)}}
    for family in dict.fromkeys(KINDS[k][2] for k in KINDS):
        mask = torch.tensor([f == family for f in families])
        result[family] = {"sentences": int(mask.sum()), "auroc": round(auroc(logits[mask], truth[mask]), 4)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
