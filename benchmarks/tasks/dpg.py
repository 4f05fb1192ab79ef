"""`dpg-bench`: DPG-Bench's question graphs answered on generated images (relation / spatial is the paper's number).

The prompts and questions are DPG-Bench's `dpg_bench.csv` (and its `prompts/` dir when `--data` is the dir holding
both; otherwise the CSV's text column), or SpatialWorld prompts written in that format by `python -m benchmarks
export-prompts --format dpg` (item id = pair id). Each image (seeds 0..N-1, default 4 per prompt) is asked every
question of its item through a `YesNoVQA` (by default the SpatialWorld pixel detector; `--judge vlm` for a VLM, as
DPG-Bench uses mPLUG). The official script tiles the 4 images 2 x 2 and asks once; here each image is asked on its
own and the per-image scores are averaged, which is what the tiling approximates. Scores (`score_dpg`): a question
scores 1 only on "yes" and 0 whenever a parent was answered "no"; per image, then item, x 100; the
official-compatible variant (first CSV row skipped, categories from the last image's answers before the parent
rule) and the corrected one, both reported and labelled (`official_compatible/*`, `corrected/*` in summary.json,
each with `failed_items`: how many items it dropped, never the whole CSV: a dependency on a proposition the item
lacks, and in the corrected variant a repeated proposition id or a dependency cycle; `formats.dpg` says which the
official script drops). Missing or unreadable images are counted and left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.formats.dpg import IMAGES_PER_PROMPT, DpgItem, DpgQuestion, load_dpg, score_dpg
from benchmarks.images import ImageRequest
from benchmarks.tasks.base import RunInputs, Sample, fetch_image, image_status_counts, require, require_images, table

CSV_NAME = "dpg_bench.csv"
QUESTION_FIELDS = ("proposition_id", "parents", "category_broad", "category_detailed", "tuple_text", "question", "row")


def _load(data: Path) -> list[DpgItem]:
    if data.is_dir():
        prompts = data / "prompts"
        return load_dpg(data / CSV_NAME, prompts if prompts.is_dir() else None)
    return load_dpg(data)


class DpgBench:
    name = "dpg-bench"
    description = "DPG-Bench question graphs per image (official-compatible and corrected scores; relation/spatial)"
    data_help = "DPG-Bench's dpg_bench.csv, or a dir holding it and its prompts/ dir"

    def samples(self, inputs: RunInputs) -> list[Sample]:
        items = _load(require(inputs.data, self.name, self.data_help))
        require_images(inputs, self.name)
        inputs.judges.require("vqa", "--judge spatialworld (SpatialWorld prompts) or --judge vlm")
        items = items[: inputs.limit] if inputs.limit is not None else items
        seeds = range(inputs.images_per_prompt or IMAGES_PER_PROMPT)
        return [
            Sample(
                f"{item.item_id}/{seed}",
                {
                    "item_id": item.item_id,
                    "prompt": item.prompt,
                    "questions": [{name: getattr(q, name) for name in QUESTION_FIELDS} for q in item.questions],
                    "seed": seed,
                },
            )
            for item in items
            for seed in seeds
        ]

    def image_request(self, sample: Sample) -> ImageRequest:
        return sample.data["item_id"], sample.data["prompt"], sample.data["seed"]

    def evaluate(self, sample: Sample, inputs: RunInputs) -> dict[str, Any]:
        data = sample.data
        image, status = fetch_image(inputs, self.image_request(sample))
        record = {key: data[key] for key in ("item_id", "prompt", "questions", "seed")} | {"image": status}
        if image is not None:
            questions = [question["question"] for question in data["questions"]]
            answers = inputs.judges.answer(sample.sample_id, image, questions).answers
            record["answers"] = [None if answer is None else ("yes" if answer else "no") for answer in answers]
        return record

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        items: dict[str, DpgItem] = {}
        answers: dict[str, dict[int, dict[int, str | None]]] = {}
        for record in records:
            if record["item_id"] not in items:
                questions = tuple(
                    DpgQuestion(**{**q, "parents": tuple(q["parents"])}) for q in record["questions"]
                )  # JSON turned the tuple into a list
                items[record["item_id"]] = DpgItem(record["item_id"], record["prompt"], questions)
            if record["image"] == "ok":
                ids = [question["proposition_id"] for question in record["questions"]]
                answers.setdefault(record["item_id"], {})[record["seed"]] = dict(
                    zip(ids, record["answers"], strict=True)
                )
        result = score_dpg(list(items.values()), answers).to_dict()
        for variant in ("official_compatible", "corrected"):
            result[variant].pop("item_scores")  # per item: in samples.jsonl, not the summary
            result[variant]["failed_items"] = len(result[variant]["failed_items"])
        result.pop("note")
        result["unanswered_items"] = len(result["unanswered_items"])
        result["num_images"] = len(records)
        result |= image_status_counts(records)
        return result

    def report(self, summary: dict[str, Any]) -> str:
        rows = []
        for variant in ("official_compatible", "corrected"):
            scores = summary[variant]
            row = [variant, scores["score"], scores["relation_spatial"], scores["num_unparseable"]]
            rows.append([*row, scores["failed_items"]])
        head = table(["variant", "DPG score", "relation / spatial", "unparseable answers", "items dropped"], rows)
        corrected = summary["corrected"]["detailed"]
        detail = table(["category (corrected)", "score"], [[name, value] for name, value in sorted(corrected.items())])
        counts = table(
            ["images", "missing", "unreadable", "unanswered items"],
            [
                [
                    summary["num_images"],
                    summary["missing_images"],
                    summary["unreadable_images"],
                    summary["unanswered_items"],
                ]
            ],
        )
        note = "Unparseable judge answers score 0. Each image is judged on its own (the official script tiles 4)."
        return "\n\n".join([head, detail, counts, note]) + "\n"
