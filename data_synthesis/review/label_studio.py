"""Label Studio interop: the pairs to review as Label Studio tasks with a labelling config, and Label Studio's JSON
export read back into the review store, so a team that already runs Label Studio can review there and still use
`--agreement` and `python -m data_synthesis export` here.

Tasks (`write_tasks` into an output dir): `tasks.json`, one task per pair, `data` = {pair_id, prompt, relations
(one line each), left, right}; `labeling_config.xml`, the review app's five choices with hotkeys 1-5; and `images/`,
each image under the SHA-256 of its bytes (hard links where the filesystem allows), because the dataset's file names
say which image is the perfect one. `left` and `right` are `url_prefix` + `images/<sha>.png`; the default prefix is
Label Studio's local-file serving (`/data/local-files/?d=`): start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true
and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<the output dir>, and add that dir as local storage of the project. Which
side shows the perfect image is random-looking and fixed per pair (`perfect_side(pair_id, "label-studio")`); the
import recomputes it and checks the task's image names against it.

Import (`import_annotations`): every annotation of Label Studio's JSON export (a list of tasks, each with
`annotations`: `completed_by`, `was_cancelled`, `result` holding the `decision` choice) becomes one decision of
reviewer `ls-<user>` (the user's e-mail when the export has it, else the user id). Annotations that cannot count are
skipped and counted by reason: cancelled, no or unknown choice, a pair the dataset does not have, image URLs in
another order than this dataset's, or a reviewer who already has a counting decision for the pair (so a second
import of the same file adds nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from data_synthesis.review.app import REVIEWER_PATTERN, load_review_pairs
from data_synthesis.review.export import place_image
from data_synthesis.review.store import CHOICES, AlreadyDecided, ReviewError, ReviewStore, perfect_side
from shared.io import atomic_write_json, atomic_write_text

ORDER_KEY = "label-studio"  # the "reviewer" whose fixed order the tasks show
FROM_NAME = "decision"
LOCAL_FILES_PREFIX = "/data/local-files/?d="
HOTKEYS = dict(zip(CHOICES, "12345", strict=True))

LABELING_CONFIG = (
    "<View>\n"
    '  <Header value="$prompt"/>\n'
    '  <Text name="relations" value="$relations"/>\n'
    '  <View style="display: flex; gap: 8px">\n'
    '    <Image name="left" value="$left"/>\n'
    '    <Image name="right" value="$right"/>\n'
    "  </View>\n"
    f'  <Choices name="{FROM_NAME}" toName="left" choice="single" showInline="true" required="true">\n'
    + "".join(f'    <Choice value="{choice}" hotkey="{HOTKEYS[choice]}"/>\n' for choice in CHOICES)
    + "  </Choices>\n"
    "</View>\n"
)


def _sides(pair) -> tuple[Path, Path]:
    """(left image, right image) of a review pair in the tasks' fixed order."""
    if perfect_side(pair.pair_id, ORDER_KEY) == "left":
        return pair.perfect_image, pair.perturbed_image
    return pair.perturbed_image, pair.perfect_image


def opaque_name(image: Path) -> str:
    """`images/<SHA-256 of the file's bytes>.png`: a name that says nothing about which image is which."""
    return f"images/{hashlib.sha256(image.read_bytes()).hexdigest()}{image.suffix}"


def write_tasks(
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    url_prefix: str = LOCAL_FILES_PREFIX,
    all_pairs: bool = False,
) -> int:
    """The dataset's pairs to review (those "unreviewed"; with `all_pairs` every pair) as Label Studio tasks in
    `out_dir`: tasks.json, labeling_config.xml and images/ (module docstring); returns the number of tasks."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if out_dir.resolve() == dataset_dir.resolve():
        raise ReviewError(f"--out {out_dir} is the dataset dir; give the tasks a dir of their own")
    tasks = []
    for pair in load_review_pairs(dataset_dir, all_pairs=all_pairs):
        names = []
        for image in _sides(pair):
            names.append(opaque_name(image))
            place_image(image, out_dir / names[-1])
        tasks.append(
            {
                "data": {
                    "pair_id": pair.pair_id,
                    "prompt": pair.prompt,
                    "relations": "\n".join(pair.relations),
                    "left": url_prefix + names[0],
                    "right": url_prefix + names[1],
                }
            }
        )
    atomic_write_json(out_dir / "tasks.json", tasks)
    atomic_write_text(out_dir / "labeling_config.xml", LABELING_CONFIG)
    return len(tasks)


class ImportReport(NamedTuple):
    imported: int
    skipped: dict[str, int]  # reason -> count

    def describe(self) -> str:
        skipped = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items())) or "none"
        return f"imported {self.imported} decisions; skipped: {skipped}"


def reviewer_of(completed_by: Any) -> str | None:
    """`ls-<e-mail or user id>` for an annotation's `completed_by` (an id, or a dict with email/id); None if it
    gives no usable name."""
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or completed_by.get("id")
    if completed_by is None or isinstance(completed_by, bool):
        return None
    name = "ls-" + re.sub(r"[^A-Za-z0-9_.@-]", "_", str(completed_by))
    return name[:64] if REVIEWER_PATTERN.fullmatch(name[:64]) else None


def choice_of(annotation: dict[str, Any]) -> str | None:
    """The review choice in an annotation's result (the `decision` control), or None."""
    for result in annotation.get("result") or []:
        if isinstance(result, dict) and result.get("from_name") == FROM_NAME:
            choices = (result.get("value") or {}).get("choices") or []
            if len(choices) == 1 and choices[0] in CHOICES:
                return choices[0]
    return None


def import_annotations(
    dataset_dir: str | os.PathLike, export_file: str | os.PathLike, store: ReviewStore
) -> ImportReport:
    """Label Studio's JSON export of tasks written by `write_tasks` -> decisions in `store` (module docstring)."""
    dataset_dir, export_file = Path(dataset_dir), Path(export_file)
    try:
        tasks = json.loads(export_file.read_text())
    except FileNotFoundError:
        raise ReviewError(f"{export_file} is missing: export the project from Label Studio as JSON") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReviewError(f"{export_file} is not a Label Studio JSON export: {error}") from None
    if not isinstance(tasks, list):
        raise ReviewError(f"{export_file} is not a Label Studio JSON export: expected a list of tasks")
    pairs = {pair.pair_id: pair for pair in load_review_pairs(dataset_dir, all_pairs=True)}
    imported, skipped = 0, Counter()
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        annotations = task.get("annotations") or [] if isinstance(task, dict) else []
        pair = pairs.get(data.get("pair_id")) if isinstance(data, dict) else None
        if pair is None:
            skipped["of unknown pairs"] += max(len(annotations), 1)
            continue
        left, right = (opaque_name(path) for path in _sides(pair))
        if not (str(data.get("left", "")).endswith(left) and str(data.get("right", "")).endswith(right)):
            skipped["with images in another order"] += max(len(annotations), 1)
            continue
        for annotation in annotations:
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                skipped["cancelled"] += 1
                continue
            choice, reviewer = choice_of(annotation), reviewer_of(annotation.get("completed_by"))
            if choice is None or reviewer is None:
                skipped["without a choice or reviewer"] += 1
                continue
            try:
                store.decide(
                    reviewer=reviewer,
                    pair_id=pair.pair_id,
                    choice=choice,
                    shown_perfect_side=perfect_side(pair.pair_id, ORDER_KEY),
                )
            except AlreadyDecided:
                skipped["already decided"] += 1
                continue
            imported += 1
    return ImportReport(imported, dict(skipped))
