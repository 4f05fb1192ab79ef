"""Label Studio interop: the pairs to review as Label Studio tasks with a labelling config, and Label Studio's JSON
export read back into the review store, so a team that already runs Label Studio can review there and still use
`--agreement` and `python -m data_synthesis export` here.

Tasks (`write_tasks` into an output dir): `tasks.json`, one task per pair, `data` = {pair_id, prompt, relations
(one line each), left, right, side_key_id}; `labeling_config.xml`, the review app's five choices with hotkeys 1-5;
and `images/`, each image a copy under the SHA-256 of its bytes, because the dataset's file names say which image is
the perfect one. `left` and `right` are `url_prefix` + `images/<sha>.png`; the default prefix is Label Studio's
local-file serving (`/data/local-files/?d=`): start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and
LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<the output dir>, and add that dir as local storage of the project. Label
Studio sends each file's modification time (Last-Modified), and a dataset writes the perfect image before the
perturbed one, so the copies all get the same time.

Which side shows the perfect image is fixed per pair by the review app's keyed hash (`shown_perfect_side` with the
secret `SIDE_KEY` of the decisions database, as if `label-studio` were the reviewer), so the pair id a task carries
tells nothing without that database. The database is the one the import writes into (default DIR/review.sqlite):
give `tasks` and `import` the same one. Each task names the key by `side_key_id`, a hash of it that says nothing
about any side, so that an import can tell tasks of another key from tasks shown in another order.

Import (`import_annotations`): every annotation of Label Studio's JSON export (a list of tasks, each with
`annotations`: `completed_by`, `was_cancelled`, `result` holding the `decision` choice) becomes one decision of
reviewer `ls-<user>` (the user's e-mail when the export has it, else the user id), the perfect side recomputed with
the same key. Annotations that cannot count are skipped and counted by reason: cancelled, no or unknown choice, a
pair the dataset does not have, image URLs in another order than the key gives, or a reviewer who already has a
counting decision for the pair (so a second import of the same file adds nothing). Two kinds of task refuse the
whole file, before any decision is written: tasks of a known pair without `side_key_id`, written by the earlier
key-less scheme (`perfect_side(pair_id, "label-studio")`, computable from the pair id, so their annotations were not
blind: write the tasks again and annotate those), and tasks whose `side_key_id` is not this database's (written with
another `--db`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from data_synthesis.review.app import REVIEWER_PATTERN, ReviewPair, load_review_pairs
from data_synthesis.review.store import (
    CHOICES,
    DB_NAME,
    SIDE_KEY,
    AlreadyDecided,
    ReviewError,
    ReviewStore,
    shown_perfect_side,
)
from shared.io import atomic_write_bytes, atomic_write_json, atomic_write_text

ORDER_KEY = "label-studio"  # the "reviewer" whose keyed order the tasks show
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


def side_key_id(side_key: bytes) -> str:
    """A name for the side key that the tasks may carry: a keyed hash of a fixed word, which says nothing about the
    key or any side."""
    return hmac.new(side_key, b"label-studio side key id", hashlib.sha256).hexdigest()[:16]


def task_sides(side_key: bytes, pair: ReviewPair) -> tuple[Path, Path]:
    """(left image, right image) of a review pair in the tasks' keyed order."""
    if shown_perfect_side(side_key, pair.pair_id, ORDER_KEY) == "left":
        return pair.perfect_image, pair.perturbed_image
    return pair.perturbed_image, pair.perfect_image


def opaque_name(image: Path) -> str:
    """`images/<SHA-256 of the file's bytes>.png`: a name that says nothing about which image is which."""
    return f"images/{hashlib.sha256(image.read_bytes()).hexdigest()}{image.suffix}"


def write_tasks(
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    db_path: str | os.PathLike | None = None,
    url_prefix: str = LOCAL_FILES_PREFIX,
    all_pairs: bool = False,
) -> int:
    """The dataset's pairs to review (those "unreviewed"; with `all_pairs` every pair) as Label Studio tasks in
    `out_dir`: tasks.json, labeling_config.xml and images/ (module docstring), the sides keyed by the decisions
    database at `db_path` (default DIR/review.sqlite), which the import must use too; returns the number of tasks."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if out_dir.resolve() == dataset_dir.resolve():
        raise ReviewError(f"--out {out_dir} is the dataset dir; give the tasks a dir of their own")
    pairs = load_review_pairs(dataset_dir, all_pairs=all_pairs)
    side_key = ReviewStore(dataset_dir / DB_NAME if db_path is None else db_path).secret(SIDE_KEY)
    written_at = time.time()  # one modification time for every image, so it cannot tell them apart
    tasks = []
    for pair in pairs:
        names = []
        for image in task_sides(side_key, pair):
            names.append(opaque_name(image))
            # a copy, not a hard link: a link would share the dataset file's modification time
            atomic_write_bytes(out_dir / names[-1], image.read_bytes(), durable=False)
            os.utime(out_dir / names[-1], (written_at, written_at))
        tasks.append(
            {
                "data": {
                    "pair_id": pair.pair_id,
                    "prompt": pair.prompt,
                    "relations": "\n".join(pair.relations),
                    "left": url_prefix + names[0],
                    "right": url_prefix + names[1],
                    "side_key_id": side_key_id(side_key),
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


def _check_side_keys(export_file: Path, store: ReviewStore, known: list[dict[str, Any]], side_key: bytes) -> None:
    """One clear error if any task of a known pair (its `data`) was written without this database's side key."""
    key_less = [data["pair_id"] for data in known if "side_key_id" not in data]
    if key_less:
        raise ReviewError(
            f"{export_file}: {len(key_less)} tasks (pair {key_less[0]} first) were written by an earlier "
            f"`label-studio tasks` whose image order follows from the pair id, so their annotations were not blind; "
            f"nothing imported. Write the tasks again with `python -m data_synthesis label-studio tasks`, annotate "
            f"them in a new project and import that export"
        )
    others = sorted({str(data["side_key_id"]) for data in known} - {side_key_id(side_key)})
    if others:
        raise ReviewError(
            f"{export_file}: tasks with side_key_id {others[0]} were written with another decisions database than "
            f"{store.path} (side_key_id {side_key_id(side_key)}); nothing imported. Import into the database given "
            f"to `label-studio tasks` (--db)"
        )


def import_annotations(
    dataset_dir: str | os.PathLike, export_file: str | os.PathLike, store: ReviewStore
) -> ImportReport:
    """Label Studio's JSON export of tasks written by `write_tasks` with `store`'s database -> decisions in `store`
    (module docstring)."""
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
    side_key = store.secret(SIDE_KEY)
    imported, skipped = 0, Counter()
    known = []  # (pair, task data, annotations) of the tasks of the dataset's pairs
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        annotations = task.get("annotations") or [] if isinstance(task, dict) else []
        pair = pairs.get(data.get("pair_id")) if isinstance(data, dict) else None
        if pair is None:
            skipped["of unknown pairs"] += max(len(annotations), 1)
        else:
            known.append((pair, data, annotations))
    _check_side_keys(export_file, store, [data for _, data, _ in known], side_key)
    for pair, data, annotations in known:
        left, right = (opaque_name(path) for path in task_sides(side_key, pair))
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
                    shown_perfect_side=shown_perfect_side(side_key, pair.pair_id, ORDER_KEY),
                )
            except AlreadyDecided:
                skipped["already decided"] += 1
                continue
            imported += 1
    return ImportReport(imported, dict(skipped))
