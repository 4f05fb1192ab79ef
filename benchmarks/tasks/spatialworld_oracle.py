"""`spatialworld-oracle`: do generated images show the relations their SpatialWorld prompt states?

The prompts are the perfect prompts of a dataset dir's test split (prompt id = pair id). For each image (seeds
0..N-1, default 1 per prompt) a `YesNoVQA` (by default the pixel detector, `benchmarks.spatialworld`) is asked
one existence question per object of the scene ("Is there a red circle?") and one question per stated relation.
Unreadable answers count as "no" and are counted.

    relation_accuracy            = yes answers / relation questions, over all images
    relation_accuracy_by_family  = the same per relation family (horizontal, vertical, depth, ...)
    relation_accuracy_all_found  = the same over images where every object was found
    relation_accuracy_all_found_by_family, num_relations_all_found_by_family
                                 = the same per family, with the relation count behind each rate (placement
                                   between objects apart from whether both were drawn)
    image_accuracy               = images where every stated relation holds / images
    objects_found                = objects found / objects; images_all_found = images with every object found / images
    mean_spatialscore            = mean of the `ImageScorer` means (when a scorer is given; the paper's in-domain
                                   metric, Flux 2.18 -> 7.81 on its own scale)
Missing and unreadable image files are counted and left out of every rate.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.images import ImageRequest
from benchmarks.spatialworld import existence_question, relation_question
from benchmarks.tasks.base import RunInputs, Sample, fetch_image, rate, require, require_images, table
from data_synthesis import FAMILIES, Relation, Scene, load_pairs


def summarize_oracle(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of the module docstring from per-image records (see `SpatialWorldOracle.evaluate`)."""
    scored = [r for r in records if r["image"] == "ok"]
    answers = [a for r in scored for a in r["relations"]]
    all_found = [r for r in scored if all(r["found"])]
    found_answers = [a for r in all_found for a in r["relations"]]
    summary: dict[str, Any] = {
        "num_images": len(records),
        "missing_images": sum(r["image"] == "missing" for r in records),
        "unreadable_images": sum(r["image"] == "unreadable" for r in records),
        "num_relations": len(answers),
        "relation_accuracy": rate(sum(a["holds"] is True for a in answers), len(answers)),
        "relation_accuracy_all_found": rate(sum(a["holds"] is True for a in found_answers), len(found_answers)),
        "relation_accuracy_by_family": {
            family: rate(
                sum(a["holds"] is True for a in answers if a["family"] == family),
                sum(a["family"] == family for a in answers),
            )
            for family in FAMILIES
        },
        "relation_accuracy_all_found_by_family": {
            family: rate(
                sum(a["holds"] is True for a in found_answers if a["family"] == family),
                sum(a["family"] == family for a in found_answers),
            )
            for family in FAMILIES
        },
        "num_relations_all_found_by_family": {
            family: sum(a["family"] == family for a in found_answers) for family in FAMILIES
        },
        "image_accuracy": rate(sum(all(a["holds"] is True for a in r["relations"]) for r in scored), len(scored)),
        "objects_found": rate(sum(f is True for r in scored for f in r["found"]), sum(len(r["found"]) for r in scored)),
        "images_all_found": rate(len(all_found), len(scored)),
        "unreadable_answers": sum(a["holds"] is None for a in answers)
        + sum(f is None for r in scored for f in r["found"]),
    }
    scores = [r["spatialscore"] for r in scored if "spatialscore" in r]
    if scores:
        summary["mean_spatialscore"] = rate(sum(scores), len(scores))
    return summary


class SpatialWorldOracle:
    name = "spatialworld-oracle"
    description = "generated images for SpatialWorld test prompts, every stated relation read by the pixel detector"
    data_help = "a SpatialWorld dataset dir; the perfect prompts of its test split are the prompts"

    def samples(self, inputs: RunInputs) -> list[Sample]:
        dataset = require(inputs.data, self.name, self.data_help)
        require_images(inputs, self.name)
        inputs.judges.require("vqa", "--judge spatialworld (the pixel detector) or --judge vlm")
        _, frame = load_pairs(dataset)
        frame = frame[frame["split"] == "test"].sort_values("pair_id")
        if inputs.limit is not None:
            frame = frame.head(inputs.limit)
        seeds = range(inputs.images_per_prompt or 1)
        samples = []
        for row in frame.itertuples():
            scene = Scene.from_json(row.perfect_scene)
            data = {
                "prompt_id": row.pair_id,
                "prompt": row.prompt,
                "shapes": {obj.colour: obj.shape for obj in scene.objects},
                "relations": json.loads(row.stated_relations),
            }
            samples += [Sample(f"{row.pair_id}/{seed}", {**data, "seed": seed}) for seed in seeds]
        return samples

    def image_request(self, sample: Sample) -> ImageRequest:
        return sample.data["prompt_id"], sample.data["prompt"], sample.data["seed"]

    def evaluate(self, sample: Sample, inputs: RunInputs) -> dict[str, Any]:
        data = sample.data
        image, status = fetch_image(inputs, self.image_request(sample))
        record: dict[str, Any] = {"prompt_id": data["prompt_id"], "seed": data["seed"], "image": status}
        if image is None:
            return record
        shapes = data["shapes"]
        relations = [Relation.from_dict(r) for r in data["relations"]]
        questions = [existence_question(colour, shape) for colour, shape in sorted(shapes.items())]
        questions += [relation_question(relation, shapes) for relation in relations]
        answers = inputs.judges.answer(sample.sample_id, image, questions).answers
        record["found"] = list(answers[: len(shapes)])
        record["relations"] = [
            {"kind": relation.kind, "family": relation.family, "holds": holds}
            for relation, holds in zip(relations, answers[len(shapes) :], strict=True)
        ]
        if inputs.judges.has("scorer"):
            record["spatialscore"] = inputs.judges.score([(sample.sample_id, data["prompt"], image)])[0][0]
        return record

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize_oracle(records)

    def report(self, summary: dict[str, Any]) -> str:
        keys = ["relation_accuracy", "relation_accuracy_all_found", "image_accuracy", "objects_found"]
        keys += ["images_all_found", "mean_spatialscore", "num_images", "missing_images", "unreadable_images"]
        keys += ["unreadable_answers"]
        overall = table(["metric", "value"], [[key, summary.get(key)] for key in keys])
        families = summary["relation_accuracy_by_family"]
        found = summary.get("relation_accuracy_all_found_by_family", {})
        counts = summary.get("num_relations_all_found_by_family", {})
        by_family = table(
            ["relation family", "accuracy", "accuracy among all-found", "relations among all-found"],
            [[family, families[family], found.get(family), counts.get(family)] for family in FAMILIES],
        )
        return overall + "\n\n" + by_family + "\n"
