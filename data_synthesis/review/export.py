"""`python -m data_synthesis export DIR --out DIR2`: the reviewed dataset, in the dataset dir format of docs/DESIGN.md.

A pair is accepted when at least `min_reviewers` reviewers decided it and every one of them chose the perfect
image; it is written unchanged except for review_status "reviewed". Every other decided pair is dropped and
counted by reason (flagged, neither, both, reviewers disagreeing, too few reviewers, perturbed image chosen).

Pairs whose reviewers chose the perturbed image are dropped, not swapped. A consistent swap does not exist: the
reviewer judged both images against `prompt`, so the triplet would be (prompt, perturbed image, perfect image), but
its scene, relation and broken-relation columns would then have to describe which of the prompt's relations the
new loser image breaks, which the review does not say; swapping the prompts too would make a triplet no reviewer
judged (the chosen image followed `prompt`, so it likely does not follow `perturbed_prompt`). Such pairs mean
that a generator failed on at least one of the two prompts; they are counted as `perturbed_chosen`.

Writes: images are hard-linked into DIR2 where the filesystem allows (writers only ever replace an image by
rename, never rewrite it in place, so a link cannot change under the export) and copied otherwise, each placed by
an atomic rename; `export.json` (where the export came from) is written first, meta.json is removed first and
written last, so a killed export never looks finished and a rerun finishes it. DIR2 may hold an earlier export
(it is brought up to date), nothing else.
"""

from __future__ import annotations

import io
import os
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from data_synthesis.build import SPLITS
from data_synthesis.review.store import ReviewError, ReviewStore, existing_db
from data_synthesis.verify import load_pairs
from shared.io import atomic_write_bytes, atomic_write_json

EXPORT_MARKER = "export.json"
DROP_REASONS = ("flagged", "disagreement", "perturbed_chosen", "neither", "both", "too_few_reviewers")


@dataclass
class ExportResult:
    out_dir: Path
    accepted: int
    dropped: dict[str, int]  # reason -> pairs
    not_reviewed: int


def review_outcome(verdicts: list[str], min_reviewers: int) -> str:
    """What becomes of a pair with these verdicts (one per reviewer): accepted, not_reviewed, or dropped for one of
    DROP_REASONS."""
    if not verdicts:
        return "not_reviewed"
    kinds = set(verdicts)
    if "flag" in kinds:
        return "flagged"
    if len(kinds) > 1:
        return "disagreement"
    (verdict,) = kinds
    if verdict == "perfect":
        return "accepted" if len(verdicts) >= min_reviewers else "too_few_reviewers"
    return {"perturbed": "perturbed_chosen", "neither": "neither", "both": "both"}[verdict]


def export_reviewed(
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    db_path: str | os.PathLike | None = None,
    min_reviewers: int = 1,
) -> ExportResult:
    """Write the accepted pairs of `dataset_dir` (decisions in `db_path`, default DIR/review.sqlite) to
    `out_dir`."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    meta, frame = load_pairs(dataset_dir)
    db_path = existing_db(dataset_dir, db_path)
    if min_reviewers < 1:
        raise ReviewError(f"--min-reviewers must be at least 1, got {min_reviewers}")
    _check_output_dir(out_dir, dataset_dir)

    decisions = ReviewStore(db_path).decisions()
    verdicts: dict[str, list[str]] = defaultdict(list)
    for decision in decisions:
        verdicts[decision.pair_id].append(decision.verdict)
    outcomes = Counter()
    keep = []
    for pair_id in frame["pair_id"]:
        outcome = review_outcome(verdicts.get(pair_id, []), min_reviewers)
        outcomes[outcome] += 1
        keep.append(outcome == "accepted")
    accepted = frame[keep].assign(review_status="reviewed").reset_index(drop=True)
    dropped = {reason: outcomes[reason] for reason in DROP_REASONS}
    if accepted.empty:
        raise ReviewError(
            f"no pair of {dataset_dir} is accepted by the decisions in {db_path} ({len(decisions)} decisions; "
            f"dropped: {dropped}); nothing to export"
        )

    review = {
        "source": str(dataset_dir.resolve()),
        "decisions": str(db_path.resolve()),
        "min_reviewers": min_reviewers,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    atomic_write_json(out_dir / EXPORT_MARKER, review)
    for stale in out_dir.glob("images/**/.*.tmp"):
        stale.unlink()
    wanted = {path for column in ("perfect_image", "perturbed_image") for path in accepted[column]}
    for relative in sorted(wanted):
        place_image(dataset_dir / relative, out_dir / relative)
    for path in out_dir.glob("images/**/*.png"):
        if path.relative_to(out_dir).as_posix() not in wanted:
            path.unlink()
    buffer = io.BytesIO()
    accepted.to_parquet(buffer, index=False, engine="pyarrow")
    atomic_write_bytes(out_dir / "pairs.parquet", buffer.getvalue())
    review |= {
        "reviewers": sorted({d.reviewer for d in decisions}),
        "pairs_accepted": len(accepted),
        "pairs_dropped": dropped,
        "pairs_not_reviewed": outcomes["not_reviewed"],
    }
    broken = accepted["num_broken"]
    counts = {
        "pairs": len(accepted),
        "by_split": {split: int((accepted["split"] == split).sum()) for split in SPLITS},
        "by_num_broken": {str(k): int((broken == k).sum()) for k in sorted(broken.unique())},
    }
    atomic_write_json(out_dir / "meta.json", {**meta, "counts": counts, "review": review})
    return ExportResult(out_dir, len(accepted), dropped, outcomes["not_reviewed"])


def _check_output_dir(out_dir: Path, dataset_dir: Path) -> None:
    if out_dir.resolve() == dataset_dir.resolve():
        raise ReviewError(f"--out {out_dir} is the dataset dir itself; export to another dir")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not (out_dir / EXPORT_MARKER).is_file():
        raise ReviewError(
            f"--out {out_dir} holds files but no {EXPORT_MARKER} of an earlier export; choose an empty or new dir"
        )


def place_image(source: Path, target: Path) -> None:
    """Hard-link (or copy) `source` to `target` by an atomic rename; skip it if `target` is that file already."""
    if target.exists() and os.path.samefile(source, target):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp_path.unlink(missing_ok=True)
    try:
        os.link(source, tmp_path)
    except OSError:
        shutil.copyfile(source, tmp_path)
    try:
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
