"""Stage A (verification + image-text matching) of the tiny SpatialScore backbone, with a learning curve.

Every `--eval-every` steps: held-out sentence / match / mention-binding accuracy and the sentence and match AUROCs
(stage-A val stream), and the pairwise accuracy on the first `--eval-pairs` pairs of the SpatialWorld test split
(both orientations) of two zero-shot rewards: the matching logit (`acc*`) and the verifier score, the sum of
log-sigmoid verdicts over the relation sentences (`ver_acc*`). Prints one JSON line per evaluation and writes the
backbone dir at each.

  OMP_NUM_THREADS=1 .venv/bin/python experiments/reward_tiny/stage_a_verify.py --steps 1500 --out runs/stage_a/v1
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from evaluate import load_test_pairs, pairwise_accuracy
from torch.utils.data import DataLoader

from data_synthesis import WorldConfig
from reward_model.grounding import (
    GroundingPretrainModule,
    PromptPhase,
    VerificationCollator,
    VerificationStream,
    build_grounding_network,
    load_grounding_heads,
    parse_prompt_curriculum,
    save_grounded_backbone,
    simple_verification_example,
    validation_examples,
)
from reward_model.model import build_spatialscore, tiny_backbone_config
from reward_model.pretrain import warmup_cosine
from reward_model.tokenizer import REWARD_TOKEN, build_spatialworld_processor
from shared import stable_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--text-hidden", type=int, default=128)
    parser.add_argument("--text-intermediate", type=int, default=256)
    parser.add_argument("--vision-hidden", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--max-pixels", type=int, default=140 * 140)
    parser.add_argument("--verdict-layer", type=int, default=None)
    parser.add_argument("--match-weight", type=float, default=1.0)
    parser.add_argument("--colour-weight", type=float, default=1.0)
    parser.add_argument("--binding-weight", type=float, default=0.0, help="mention -> object cell loss")
    parser.add_argument("--binding-layer", type=int, default=None, help="decoder layer the binding head reads")
    parser.add_argument("--bind-colour-words", action="store_true", help="bind the mention's colour word too")
    parser.add_argument("--image-cell-weight", type=float, default=0.0, help="image tokens' own-cell loss")
    parser.add_argument("--slot-weight", type=float, default=0.0, help="sentence end -> its objects' cells loss")
    parser.add_argument("--coord-weight", type=float, default=0.0, help="mention (x, y) and sentence offset MSE")
    parser.add_argument("--stated-weight", type=float, default=0.0, help="sentence kind CE + stated offset MSE")
    parser.add_argument("--stated-all-kinds", action="store_true", help="stated margins of every relation kind")
    parser.add_argument(
        "--prompt-curriculum", type=str, default=None, help='step:max_relations:families,... e.g. "0:2:hv,600:8:all"'
    )
    parser.add_argument("--curriculum", type=str, default="0:3,300:4,600:6", help="step:max_objects,...")
    parser.add_argument("--min-objects", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-pairs", type=int, default=300)
    parser.add_argument("--val-size", type=int, default=256)
    parser.add_argument(
        "--easy-val-size", type=int, default=0, help="also validate on this many left/right/above/below examples"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-from", type=Path, default=None, help="a stage-A dir to start from (same sizes)")
    parser.add_argument(
        "--stop-after", type=int, default=None, help="stop after this many steps (the lr schedule stays --steps')"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)

    curriculum = [tuple(int(v) for v in item.split(":")) for item in args.curriculum.split(",")]
    config = tiny_backbone_config(
        text_hidden_size=args.text_hidden,
        text_layers=args.text_layers,
        text_intermediate_size=args.text_intermediate,
        vision_hidden_size=args.vision_hidden,
        vision_layers=args.vision_layers,
    )
    processor = build_spatialworld_processor(max_pixels=args.max_pixels)
    processor.tokenizer.add_tokens([REWARD_TOKEN], special_tokens=True)  # already an id of the tiny tokenizer
    reward_token_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    network = build_grounding_network(
        config, reward_token_id, verdict_layer=args.verdict_layer, binding_layer=args.binding_layer
    )
    if args.init_from is not None:  # weights only: the optimizer and the data stream start afresh
        state = build_spatialscore(args.init_from, lora_rank=None).backbone.state_dict()
        network.backbone.load_state_dict(state)
        load_grounding_heads(network, args.init_from)
    module = GroundingPretrainModule(
        network,
        functools.partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.01),
        match_weight=args.match_weight,
        colour_weight=args.colour_weight,
        binding_weight=args.binding_weight,
        image_cell_weight=args.image_cell_weight,
        slot_weight=args.slot_weight,
        coord_weight=args.coord_weight,
        stated_weight=args.stated_weight,
    )
    optimizer = module.optimizer_factory(network.parameters())
    scheduler = warmup_cosine(optimizer, warmup_steps=args.warmup, total_steps=args.steps)
    collate = VerificationCollator(
        processor, bind_colour_words=args.bind_colour_words, stated_all_kinds=args.stated_all_kinds
    )
    phases = parse_prompt_curriculum(args.prompt_curriculum) if args.prompt_curriculum else (PromptPhase(0),)
    stream = VerificationStream(
        seed=args.seed,
        batch_size=args.batch_size,
        curriculum=curriculum,
        min_objects=args.min_objects,
        prompt_curriculum=phases,
    )
    loader = iter(DataLoader(stream, batch_size=args.batch_size, collate_fn=collate, num_workers=1))
    val_batches = [collate(chunk) for chunk in _chunks(validation_examples(args.seed, args.val_size), 64)]
    easy_world = WorldConfig(min_objects=3, max_objects=6)
    easy_examples = [
        simple_verification_example(stable_seed("stage-a-verify", args.seed, "val-easy", i), easy_world)
        for i in range(args.easy_val_size)
    ]
    easy_batches = [collate(chunk) for chunk in _chunks(easy_examples, 64)]
    test_pairs = load_test_pairs(Path("data/spatialworld"), args.eval_pairs)
    print(json.dumps({"parameters": sum(p.numel() for p in network.parameters()), "args": vars(args)}, default=str))

    history, started, running = [], time.time(), []
    last = min(args.steps, args.stop_after or args.steps)
    for step in range(1, last + 1):
        network.train()
        loss, metrics = module.step(next(loader))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running.append({k: float(v) for k, v in metrics.items()})
        if step % args.eval_every == 0 or step == last:
            record = {"step": step, "minutes": round((time.time() - started) / 60, 2)}
            record |= {f"train_{k}": round(sum(r[k] for r in running) / len(running), 4) for k in running[0]}
            running = []
            network.eval()
            record |= _validate(module, val_batches)
            if easy_batches:
                record |= {k.replace("val_", "easy_"): v for k, v in _validate(module, easy_batches).items()}
            with torch.no_grad():
                scores = _pair_scores(network, processor, collate.period_id, test_pairs)
            record |= {k: v for k, v in pairwise_accuracy(_replay(scores, 0), test_pairs).items()}
            record |= {f"ver_{k}": v for k, v in pairwise_accuracy(_replay(scores, 1), test_pairs).items()}
            history.append(record)
            print(json.dumps(record), flush=True)
            arguments = {k: str(v) for k, v in vars(args).items()}
            save_grounded_backbone(network, processor, args.out, metrics={"history": history, "args": arguments})


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counting half."""
    positive, negative = scores[labels > 0.5], scores[labels <= 0.5]
    if not len(positive) or not len(negative):
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).float() + 0.5 * (positive[:, None] == negative[None, :]).float()
    return float(greater.mean())


