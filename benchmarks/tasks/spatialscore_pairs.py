"""`spatialscore-pairs`: how often a judge prefers the perfect image of a SpatialWorld test pair (the paper's reward
pairwise accuracy: 95.8% overall, 93.9% with one broken relation, 97.8% with 2-3).

Each pair is read in two directions: forward (the prompt; the perfect image should win) and reversed (the
perturbed prompt, which states the broken relations' opposites; the perturbed image should win).

- `ImageScorer`: a direction is correct when mean(winner) > mean(loser); an exact tie is counted wrong and also
  reported on its own (`ties`, `tie_rate`).
- `PairwiseJudge`: asked in both image orders (winner first, then winner second); a direction scores
  (correct in order 1 + correct in order 2) / 2, so a judge that always says "first" scores 0.5. Order
  consistency: the fraction of directions where both orders pick the same image. Ties and unreadable verdicts
  count as wrong and inconsistent, and are counted.
Accuracy is reported overall, by number of broken relations ("1", "2", "3", and "2-3" as the paper groups them),
and on the reversed direction.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from benchmarks.tasks.base import RunInputs, Sample, rate, require, table
from data_synthesis import load_pairs

BROKEN_GROUPS = {"1": (1,), "2": (2,), "3": (3,), "2-3": (2, 3)}
DIRECTIONS = ("forward", "reversed")


def scorer_outcome(winner: float, loser: float) -> str:
    """ "correct" (winner's mean is higher), "tie" (exactly equal) or "wrong"."""
    if winner > loser:
        return "correct"
    return "tie" if winner == loser else "wrong"


def pairwise_outcome(winner_first: str | None, winner_second: str | None) -> tuple[float, bool]:
    """(score, consistent) of one direction from the verdicts with the winner shown first and second:
    score = ([v1 == "first"] + [v2 == "second"]) / 2; consistent when both name the same image."""
    score = ((winner_first == "first") + (winner_second == "second")) / 2
    consistent = (winner_first, winner_second) in (("first", "second"), ("second", "first"))
    return score, consistent


def _by_broken(scores: list[float], broken: list[int]) -> dict[str, float | None]:
    by_group = {}
    for group, counts in BROKEN_GROUPS.items():
        chosen = [score for score, num_broken in zip(scores, broken, strict=True) if num_broken in counts]
        by_group[group] = rate(sum(chosen), len(chosen))
    return by_group


def summarize_scorer(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (ties wrong) overall and by broken count, forward and reversed; tie counts and rates."""
    broken = [r["num_broken"] for r in records]
    summary: dict[str, Any] = {"num_pairs": len(records)}
    for direction in DIRECTIONS:
        outcomes = [scorer_outcome(*r["scorer"][direction]["means"]) for r in records]
        correct = [float(o == "correct") for o in outcomes]
        suffix = "" if direction == "forward" else "_reversed"
        summary[f"pairwise_accuracy{suffix}"] = rate(sum(correct), len(correct))
        summary[f"ties{suffix}"] = outcomes.count("tie")
        summary[f"tie_rate{suffix}"] = rate(outcomes.count("tie"), len(outcomes))
        summary[f"pairwise_accuracy{suffix}_by_broken"] = _by_broken(correct, broken)
    return summary


def summarize_pairwise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Both-order accuracy overall and by broken count, forward and reversed; order consistency; ties and unreadable
    verdicts."""
    broken = [r["num_broken"] for r in records]
    summary: dict[str, Any] = {"num_pairs": len(records)}
    for direction in DIRECTIONS:
        verdicts = [r["pairwise"][direction]["choices"] for r in records]
        outcomes = [pairwise_outcome(*pair) for pair in verdicts]
        scores = [score for score, _ in outcomes]
        flat = [choice for pair in verdicts for choice in pair]
        suffix = "" if direction == "forward" else "_reversed"
        summary[f"pairwise_accuracy{suffix}"] = rate(sum(scores), len(scores))
        summary[f"order_consistency{suffix}"] = rate(sum(c for _, c in outcomes), len(outcomes))
        summary[f"ties{suffix}"] = flat.count("tie")
        summary[f"unreadable{suffix}"] = flat.count(None)
        summary[f"pairwise_accuracy{suffix}_by_broken"] = _by_broken(scores, broken)
    return summary


class SpatialScorePairs:
    name = "spatialscore-pairs"
    description = "pairwise accuracy of a scorer / pairwise judge on a SpatialWorld dataset's test pairs"
    data_help = "a SpatialWorld dataset dir (pairs.parquet, meta.json, images/); its test split is used"

    def samples(self, inputs: RunInputs) -> list[Sample]:
        dataset = require(inputs.data, self.name, self.data_help)
        if not (inputs.judges.has("scorer") or inputs.judges.has("pairwise")):
            raise ValueError(f"task {self.name} needs --scorer DIR or a pairwise judge (--judge vlm)")
        _, frame = load_pairs(dataset)
        frame = frame[frame["split"] == "test"].sort_values("pair_id")
        if inputs.limit is not None:
            frame = frame.head(inputs.limit)
        if frame.empty:
            raise ValueError(f"{dataset}/pairs.parquet has no test pairs")
        return [
            Sample(
                row.pair_id,
                {
                    "prompt": row.prompt,
                    "perturbed_prompt": row.perturbed_prompt,
                    "perfect_image": str(dataset / row.perfect_image),
                    "perturbed_image": str(dataset / row.perturbed_image),
                    "num_broken": int(row.num_broken),
                    "broken_families": row.broken_families,
                },
            )
            for row in frame.itertuples()
        ]

    def evaluate(self, sample: Sample, inputs: RunInputs) -> dict[str, Any]:
        data, judges = sample.data, inputs.judges
        images = {}
        for name in ("perfect_image", "perturbed_image"):
            try:
                with Image.open(data[name]) as handle:
                    images[name] = handle.convert("RGB")
            except (OSError, ValueError) as error:
                raise ValueError(f"dataset image {data[name]} cannot be read: {error}") from None
        perfect, perturbed = images["perfect_image"], images["perturbed_image"]
        # direction -> (prompt, image that should win, image that should lose)
        directions = {
            "forward": (data["prompt"], perfect, perturbed),
            "reversed": (data["perturbed_prompt"], perturbed, perfect),
        }
        record: dict[str, Any] = {"num_broken": data["num_broken"], "broken_families": data["broken_families"]}
        if judges.has("scorer"):
            items = [(sample.sample_id, prompt, image) for prompt, *pair in directions.values() for image in pair]
            scores = judges.score(items)  # forward winner, forward loser, reversed winner, reversed loser
            record["scorer"] = {
                direction: {"means": [winner[0], loser[0]], "stds": [winner[1], loser[1]]}
                for direction, winner, loser in zip(DIRECTIONS, scores[::2], scores[1::2], strict=True)
            }
        if judges.has("pairwise"):
            record["pairwise"] = {}
            for direction, (prompt, winner, loser) in directions.items():
                first = judges.compare(sample.sample_id, prompt, winner, loser)
                second = judges.compare(sample.sample_id, prompt, loser, winner)
                record["pairwise"][direction] = {"choices": [first.choice, second.choice]}
        return record

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        summary = {}
        if records and all("scorer" in r for r in records):
            summary["scorer"] = summarize_scorer(records)
        if records and all("pairwise" in r for r in records):
            summary["pairwise"] = summarize_pairwise(records)
        return summary

    def report(self, summary: dict[str, Any]) -> str:
        rows = []
        for judge in ("scorer", "pairwise"):
            if judge not in summary:
                continue
            numbers = summary[judge]
            by_broken = numbers["pairwise_accuracy_by_broken"]
            rows.append(
                [
                    judge,
                    numbers["pairwise_accuracy"],
                    by_broken["1"],
                    by_broken["2-3"],
                    numbers["pairwise_accuracy_reversed"],
                    numbers["pairwise_accuracy_reversed_by_broken"]["1"],
                    numbers.get("order_consistency"),
                    numbers["ties"],
                    numbers.get("unreadable"),
                    numbers["num_pairs"],
                ]
            )
        header = ["judge", "accuracy", "1 broken", "2-3 broken", "reversed", "reversed, 1 broken", "order consistency"]
        notes = "Exact ties count as wrong. A pairwise judge is asked in both image orders and the two are averaged."
        return table([*header, "ties", "unreadable", "pairs"], rows) + "\n\n" + notes + "\n"
