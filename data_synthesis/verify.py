"""`data_synthesis verify DIR`: check a dataset dir file by file and pair by pair, with the pixel detector.

Reports (1) missing, corrupt or malformed entries, listed; (2) the fraction of perfect images in which the
detector reads every stated relation as holding, and of perturbed images in which exactly the recorded relations
read as broken and the rest as holding; (3) how well single-object shortcut rules tell the two images of a pair
apart without reading the relation (see `shortcut_report`). It fails on any bad file or below the threshold.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from data_synthesis.build import COLUMNS, GENERATOR, OPTIONAL_COLUMNS, SCHEMA_VERSION
from data_synthesis.detect import detect
from data_synthesis.relations import Relation, Truth, evaluate
from data_synthesis.scene import Scene, SceneError

FEATURES = ("x", "y", "distance_to_centre", "box_area")
SHORTCUT_TARGET = 0.60
SINGLE_OBJECT_FAMILIES = ("absolute", "background")


@dataclass
class VerifyReport:
    num_pairs: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    perfect_all_hold: float = 0.0
    perturbed_exact: float = 0.0
    relation_agreement: dict[str, float] = field(default_factory=dict)
    disagreements: list[str] = field(default_factory=list)
    shortcut: dict = field(default_factory=dict)
    threshold: float = 0.99

    @property
    def passed(self) -> bool:
        return (
            not (self.missing or self.corrupt or self.malformed)
            and self.num_pairs > 0
            and min(self.perfect_all_hold, self.perturbed_exact) >= self.threshold
        )

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "num_pairs": self.num_pairs,
            "missing": self.missing,
            "corrupt": self.corrupt,
            "malformed": self.malformed,
            "perfect_all_hold": self.perfect_all_hold,
            "perturbed_exact": self.perturbed_exact,
            "relation_agreement": self.relation_agreement,
            "disagreements": self.disagreements,
            "shortcut": self.shortcut,
            "threshold": self.threshold,
        }


class DatasetError(ValueError):
    """The dataset dir itself cannot be read (no meta.json or pairs.parquet, wrong schema)."""


def load_pairs(dataset_dir: str | os.PathLike) -> tuple[dict, pd.DataFrame]:
    """meta.json and pairs.parquet of a dataset dir, with one clear error if either is missing or malformed."""
    dataset_dir = Path(dataset_dir)
    meta_path, pairs_path = dataset_dir / "meta.json", dataset_dir / "pairs.parquet"
    if not dataset_dir.is_dir():
        raise DatasetError(f"{dataset_dir} is not a directory")
    for path in (meta_path, pairs_path):
        if not path.exists():
            raise DatasetError(f"{path} is missing: {dataset_dir} is not a finished dataset dir")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{meta_path} is not valid JSON: {error}") from error
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(f"{meta_path}: schema_version {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    try:
        frame = pd.read_parquet(pairs_path)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{pairs_path} cannot be read as Parquet: {error}") from error
    absent = [c for c in COLUMNS if c not in frame.columns and c not in OPTIONAL_COLUMNS]
    if absent:
        raise DatasetError(f"{pairs_path} lacks columns {absent}")
    return meta, with_optional_columns(frame)


def with_optional_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the columns added after the first schema-1 datasets filled in where it lacks them: `kind`
    "render" for the Pillow renderer's pairs and "generated" for the others, no sampler, one try per image."""
    defaults = {
        "kind": lambda f: f["generator"].map(lambda g: "render" if g == GENERATOR else "generated"),
        "sampler": lambda f: "",
        "perfect_tries": lambda f: 1,
        "perturbed_tries": lambda f: 1,
    }
    missing = {column: make(frame) for column, make in defaults.items() if column not in frame.columns}
    return frame.assign(**missing) if missing else frame


def _load_image(path: Path, resolution: int) -> tuple[Image.Image | None, str | None]:
    if not path.exists():
        return None, "missing"
    try:
        with Image.open(path) as handle:
            image = handle.convert("RGB")
    except (OSError, SyntaxError, ValueError):
        return None, "corrupt"
    if image.size != (resolution, resolution):
        return None, "corrupt"
    return image, None


def _features(box) -> dict[str, float] | None:
    if box is None:
        return None
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return {
        "x": x,
        "y": y,
        "distance_to_centre": ((x - 0.5) ** 2 + (y - 0.5) ** 2) ** 0.5,
        "box_area": (box[2] - box[0]) * (box[3] - box[1]),
    }