@torch.no_grad()
def _validate(module: GroundingPretrainModule, batches: list) -> dict[str, float]:
    """Mean val metrics over the batches, plus verdict and match AUROCs over all of them."""
    metrics, sentence, truth, match, matches = [], [], [], [], []
    for batch in batches:
        metrics.append(module.step(batch)[1])
        output = module.network(batch.inputs, batch.sentence_ends, batch.mentions)
        sentence.append(output.sentence_logits), truth.append(batch.sentence_truth)
        match.append(output.match_logits), matches.append(batch.matches)
    record = {f"val_{k}": round(float(sum(m[k] for m in metrics) / len(metrics)), 4) for k in metrics[0]}
    record["val_auroc_verdict"] = round(auroc(torch.cat(sentence), torch.cat(truth)), 4)
    record["val_auroc_match"] = round(auroc(torch.cat(match), torch.cat(matches)), 4)
    return record


INTRO_STARTS = ("an image of", "the picture shows", "the scene is", "there is")


def relation_sentence_count(prompt: str) -> int:
    """Sentences of a SpatialWorld prompt that state relations (those not introducing the scene or an object)."""
    sentences = [s.strip().lower() for s in prompt.split(".") if s.strip()]
    return sum(not s.startswith(INTRO_STARTS) for s in sentences)


def _pair_scores(network, processor, period_id: int, pairs, batch_size: int = 32) -> list[torch.Tensor]:
    """Per chunk of pairs as `pairwise_accuracy` orders them: [2, 4 * chunk] (matching logit, verifier score)."""
    from reward_model.model import encode

    result = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        prompts = [p.prompt for p in chunk] * 2 + [p.perturbed_prompt for p in chunk] * 2
        images = [p.perfect_image for p in chunk] + [p.perturbed_image for p in chunk]
        inputs = dict(encode(processor, prompts, images + images))
        ends = []
        for row, prompt in enumerate(prompts):
            periods = (inputs["input_ids"][row] == period_id).nonzero().flatten().tolist()
            ends += [(row, position) for position in periods[len(periods) - relation_sentence_count(prompt) :]]
        ends = torch.tensor(ends, dtype=torch.long)
        output = network(inputs, ends)
        verifier = torch.zeros(len(prompts)).index_add_(0, ends[:, 0], F.logsigmoid(output.sentence_logits.float()))
        result.append(torch.stack([output.match_logits.float(), verifier]))
    return result


def _replay(scores: list[torch.Tensor], which: int):
    """A scoring function for `pairwise_accuracy` that returns precomputed scores chunk by chunk."""
    chunks = iter(scores)
    return lambda prompts, images: next(chunks)[which]


if __name__ == "__main__":
    main()
