"""On-policy ranked pairs from drawn groups: `python -m data_synthesis ranked-groups DRAW --source-dir RL --out DIR`.

GRPO ranks the samples of one prompt against each other, so what its critic must get right is the order within a
group of the policy's own samples. `python -m rl_policy draw --split train` draws such groups (the rollouts' SDE
sampler, `per_prompt` samples of each prompt); this turns them into Bradley-Terry pairs of `kind` "ranked", the same
rows the best-of-N builder makes (`data_synthesis.best_of`): two samples of one prompt, the one the oracle strictly
prefers (`oracle_review.prefers`: more stated relations confirmed or every object found, and worse on neither) as
`perfect_image`, `perturbed_prompt` = `prompt`, `broken_relations` the relations confirmed in the preferred sample
only. Per group the oracle re-reads every sample; of the strictly ordered (preferred, other) pairs at most
`pairs_per_group` are kept, drawn without replacement by a hash of (seed, group), so one group's pairs do not
depend on the others. A group with no ordered pair (every sample equally good) is skipped and counted, and so is an
image that cannot be read or on which the detector raises (it takes part in no pair).

Splits go by prompt (`build.split_of`, salted with "ranked-groups": the draw's prompts all come from one split of the
source set, and are spread over train/val/test again), so a prompt's pairs stay together and `generated_pairwise_
accuracy` is measured on prompts the critic did not train on. Images are copied byte for byte. The output is
written to a temporary dir and renamed into place when complete: an interrupted run leaves nothing half-written and
a rerun starts again (a few seconds per thousand samples); a finished dir is kept when the arguments match.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from data_synthesis.build import COLUMNS, SCHEMA_VERSION, BuildError, dataset_counts, split_of
from data_synthesis.oracle_review import ImageReading, pair_graph, prefers, read_image
from data_synthesis.relations import Truth
from data_synthesis.verify import load_pairs
from shared.io import atomic_write_bytes, atomic_write_json, stable_seed

DRAW_SAMPLES = "samples.parquet"  # what `python -m rl_policy draw` writes (read as a file: no rl_policy import)
DRAW_ARGS = "draw_args.json"
SPLIT_SALT = "ranked-groups"


@dataclass(frozen=True)
class RankedGroupsConfig:
    """pairs_per_group: most ordered pairs kept per group; seed: which ones; split_fractions: train/val/test shares of
    the prompts."""

    pairs_per_group: int = 6
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def __post_init__(self) -> None:
        if self.pairs_per_group < 1:
            raise BuildError(f"--pairs-per-group must be at least 1, got {self.pairs_per_group}")
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise BuildError(f"--split-fractions must be three shares >= 0 summing to 1, got {list(fractions)}")


def ordered_pairs(readings: list[ImageReading | None], limit: int, seed: int, group: int) -> list[tuple[int, int]]:
    """Up to `limit` (preferred, other) sample indices that the oracle strictly orders, chosen by a hash of (seed,
    group, pair), in sample order; unreadable samples (None) take part in none."""
    candidates = [
        (a, b)
        for a, first in enumerate(readings)
        for b, second in enumerate(readings)
        if first is not None and second is not None and prefers(first, second)
    ]
    chosen = sorted(candidates, key=lambda pair: stable_seed("ranked-groups", seed, group, *pair))[:limit]
    return sorted(chosen)


def _read_draw(draw_dir: Path) -> tuple[dict, pd.DataFrame]:
    samples_path, args_path = draw_dir / DRAW_SAMPLES, draw_dir / DRAW_ARGS
    for path in (samples_path, args_path):
        if not path.is_file():
            raise BuildError(f"{path} is missing: {draw_dir} is not a finished `python -m rl_policy draw` dir")
    try:
        arguments = json.loads(args_path.read_text())
        samples = pd.read_parquet(samples_path)
    except (OSError, ValueError) as error:
        raise BuildError(f"{draw_dir}: cannot read the draw ({error})") from None
    absent = {"group", "sample", "pair_id", "prompt", "image"} - set(samples.columns)
    if absent:
        raise BuildError(f"{samples_path} lacks columns {sorted(absent)}")
    return arguments, samples


def _open(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError:  # UnidentifiedImageError is one
        return None


def build_ranked_groups(
    draw_dir: str | os.PathLike, source_dir: str | os.PathLike, out_dir: str | os.PathLike, config: RankedGroupsConfig
) -> dict:
    """Write the ranked pairs of every group in `draw_dir` as a dataset dir `out_dir` (module docstring); -> its
    meta.json counts. The draw's prompts are looked up in `source_dir` (the dataset the draw read) by pair id."""
    draw_dir, source_dir, out_dir = Path(draw_dir), Path(source_dir), Path(out_dir)
    draw_arguments, samples = _read_draw(draw_dir)
    _, source = load_pairs(source_dir)
    arguments = {
        "schema_version": SCHEMA_VERSION,
        "ranked_groups": asdict(config) | {"split_fractions": list(config.split_fractions)},
        "draw": draw_arguments,
        "source_dir": str(source_dir),
    }
    meta_path = out_dir / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("arguments") == arguments:
            return meta["counts"]
        raise BuildError(f"{out_dir} holds ranked pairs made with other arguments: remove it or choose another --out")
    if out_dir.exists():
        raise BuildError(f"{out_dir} exists and is not a finished ranked-groups dir: remove it or choose another --out")
    rows_by_id = {row["pair_id"]: row for row in source.to_dict("records")}
    unknown = sorted(set(samples["pair_id"]) - set(rows_by_id))
    if unknown:
        raise BuildError(
            f"{source_dir} has no pair {unknown[0]!r} ({len(unknown)} of the draw's prompts): wrong --source-dir"
        )
    work = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    (work / "images").mkdir(parents=True)
    sampler = f"sde:{draw_arguments.get('num_steps')}:{draw_arguments.get('noise_level')}"
    rows: list[dict] = []
    skipped: Counter = Counter()
    for group, members in samples.sort_values(["group", "sample"]).groupby("group", sort=True):
        source_row = rows_by_id[members["pair_id"].iloc[0]]
        graph = pair_graph(source_row)
        readings: list[ImageReading | None] = []
        for path in members["image"]:
            image, reading = _open(draw_dir / path), None
            if image is None:
                skipped["image_unreadable"] += 1
            else:
                try:
                    reading = read_image(image, graph.relations, graph.colours)
                except Exception:  # noqa: BLE001 - a detector failure on one image skips that image, not the build
                    skipped["detector_failed"] += 1
            readings.append(reading)
        chosen = ordered_pairs(readings, config.pairs_per_group, config.seed, int(group))
        if not chosen:
            skipped["no_ordered_samples"] += 1
            continue
        images = list(members["image"])
        for preferred, other in chosen:
            index = len(rows)
            names = (f"images/{index:07d}_preferred.png", f"images/{index:07d}_other.png")
            for name, sample in zip(names, (preferred, other), strict=True):
                shutil.copyfile(draw_dir / images[sample], work / name)
            truths = (readings[preferred].truths, readings[other].truths)
            broken = [
                i for i, (a, b) in enumerate(zip(*truths, strict=True)) if a is Truth.HOLDS and b is not Truth.HOLDS
            ]
            rows.append(
                source_row
                | {
                    "pair_id": f"{source_row['pair_id']}-g{int(group)}-{preferred}-{other}",
                    "index": index,
                    "split": split_of(source_row["prompt"], config.split_fractions, SPLIT_SALT),
                    "perturbed_prompt": source_row["prompt"],
                    "perfect_image": names[0],
                    "perturbed_image": names[1],
                    "perturbed_scene": source_row["perfect_scene"],
                    "perturbed_relations": source_row["stated_relations"],
                    "broken_relations": json.dumps(broken),
                    "broken_families": ",".join(sorted({graph.relations[i].family for i in broken})),
                    "operations": json.dumps([]),
                    "num_broken": len(broken),
                    "generator": str(draw_arguments.get("pipeline", "draw")),
                    "review_status": "oracle",
                    "kind": "ranked",
                    "sampler": sampler,
                    "perfect_tries": len(members),
                    "perturbed_tries": len(members),
                }
            )
    if not rows:
        shutil.rmtree(work)
        raise BuildError(f"{draw_dir}: no group has two samples the oracle orders ({dict(skipped)})")
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    atomic_write_bytes(work / "pairs.parquet", buffer.getvalue())
    counts = dataset_counts(frame, skipped) | {"groups": int(samples["group"].nunique())}
    atomic_write_json(work / "meta.json", {"schema_version": SCHEMA_VERSION, "arguments": arguments, "counts": counts})
    work.rename(out_dir)
    return counts
