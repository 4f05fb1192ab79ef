"""`geneval`: GenEval's rules (`benchmarks.geneval`) on a `Detector`'s detections of generated images.

Prompt id = the zero-padded 0-based prompt index (`00012`), as GenEval's own output folders; 4 images per prompt
(seeds 0..3) by default. Missing and unreadable image files are counted and left out of the accuracies. The detector
is asked for COCO's label names (`geneval.coco_label`: "mouse" for GenEval's "computer mouse") and its detections are
filed back under GenEval's names.

summary.json holds both variants (`geneval.summarize_variants`): `official_compatible/*` (prompts grouped by
identical metadata, as `summary_scores.py`; the number to put beside published GenEval scores) and `corrected/*`
(prompts counted by index, each with its own images: stricter where metadata repeat), and what was left out or
merged: `merged_prompts` (prompts the official grouping folds into another), `missing_images`,
`unreadable_images`, `colour_unread_images` (a colour clause the detector read no colours for; counted wrong). The
top-level `overall`, `accuracy_by_tag`, `correct_images`, `correct_prompts` repeat the official-compatible
numbers; the top-level `num_prompts` counts prompts by index (as `corrected/num_prompts`).
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks import geneval
from benchmarks.images import ImageRequest
from benchmarks.tasks.base import RunInputs, Sample, fetch_image, image_status_counts, require, require_images, table


class GenEval:
    name = "geneval"
    description = "GenEval: object, count, colour and position rules on detections (overall = mean of the tags)"
    data_help = f"GenEval's {geneval.METADATA_FILE} (or a dir holding it); official: {geneval.OFFICIAL_METADATA}"

    def samples(self, inputs: RunInputs) -> list[Sample]:
        path = require(inputs.data, self.name, self.data_help)
        prompts = geneval.load_metadata(path)
        require_images(inputs, self.name)
        inputs.judges.require("detector", "--judge spatialworld (SpatialWorld images) or a detector judge")
        if inputs.limit is not None:
            prompts = prompts[: inputs.limit]
        seeds = range(inputs.images_per_prompt or 4)
        return [
            Sample(f"{index:05d}/{seed}", {"prompt_id": f"{index:05d}", "seed": seed, "metadata": metadata})
            for index, metadata in enumerate(prompts)
            for seed in seeds
        ]

    def image_request(self, sample: Sample) -> ImageRequest:
        return sample.data["prompt_id"], sample.data["metadata"]["prompt"], sample.data["seed"]

    def evaluate(self, sample: Sample, inputs: RunInputs) -> dict[str, Any]:
        data, metadata = sample.data, sample.data["metadata"]
        image, status = fetch_image(inputs, self.image_request(sample))
        record: dict[str, Any] = {"prompt_id": data["prompt_id"], "seed": data["seed"], "tag": metadata["tag"]}
        record["image"] = status
        if image is None:
            return record
        classes = sorted({clause["class"] for key in ("include", "exclude") for clause in metadata.get(key, [])})
        record["metadata"] = json.dumps(metadata, sort_keys=True)  # the official summary groups prompts by it
        found = inputs.judges.detect(sample.sample_id, image, sorted({geneval.coco_label(c) for c in classes}))
        found = {name: found[geneval.coco_label(name)] for name in classes if geneval.coco_label(name) in found}
        detections = geneval.keep_detections(found, metadata["tag"])
        correct, reasons = geneval.evaluate_image(detections, metadata)
        # a colour clause the detector could not read colours for (a detector without a colour reader)
        colour_unread = any(
            d.colour is None
            for clause in metadata["include"]
            if "color" in clause
            for d in detections.get(clause["class"], [])[: clause["count"]]
        )
        return {**record, "correct": correct, "reasons": reasons, "colour_unread": colour_unread}

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        variants = geneval.summarize_variants([r for r in records if r["image"] == "ok"])
        official = variants["official_compatible"]
        summary = {key: official[key] for key in ("overall", "accuracy_by_tag", "correct_images", "correct_prompts")}
        summary |= {"num_images": official["num_images"], "num_prompts": variants["corrected"]["num_prompts"]}
        summary |= variants | image_status_counts(records)
        summary["colour_unread_images"] = sum(r.get("colour_unread", False) for r in records)
        return summary

    def report(self, summary: dict[str, Any]) -> str:
        by_tag = summary["accuracy_by_tag"]
        tags = [*geneval.TAGS, *(tag for tag in by_tag if tag not in geneval.TAGS)]
        rows = [[tag, by_tag.get(tag)] for tag in tags]
        rows += [["**overall** (mean of tags)", summary["overall"]], ["correct images", summary["correct_images"]]]
        rows += [
            ["prompts with a correct image (official: identical metadata = one prompt)", summary["correct_prompts"]]
        ]
        rows += [["prompts with a correct image (corrected: by index)", summary["corrected"]["correct_prompts"]]]
        counts = (
            f"{summary['num_images']} images of {summary['num_prompts']} prompts ({summary['merged_prompts']} merged "
            f"into another by the official grouping); {summary['missing_images']} missing, "
            f"{summary['unreadable_images']} unreadable image files left out; {summary['colour_unread_images']} images "
            "with a colour clause the detector reads no colours for (counted wrong)."
        )
        return table(["tag", "accuracy"], rows) + "\n\n" + counts + "\n"
