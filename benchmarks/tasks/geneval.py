"""`geneval`: GenEval's rules (`benchmarks.geneval`) on a `Detector`'s detections of generated images.

Prompt id = the zero-padded 0-based prompt index (`00012`), as GenEval's own output folders; 4 images per prompt
(seeds 0..3) by default. Missing and unreadable image files are counted and left out of the accuracies.
"""

from __future__ import annotations

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
        detections = geneval.keep_detections(inputs.judges.detect(sample.sample_id, image, classes), metadata["tag"])
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
        summary = geneval.summarize([r for r in records if r["image"] == "ok"])
        summary |= image_status_counts(records)
        summary["colour_unread_images"] = sum(r.get("colour_unread", False) for r in records)
        return summary

    def report(self, summary: dict[str, Any]) -> str:
        by_tag = summary["accuracy_by_tag"]
        tags = [*geneval.TAGS, *(tag for tag in by_tag if tag not in geneval.TAGS)]
        rows = [[tag, by_tag.get(tag)] for tag in tags]
        rows += [["**overall** (mean of tags)", summary["overall"]], ["correct images", summary["correct_images"]]]
        rows += [["prompts with a correct image", summary["correct_prompts"]]]
        counts = (
            f"{summary['num_images']} images of {summary['num_prompts']} prompts; {summary['missing_images']} missing, "
            f"{summary['unreadable_images']} unreadable image files left out; {summary['colour_unread_images']} images "
            "with a colour clause the detector reads no colours for (counted wrong)."
        )
        return table(["tag", "accuracy"], rows) + "\n\n" + counts + "\n"
