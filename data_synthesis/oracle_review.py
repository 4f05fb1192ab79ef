"""The SpatialWorld oracle as a reviewer of generated pairs (`python -m data_synthesis oracle-review DIR`).

The paper keeps generated pairs after expert review; here the pixel detector reviews them against the scene graph
the prompts were written from. A pair (prompt, perfect image, perturbed image) is accepted when

1. every object is found in both images,
2. every stated relation holds in the perfect image, and
3. exactly the recorded relations are broken in the perturbed image (read as broken), and the rest still hold.

A rejected pair is counted under the first check it fails, in this order (`REASONS`): `perfect_object_missing`,
`perturbed_object_missing`, `perfect_relation_fails`, `perturbed_relation_not_broken` (a recorded relation does not
read as broken), `perturbed_kept_relation_fails` (another stated relation no longer holds); an image that cannot be
read is `image_unreadable`, one on which the detector raises is `detector_failed`. An on-policy ranked pair
(`kind` "ranked": two samples of one prompt) is accepted when the oracle strictly prefers its first image
(`prefers`), else rejected as `not_strictly_preferred`.

Decisions go into the same review store as people's (`review.sqlite`), reviewer `oracle`, with the reason in the
store's `reason` column, so `export`, `review --agreement` and Label Studio work on them unchanged. The oracle's
verdict says what it read, in the words a person uses: `perfect` (accepted), `perturbed` (only the perturbed image
follows the prompt), `both`, `neither`, or `flag` (the perfect image follows the prompt but the pair is wrong in
another way: the perturbed image misses an object or breaks other relations than the recorded ones; or an image is
unreadable). Pairs the oracle has already decided are skipped, so a killed review resumes.

`read_image`, `image_rejection` and `prefers` are the same checks the builder's best-of-N drawing applies to each
image it draws (`data_synthesis.best_of`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from tqdm import tqdm

from data_synthesis.detect import detect
from data_synthesis.relations import Relation, Truth, evaluate
from data_synthesis.review.store import DB_NAME, ORACLE_REVIEWER, SIDES, ReviewError, ReviewStore, perfect_side
from data_synthesis.scene import Scene, SceneError
from data_synthesis.verify import load_pairs

REASONS = (
    "image_unreadable",
    "detector_failed",
    "perfect_object_missing",
    "perturbed_object_missing",
    "perfect_relation_fails",
    "perturbed_relation_not_broken",
    "perturbed_kept_relation_fails",
    "not_strictly_preferred",
)


class ImageReading(NamedTuple):
    """What the detector reads in one image against the stated relations of a prompt."""

    truths: tuple[Truth, ...]  # one per stated relation
    all_found: bool  # every object of the scene was found

    @property
    def confirmed(self) -> int:
        """Stated relations read as holding."""
        return sum(truth is Truth.HOLDS for truth in self.truths)

    def to_dict(self) -> dict:
        return {"truths": [truth.value for truth in self.truths], "all_found": self.all_found}


class PairJudgement(NamedTuple):
    accepted: bool
    reason: str | None  # the first failed check (one of REASONS); None when accepted
    verdict: str  # perfect | perturbed | both | neither | flag (review store verdicts)


def read_image(image: Image.Image, relations: list[Relation], colours: list[str]) -> ImageReading:
    """The detector's reading of `image`: each stated relation's truth and whether every object was found."""
    layout = detect(image.convert("RGB"), colours)
    truths = tuple(evaluate(relation, layout) for relation in relations)
    return ImageReading(truths, all(layout.box(colour) is not None for colour in colours))


def image_rejection(reading: ImageReading, broken: frozenset[int] | set[int], side: str) -> str | None:
    """Why an image fails its side of the accept rule (module docstring), or None when it passes. `side` is
    "perfect" (every stated relation must hold; `broken` empty) or "perturbed" (exactly `broken` read as broken)."""
    if not reading.all_found:
        return f"{side}_object_missing"
    if side == "perfect":
        return None if all(truth is Truth.HOLDS for truth in reading.truths) else "perfect_relation_fails"
    if any(reading.truths[i] is not Truth.BROKEN for i in broken):
        return "perturbed_relation_not_broken"
    if any(truth is not Truth.HOLDS for i, truth in enumerate(reading.truths) if i not in broken):
        return "perturbed_kept_relation_fails"
    return None


def follows(reading: ImageReading) -> bool:
    """The image follows the prompt: every object found and every stated relation holds."""
    return reading.all_found and all(truth is Truth.HOLDS for truth in reading.truths)


def prefers(better: ImageReading, worse: ImageReading) -> bool:
    """The oracle strictly prefers `better` to `worse` (two images of one prompt): it is at least as good on both
    counts, stated relations confirmed and every object found, and better on one. Images that differ in opposite
    directions (more relations confirmed but an object missing) are not ordered."""
    at_least = better.confirmed >= worse.confirmed and better.all_found >= worse.all_found
    return at_least and (better.confirmed > worse.confirmed or better.all_found > worse.all_found)


def judge_pair(perfect: ImageReading, perturbed: ImageReading, broken: frozenset[int], kind: str) -> PairJudgement:
    """The oracle's decision on a pair from the readings of its two images (module docstring)."""
    if kind == "ranked":
        if prefers(perfect, perturbed):
            return PairJudgement(True, None, "perfect")
        verdict = "perturbed" if prefers(perturbed, perfect) else "both" if follows(perfect) else "neither"
        return PairJudgement(False, "not_strictly_preferred", verdict)
    reason = image_rejection(perfect, frozenset(), "perfect") or image_rejection(perturbed, broken, "perturbed")
    if reason is None:
        return PairJudgement(True, None, "perfect")
    perfect_follows, perturbed_follows = follows(perfect), follows(perturbed)
    if perfect_follows:
        verdict = "both" if perturbed_follows else "flag"
    else:
        verdict = "perturbed" if perturbed_follows else "neither"
    return PairJudgement(False, reason, verdict)


