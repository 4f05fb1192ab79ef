"""`tiif-bench`: TIIF-Bench yes/no questions on images drawn from each prompt's short and long description (the
paper reports Basic Relation, BR).

`--data` is a dir holding TIIF-Bench's `prompts/` and `eval_prompts/` dirs (`<dimension>.jsonl`: the official
`test_prompts/` and `test_eval_prompts/`, or `testmini_prompts/` and `testmini_eval_prompts/`, renamed or linked)
and, for testmini, the official `testmini_sample_idx.json` beside them (with either pair, prompts are numbered by
their line in the test files, as the official images and judge outputs are; see `benchmarks.formats.tiif`), or
SpatialWorld prompts written in that layout by `python -m benchmarks export-prompts --format tiif`. Every prompt is
drawn twice, from its short and from its long description (image folder `<dimension>/<index>/<short|long>/<seed>.png`;
default 1 seed), and a `YesNoVQA` (by default the SpatialWorld pixel detector; `--judge vlm` for a VLM) answers its
questions for each image. Scores (`score_tiif`): accuracy per dimension and length, the official nine groups, the
paper's BR / AR / RR, overall per length, in percent, in both variants: `official_compatible/*` (each accuracy
rounded to 4 decimals as a fraction, malformed answer lists skipped and counted in `skipped_answer_lists`; the
top-level numbers repeat it) and `corrected/*` (full precision, malformed lists counted wrong); unparseable answers
count as wrong and are counted. Our judge is deterministic; the official one samples a random template at
temperature 1 (said in the report). Missing or unreadable images are counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.formats.tiif import (
    EVAL_PROMPTS_DIR_NAME,
    LENGTHS,
    PROMPTS_DIR_NAME,
    SAMPLE_INDEX_NAME,
    TiifPrompt,
    load_tiif,
    score_tiif,
)
from benchmarks.images import ImageRequest
from benchmarks.tasks.base import RunInputs, Sample, fetch_image, image_status_counts, require, require_images, table

FIELDS = ("dimension", "index", "short_description", "long_description", "questions", "expected")


class TiifBench:
    name = "tiif-bench"
    description = "TIIF-Bench yes/no questions on short- and long-prompt images (BR / AR / RR groups, overall)"
    data_help = f"a dir holding TIIF-Bench's {PROMPTS_DIR_NAME}/ and {EVAL_PROMPTS_DIR_NAME}/ (<dimension>.jsonl)"

    def samples(self, inputs: RunInputs) -> list[Sample]:
        root = require(inputs.data, self.name, self.data_help)
        sample_index = Path(root) / SAMPLE_INDEX_NAME
        prompts = load_tiif(
            Path(root) / PROMPTS_DIR_NAME,
            Path(root) / EVAL_PROMPTS_DIR_NAME,
            sample_index if sample_index.is_file() else None,
        )
        require_images(inputs, self.name)
        inputs.judges.require("vqa", "--judge spatialworld (SpatialWorld prompts) or --judge vlm")
        prompts = prompts[: inputs.limit] if inputs.limit is not None else prompts
        seeds = range(inputs.images_per_prompt or 1)
        samples = []
        for prompt in prompts:
            data = {name: getattr(prompt, name) for name in FIELDS}
            data = {**data, "questions": list(prompt.questions), "expected": list(prompt.expected)}
            samples += [
                Sample(f"{prompt.key}/{length}/{seed}", {**data, "length": length, "seed": seed})
                for length in LENGTHS
                for seed in seeds
            ]
        return samples

    def image_request(self, sample: Sample) -> ImageRequest:
        data = sample.data
        folder = f"{data['dimension']}/{data['index']}/{data['length']}"
        return folder, data[f"{data['length']}_description"], data["seed"]

    def evaluate(self, sample: Sample, inputs: RunInputs) -> dict[str, Any]:
        data = sample.data
        image, status = fetch_image(inputs, self.image_request(sample))
        record = {**{name: data[name] for name in FIELDS}, "length": data["length"], "seed": data["seed"]}
        record["image"] = status
        if image is not None:
            answers = inputs.judges.answer(sample.sample_id, image, data["questions"]).answers
            record["answers"] = [None if answer is None else ("yes" if answer else "no") for answer in answers]
        return record

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        prompts: dict[str, TiifPrompt] = {}
        answers: dict[str, dict[str, dict[int, list]]] = {}
        for record in records:
            prompt = TiifPrompt(
                **{name: record[name] for name in FIELDS[:4]},
                questions=tuple(record["questions"]),
                expected=tuple(record["expected"]),
            )
            prompts.setdefault(prompt.key, prompt)
            if record["image"] == "ok":
                answers.setdefault(prompt.key, {}).setdefault(record["length"], {})[record["seed"]] = record["answers"]
        variants = score_tiif(list(prompts.values()), answers).to_dict()
        for scores in variants.values():
            scores.pop("judge_note")
            scores["unanswered"] = len(scores["unanswered"])
            scores["ungrouped"] = len(scores["ungrouped"])
        summary = {**variants["official_compatible"], **variants}  # top level: the official-compatible numbers
        summary["num_images"] = len(records)
        summary |= image_status_counts(records)
        return summary

    def report(self, summary: dict[str, Any]) -> str:
        rows = [[name, *[scores.get(length) for length in LENGTHS]] for name, scores in summary["paper_groups"].items()]
        rows.append(["overall", *[summary["overall"].get(length) for length in LENGTHS]])
        rows.append(["overall (corrected: full precision)", *[summary["corrected"]["overall"].get(n) for n in LENGTHS]])
        head = table(["group (official-compatible)", *LENGTHS], rows)
        dimensions = [
            [name, *[scores.get(length) for length in LENGTHS]]
            for name, scores in sorted(summary["dimensions"].items())
        ]
        counts = [["questions", summary["num_questions"]], ["unparseable answers", summary["num_unparseable"]]]
        counts.append(["malformed answer lists (official: skipped; corrected: wrong)", summary["num_malformed"]])
        counts.append(["answer lists skipped (official-compatible)", summary["skipped_answer_lists"]])
        counts += [["images", summary["num_images"]], ["missing images", summary["missing_images"]]]
        note = (
            "Our judge is deterministic (one fixed template, temperature 0); TIIF-Bench's official judge samples one "
            "of three templates at temperature 1, so its numbers vary from run to run."
        )
        return (
            "\n\n".join([head, table(["dimension", *LENGTHS], dimensions), table(["count", "n"], counts), note]) + "\n"
        )
