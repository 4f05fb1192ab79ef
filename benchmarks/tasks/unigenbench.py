"""`unigenbench`: UniGenBench(++) testpoints judged on generated images (Layout 2D and 3D are the paper's numbers).

The prompts are a UniGenBench CSV (`benchmarks.formats.unigenbench`: the official `test_prompts_en.csv`, or
SpatialWorld prompts written in that format by `python -m benchmarks export-prompts --format unigenbench`). Each
image (seeds 0..N-1, default 4 per prompt; prompt id = the row's index) is judged by a `TestpointJudge` in one call
giving 0/1 per testpoint (by default the SpatialWorld pixel detector reading each testpoint's description; `--judge
vlm` asks a VLM, as UniGenBench's own judge does). Scores (`score_unigenbench`): accuracy per sub and main dimension
and Layout 2D / 3D, in percent, in both variants: `official_compatible/*` (an image with an unreadable judgement is
left out, as the official script has no scores for it; counted in `skipped_images`; the top-level numbers repeat
it) and `corrected/*` (unreadable answers count as 0 and stay in the denominator; counted). `corrected/overall`, the
mean of the main dimensions, is not an official UniGenBench number (the official scripts report none).
Malformed CSV rows are listed in the report (one extra sample, `malformed-rows`, carries them), never dropped
silently; missing or unreadable images are counted and left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.formats.unigenbench import (
    IMAGES_PER_PROMPT,
    UniGenBench,
    UniGenPrompt,
    load_unigenbench,
    score_unigenbench,
)
from benchmarks.images import ImageRequest
from benchmarks.judges import Testpoint
from benchmarks.tasks.base import RunInputs, Sample, fetch_image, image_status_counts, require, require_images, table

MALFORMED = "malformed-rows"


class UniGenBenchTask:
    name = "unigenbench"
    description = "UniGenBench(++) testpoints, one 0/1 per testpoint per image (Layout 2D / 3D reported)"
    data_help = "a UniGenBench prompt CSV (index, prompt_en, sub_dims_en): the official test_prompts_en.csv"

    def samples(self, inputs: RunInputs) -> list[Sample]:
        benchmark = load_unigenbench(require(inputs.data, self.name, self.data_help))
        require_images(inputs, self.name)
        inputs.judges.require("testpoints", "--judge spatialworld (SpatialWorld prompts) or --judge vlm")
        prompts = benchmark.prompts[: inputs.limit] if inputs.limit is not None else benchmark.prompts
        seeds = range(inputs.images_per_prompt or IMAGES_PER_PROMPT)
        samples = [
            Sample(
                f"{prompt.index}/{seed}",
                {
                    "index": prompt.index,
                    "prompt": prompt.prompt,
                    "testpoints": list(prompt.testpoints),
                    "descriptions": list(prompt.descriptions),
                    "row": prompt.row,
                    "seed": seed,
                },
            )
            for prompt in prompts
            for seed in seeds
        ]
        malformed = [
            {"row": row.row, "line": row.line, "index": row.index, "reason": row.reason} for row in benchmark.malformed
        ]
        return [*samples, Sample(MALFORMED, {"malformed": malformed})]

    def image_request(self, sample: Sample) -> ImageRequest | None:
        if sample.sample_id == MALFORMED:
            return None
        return str(sample.data["index"]), sample.data["prompt"], sample.data["seed"]

    def evaluate(self, sample: Sample, inputs: RunInputs) -> dict[str, Any]:
        data = sample.data
        request = self.image_request(sample)
        if request is None:
            return {"malformed": data["malformed"]}
        image, status = fetch_image(inputs, request)
        record = {key: data[key] for key in ("index", "prompt", "testpoints", "descriptions", "row", "seed")}
        record["image"] = status
        if image is not None:
            points = [
                Testpoint(name, text) for name, text in zip(data["testpoints"], data["descriptions"], strict=True)
            ]
            record["scores"] = list(
                inputs.judges.judge_testpoints(sample.sample_id, image, data["prompt"], points).scores
            )
        return record

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        malformed = [row for record in records for row in record.get("malformed", [])]
        images = [record for record in records if "malformed" not in record]
        scored = [record for record in images if record["image"] == "ok"]
        prompts = {
            record["index"]: UniGenPrompt(
                record["index"],
                record["prompt"],
                tuple(record["testpoints"]),
                tuple(record["descriptions"]),
                record["row"],
            )
            for record in images
        }
        answers: dict[int, dict[int, list]] = {}
        for record in scored:
            answers.setdefault(record["index"], {})[record["seed"]] = record["scores"]
        variants = score_unigenbench(UniGenBench(Path(), tuple(prompts.values()), ()), answers).to_dict()
        for scores in variants.values():
            for key in ("unanswered", "malformed"):
                scores.pop(key)
            scores["main"], scores["sub"] = dict(sorted(scores["main"].items())), dict(sorted(scores["sub"].items()))
        official = variants["official_compatible"]
        return {
            **{key: official[key] for key in ("layout_2d", "layout_3d", "main", "sub", "skipped_images")},
            **variants,
            "num_images": len(images),
            **image_status_counts(images),
            "unreadable_answers": sum(score is None for record in scored for score in record["scores"]),
            "malformed_rows": len(malformed),
            "malformed": malformed,
        }

    def report(self, summary: dict[str, Any]) -> str:
        corrected = summary["corrected"]
        rows = [
            ["layout_2d", summary["layout_2d"]],
            ["layout_3d", summary["layout_3d"]],
            ["layout_2d, corrected (unreadable answers count 0)", corrected["layout_2d"]],
            ["layout_3d, corrected", corrected["layout_3d"]],
            ["overall, corrected (mean of main dimensions; not an official UniGenBench number)", corrected["overall"]],
        ]
        keys = ["num_images", "missing_images", "unreadable_images", "unreadable_answers", "skipped_images"]
        keys += ["malformed_rows"]
        rows += [[key, summary[key]] for key in keys]
        parts = [table(["metric (official-compatible unless said)", "value"], rows)]
        parts.append(table(["main dimension", "accuracy (%)"], [[k, v] for k, v in summary["main"].items()]))
        parts.append(table(["sub dimension", "accuracy (%)"], [[k, v] for k, v in summary["sub"].items()]))
        if summary["malformed"]:
            rows = [[row["row"], row["line"], row["index"], row["reason"]] for row in summary["malformed"]]
            parts.append("Malformed rows (skipped):\n\n" + table(["row", "line", "index", "reason"], rows))
        return "\n\n".join(parts) + "\n"