def check_pair(row: dict, dataset_dir: Path, resolution: int) -> dict:
    """Everything verify needs to know about one pair (runs in worker processes)."""
    result = {"pair_id": row["pair_id"], "problems": []}
    images = {}
    for column in ("perfect_image", "perturbed_image"):
        image, problem = _load_image(dataset_dir / row[column], resolution)
        if problem:
            result["problems"].append((problem, row[column]))
        images[column] = image
    try:
        scene = Scene.from_json(row["perfect_scene"])
        stated = [Relation.from_dict(r) for r in json.loads(row["stated_relations"])]
        broken = json.loads(row["broken_relations"])
        colours = sorted({c for r in stated for c in r.subjects} | {o.colour for o in scene.objects})
    except (SceneError, json.JSONDecodeError, KeyError, TypeError) as error:
        result["problems"].append(("malformed", f"{row['pair_id']}: {error}"))
        return result
    if result["problems"]:
        return result
    perfect = detect(images["perfect_image"], colours)
    perturbed = detect(images["perturbed_image"], colours)
    perfect_truths = [evaluate(r, perfect) for r in stated]
    perturbed_truths = [evaluate(r, perturbed) for r in stated]
    expected = [Truth.BROKEN if i in broken else Truth.HOLDS for i in range(len(stated))]
    result["perfect_ok"] = all(t is Truth.HOLDS for t in perfect_truths)
    result["perturbed_ok"] = perturbed_truths == expected
    result["relations"] = [
        (r.family, perfect_truths[i] is Truth.HOLDS, perturbed_truths[i] is expected[i]) for i, r in enumerate(stated)
    ]
    result["disagreements"] = [
        f"{row['pair_id']} {image}: {_format(r)} read {got.value}, expected {want.value}"
        for image, truths, wanted in (
            ("perfect", perfect_truths, [Truth.HOLDS] * len(stated)),
            ("perturbed", perturbed_truths, expected),
        )
        for r, got, want in zip(stated, truths, wanted, strict=True)
        if got is not want
    ]
    first = stated[broken[0]]
    result["shortcut"] = {
        "kind": first.kind,
        "family": first.family,
        "roles": {
            role: (_features(perfect.box(colour)), _features(perturbed.box(colour)))
            for role, colour in zip("ABC", first.subjects, strict=False)
        },
    }
    return result


def _format(relation: Relation) -> str:
    return f"{relation.kind}({', '.join(relation.subjects)}{', ' + relation.region if relation.region else ''})"