class PairGraph(NamedTuple):
    """What the oracle needs of a pairs.parquet row."""

    relations: list[Relation]
    colours: list[str]
    broken: frozenset[int]


def pair_graph(row: dict) -> PairGraph:
    """The stated relations, object colours and broken relation indices of a pairs.parquet row; SceneError,
    ValueError or KeyError when the row has no usable scene graph."""
    scene = Scene.from_json(row["perfect_scene"])
    relations = [Relation.from_dict(item) for item in json.loads(row["stated_relations"])]
    broken = frozenset(int(i) for i in json.loads(row["broken_relations"]))
    if any(not 0 <= i < len(relations) for i in broken):
        raise ValueError(f"broken relation indices {sorted(broken)} outside the {len(relations)} stated relations")
    return PairGraph(relations, [obj.colour for obj in scene.objects], broken)


def _judge_row(row: dict, dataset_dir: Path, graph: PairGraph) -> PairJudgement:
    images = []
    for column in ("perfect_image", "perturbed_image"):
        try:
            with Image.open(dataset_dir / row[column]) as handle:
                images.append(handle.convert("RGB"))
        except (OSError, SyntaxError, ValueError):
            return PairJudgement(False, "image_unreadable", "flag")
    try:
        readings = [read_image(image, graph.relations, graph.colours) for image in images]
    except Exception:  # noqa: BLE001 - any detector failure on one image rejects that pair, never the review
        return PairJudgement(False, "detector_failed", "flag")
    return judge_pair(*readings, graph.broken, str(row.get("kind") or "generated"))


@dataclass
class OracleReviewResult:
    db_path: Path
    accepted: int
    rejected: dict[str, int]  # reason -> pairs
    already_decided: int  # pairs the oracle had decided in an earlier run (not judged again)

    def describe(self) -> str:
        reasons = ", ".join(f"{reason} {count}" for reason, count in self.rejected.items() if count) or "none"
        return (
            f"oracle review: {self.accepted} accepted, {sum(self.rejected.values())} rejected ({reasons}); "
            f"{self.already_decided} decided earlier; decisions in {self.db_path}"
        )


def oracle_review(
    dataset_dir: str | os.PathLike, *, db_path: str | os.PathLike | None = None, progress: bool = True
) -> OracleReviewResult:
    """Judge every pair of `dataset_dir` that the oracle has not decided yet and record the decisions (reviewer
    `oracle`) in `db_path` (default DIR/review.sqlite). One ReviewError, before any decision is written, if the
    dataset has no SpatialWorld scene graphs to judge against."""
    dataset_dir = Path(dataset_dir)
    _, frame = load_pairs(dataset_dir)
    rows = frame.to_dict("records")
    graphs = {}
    for row in rows:
        try:
            graphs[row["pair_id"]] = pair_graph(row)
        except (SceneError, ValueError, KeyError, TypeError) as error:
            raise ReviewError(
                f"{dataset_dir}: pair {row['pair_id']} has no usable scene graph for the oracle (perfect_scene, "
                f"stated_relations, broken_relations: {error}); the oracle can only review SpatialWorld pairs"
            ) from None
        if not graphs[row["pair_id"]].relations:
            raise ReviewError(f"{dataset_dir}: pair {row['pair_id']} states no relation; nothing for the oracle")
    store = ReviewStore(dataset_dir / DB_NAME if db_path is None else db_path)
    decided = store.decided_pairs(ORACLE_REVIEWER)
    outcomes: Counter = Counter()
    for row in tqdm(rows, desc="oracle review", unit="pair", disable=not progress):
        pair_id = row["pair_id"]
        if pair_id in decided:
            continue
        judgement = _judge_row(row, dataset_dir, graphs[pair_id])
        record_decision(store, pair_id, judgement)
        outcomes["accepted" if judgement.accepted else judgement.reason] += 1
    return OracleReviewResult(
        store.path, outcomes["accepted"], {reason: outcomes[reason] for reason in REASONS}, len(decided)
    )


def record_decision(store: ReviewStore, pair_id: str, judgement: PairJudgement) -> None:
    """Write the oracle's decision as a reviewer's click: the side its verdict names, as `perfect_side` shows it."""
    shown = perfect_side(pair_id, ORACLE_REVIEWER)
    other = SIDES[1 - SIDES.index(shown)]
    choice = {"perfect": shown, "perturbed": other}.get(judgement.verdict, judgement.verdict)
    store.decide(
        reviewer=ORACLE_REVIEWER, pair_id=pair_id, choice=choice, shown_perfect_side=shown, reason=judgement.reason
    )