def shortcut_report(shortcuts: list[dict]) -> dict:
    """Accuracy of the best single-object rule per relation kind.

    A rule looks at one named object in each image of a pair (its x, y, distance to the centre or box area, as
    the detector reads them) and calls the image with the larger (or smaller) value the perfect one; ties count
    half. For each relation kind the best rule and direction is taken, as a reward model could learn per
    relation word without ever comparing two objects. `overall` is the pair-weighted mean of those bests over
    relations between objects; relations of one object to the image or the background (absolute placement, in
    the sky / on the ground) are decided by that object's position by definition, and are reported apart."""
    votes: dict[str, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    families: dict[str, str] = {}
    for item in shortcuts:
        families[item["kind"]] = item["family"]
        for role, (perfect, perturbed) in item["roles"].items():
            for feature in FEATURES:
                if perfect is None or perturbed is None:
                    score = 0.5
                else:
                    difference = perfect[feature] - perturbed[feature]
                    score = 1.0 if difference > 1e-9 else 0.0 if difference < -1e-9 else 0.5
                votes[item["kind"]][(role, feature)].append(score)
    by_kind, by_family, weights = {}, defaultdict(list), Counter()
    for kind, rules in votes.items():
        best = max(
            ((max(sum(s) / len(s), 1 - sum(s) / len(s)), rule) for rule, s in rules.items()), key=lambda item: item[0]
        )
        count = len(next(iter(rules.values())))
        by_kind[kind] = {"accuracy": round(best[0], 4), "rule": f"{best[1][0]}.{best[1][1]}", "pairs": count}
        by_family[families[kind]].append((best[0], count))
        weights[kind] = count
    between_objects = {k: n for k, n in weights.items() if families[k] not in SINGLE_OBJECT_FAMILIES}
    total = sum(between_objects.values())
    overall = sum(by_kind[k]["accuracy"] * n for k, n in between_objects.items()) / total if total else 0.0
    return {
        "overall": round(overall, 4),
        "overall_pairs": total,
        "target": SHORTCUT_TARGET,
        "by_family": {
            f: round(sum(a * n for a, n in v) / sum(n for _, n in v), 4) for f, v in sorted(by_family.items())
        },
        "by_kind": dict(sorted(by_kind.items())),
    }


_STATE: dict = {}


def _init(dataset_dir: Path, resolution: int) -> None:
    _STATE["dir"], _STATE["resolution"] = dataset_dir, resolution


def _check(row: dict) -> dict:
    return check_pair(row, _STATE["dir"], _STATE["resolution"])


def verify(
    dataset_dir: str | os.PathLike, *, workers: int = 1, threshold: float = 0.99, progress: bool = True
) -> VerifyReport:
    dataset_dir = Path(dataset_dir)
    meta, frame = load_pairs(dataset_dir)
    resolution = int(meta["arguments"]["resolution"])
    rows = frame.to_dict("records")
    report = VerifyReport(num_pairs=len(rows), threshold=threshold)
    _init(dataset_dir, resolution)
    if workers > 1:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init, initargs=(dataset_dir, resolution))
        results_iter = pool.imap(_check, rows, chunksize=8)
    else:
        pool, results_iter = None, map(_check, rows)
    results = list(tqdm(results_iter, total=len(rows), desc="verify", unit="pair", disable=not progress))
    if pool is not None:
        pool.close()
        pool.join()

    checked = [r for r in results if not r["problems"]]
    for result in results:
        for problem, what in result["problems"]:
            {"missing": report.missing, "corrupt": report.corrupt, "malformed": report.malformed}[problem].append(what)
    if checked:
        report.perfect_all_hold = round(sum(r["perfect_ok"] for r in checked) / len(checked), 4)
        report.perturbed_exact = round(sum(r["perturbed_ok"] for r in checked) / len(checked), 4)
        agreement: dict[str, list[int]] = defaultdict(list)
        for result in checked:
            report.disagreements += result["disagreements"]
            for family, perfect_ok, perturbed_ok in result["relations"]:
                agreement[family] += [perfect_ok, perturbed_ok]
        report.relation_agreement = {f: round(sum(v) / len(v), 4) for f, v in sorted(agreement.items())}
        report.shortcut = shortcut_report([r["shortcut"] for r in checked])
    return report


def format_report(report: VerifyReport) -> str:
    lines = [f"pairs: {report.num_pairs}"]
    for name, items in (("missing", report.missing), ("corrupt", report.corrupt), ("malformed", report.malformed)):
        if items:
            lines.append(f"{name} ({len(items)}):")
            lines += [f"  {item}" for item in items[:50]]
            if len(items) > 50:
                lines.append(f"  ... and {len(items) - 50} more")
    lines.append(f"perfect images, every stated relation read as holding: {report.perfect_all_hold:.2%}")
    lines.append(f"perturbed images, exactly the recorded relations read as broken: {report.perturbed_exact:.2%}")
    if report.relation_agreement:
        lines.append(
            "relation reads agreeing with the scene graph, by family: "
            + ", ".join(f"{f} {v:.1%}" for f, v in report.relation_agreement.items())
        )
    if report.disagreements:
        lines.append(f"detector disagreements ({len(report.disagreements)}; all in the JSON report):")
        lines += [f"  {item}" for item in report.disagreements[:10]]
    if report.shortcut:
        shortcut = report.shortcut
        flag = "ok" if shortcut["overall"] <= shortcut["target"] else "ABOVE TARGET"
        lines.append(
            f"best single-object shortcut rule on relations between objects: {shortcut['overall']:.1%} "
            f"over {shortcut['overall_pairs']} pairs (target <= {shortcut['target']:.0%}: {flag})"
        )
        lines.append(
            "  by family: "
            + ", ".join(f"{f} {v:.1%}" for f, v in shortcut["by_family"].items())
            + f" ({', '.join(SINGLE_OBJECT_FAMILIES)}: one object by definition)"
        )
    lines.append("PASSED" if report.passed else f"FAILED (threshold {report.threshold:.0%}, no bad files)")
    return "\n".join(lines)
