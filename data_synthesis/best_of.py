"""Best-of-N drawing: generated pairs that the SpatialWorld oracle accepts, and on-policy ranked pairs.

The paper keeps generated pairs after expert review. Here each image of a pair is drawn until the oracle accepts it
(`oracle_review.image_rejection`): the perfect prompt's image must show every object with every stated relation
holding, the perturbed prompt's image every object with exactly the recorded relations broken. Try `t` of a side
uses seed `try_seed(render_seed, t)` (try 0: the pair's render seed; both sides share each try's seed, so at equal
tries they differ by their prompts only); a side stops at its first accepted try, after `max_tries` at most. A pair
whose side finds no accepted image is skipped and counted (`no_accepted_image`).

Ranked pairs (a `ranked_fraction` of the pairs, chosen by hash; `kind` "ranked"): the perfect prompt is drawn up to
`max_tries` times, and the first two samples the oracle strictly orders (`oracle_review.prefers`: more stated
relations confirmed, or every object found against one missing or merged, and worse on neither) make a
Bradley-Terry pair under that one prompt: `perfect_image` the preferred sample, `perturbed_image` the other,
`perturbed_prompt` = `prompt`, `broken_relations` the relations confirmed in the preferred sample only. These are
the failures RL actually meets (drawn with the rollouts' sampler, they are its own samples). None ordered:
skipped and counted (`no_ordered_samples`).

Each pair draws with one of its generator's samplers (by hash; the evaluation's ODE or the rollouts' SDE, see
`generators.py`), stored in `sampler`; the tries per side go to `perfect_tries` / `perturbed_tries` (a ranked
pair: the samples drawn, in both). Kept pairs get review_status "oracle"; `python -m data_synthesis oracle-review`
records the same verdicts in the review store, where people can review on top.

Bad input: a pair whose prompt is longer than the generator's text encoder takes is skipped and counted
(`prompt_too_long`) before drawing; an image on which the detector raises counts as a rejected try
(`detector_failed`), never a crash of the build.

Determinism and resume: the pairs of each generator are drawn in blocks of its `batch_size` pairs, each round of a
block drawing the pending sides' next try in fixed chunks, so a block's images depend only on the arguments (and the
thread count); when a block is done its kept images are written atomically, then its record
(`best_of/GENERATOR_BLOCK.json`: every pair's outcome, tries and rejections). A rerun reuses every recorded block
whose images are there and redraws the others whole, so a killed build finishes with the same bytes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from data_synthesis.build import (
    BEST_OF_DIR,
    BuildConfig,
    BuildError,
    ImageGenerator,
    ImageRequest,
    WeightedGenerator,
    png_bytes,
)
from data_synthesis.oracle_review import ImageReading, PairGraph, image_rejection, pair_graph, prefers, read_image
from data_synthesis.relations import Relation, Truth
from data_synthesis.scene import Scene
from shared.io import atomic_write_bytes, atomic_write_json, stable_seed

SIDES = ("perfect", "perturbed")
RANKED_SIDE = "ranked"  # the one prompt a ranked pair draws twice or more


@dataclass(frozen=True)
class BestOf:
    """max_tries: images drawn per side at most (N); ranked_fraction: share of the pairs made ranked pairs."""

    max_tries: int = 8
    ranked_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_tries <= 64:
            raise BuildError(f"--best-of must be in [1, 64] tries per image, got {self.max_tries}")
        if not 0 <= self.ranked_fraction <= 1:
            raise BuildError(f"--ranked-fraction must be in [0, 1], got {self.ranked_fraction}")
        if self.ranked_fraction > 0 and self.max_tries < 2:
            raise BuildError("ranked pairs compare two samples of a prompt: --best-of must be at least 2")

    def arguments(self) -> dict:
        return asdict(self)


def try_seed(render_seed: int, attempt: int) -> int:
    """The seed of try `attempt` (0-based) of an image whose pair has `render_seed`."""
    return int(render_seed) if attempt == 0 else stable_seed("best-of-try", int(render_seed), attempt) % 2**31


def pair_kind(seed: int, index: int, ranked_fraction: float) -> str:
    return "ranked" if stable_seed(seed, "kind", index) / 2**63 < ranked_fraction else "generated"


def choose_sampler(generator: ImageGenerator, seed: int, index: int) -> str | None:
    """The sampler pair `index` draws with: one of the generator's, by hash (None: it has only its default)."""
    if not generator.samplers:
        return None
    return generator.samplers[stable_seed(seed, "sampler", index) % len(generator.samplers)]


@dataclass
class _Side:
    """One image a pair needs: the perfect or the perturbed prompt's (or a ranked pair's ordered samples)."""

    name: str  # perfect | perturbed | ranked
    prompt: str
    scene: Scene  # the scene its prompt describes (passed on to generators that read scenes)
    broken: frozenset[int]
    tries: int = 0
    rejections: Counter = field(default_factory=Counter)
    image: Image.Image | None = None  # the accepted image
    samples: list[tuple[Image.Image | None, ImageReading | None]] = field(default_factory=list)  # ranked
    chosen: tuple[int, int] | None = None  # ranked: (preferred try, other try)

    @property
    def done(self) -> bool:
        return self.image is not None or self.chosen is not None

    def take(self, image: Image.Image, graph: PairGraph) -> None:
        """Judge the next try's image."""
        self.tries += 1
        try:
            reading = read_image(image, graph.relations, graph.colours)
        except Exception:  # noqa: BLE001 - a detector failure on one image rejects that try, never the build
            self.rejections["detector_failed"] += 1
            self.samples.append((None, None))
            return
        if self.name != RANKED_SIDE:
            reason = image_rejection(reading, self.broken, self.name)
            if reason is None:
                self.image = image
            else:
                self.rejections[reason] += 1
            return
        self.samples.append((image, reading))
        latest = len(self.samples) - 1
        for earlier, (_, other) in enumerate(self.samples[:-1]):
            if other is None:
                continue
            if prefers(reading, other):
                self.chosen = (latest, earlier)
            elif prefers(other, reading):
                self.chosen = (earlier, latest)
            if self.chosen is not None:
                return
        if latest > 0:
            self.rejections["not_ordered_with_earlier_samples"] += 1


@dataclass
class _Pair:
    row: dict
    graph: PairGraph
    kind: str
    sampler: str | None
    sides: list[_Side]


@dataclass
class DrawStats:
    """What the best-of-N drawing did, for build_log.json (`log`) and the skipped counts of meta.json."""

    max_tries: int
    skipped: Counter = field(default_factory=Counter)
    tried: Counter = field(default_factory=Counter)  # kind -> pairs
    kept: Counter = field(default_factory=Counter)  # kind -> pairs
    tries: dict[str, Counter] = field(default_factory=dict)  # side -> {tries: sides}
    accepted_images: Counter = field(default_factory=Counter)  # side -> images accepted
    rejections: dict[str, Counter] = field(default_factory=dict)  # side -> {reason: tries}
    by_sampler: dict[str, Counter] = field(default_factory=dict)  # sampler -> {pairs, kept, images}
    blocks_reused: int = 0
    seconds: float = 0.0

    def add(self, entry: dict) -> None:
        kind, sampler = entry["kind"], entry["sampler"] or "default"
        self.tried[kind] += 1
        sampler_counts = self.by_sampler.setdefault(sampler, Counter())
        sampler_counts["pairs"] += 1
        if entry["status"] == "kept":
            self.kept[kind] += 1
            sampler_counts["kept"] += 1
        else:
            self.skipped[entry["status"]] += 1
        for side, side_entry in entry["sides"].items():
            self.tries.setdefault(side, Counter())[str(side_entry["tries"])] += 1
            self.accepted_images[side] += int(side_entry["accepted"])
            self.rejections.setdefault(side, Counter()).update(side_entry["rejections"])
            sampler_counts["images"] += side_entry["tries"]

    def log(self) -> dict:
        images = {side: sum(int(t) * n for t, n in counts.items()) for side, counts in self.tries.items()}
        return {
            "max_tries": self.max_tries,
            "pairs_tried": dict(sorted(self.tried.items())),
            "pairs_kept": dict(sorted(self.kept.items())),
            "pairs_skipped": dict(sorted(self.skipped.items())),
            "pair_acceptance_rate": {
                kind: round(self.kept[kind] / n, 4) for kind, n in sorted(self.tried.items()) if n
            },
            "images_drawn": dict(sorted(images.items())),
            "image_acceptance_rate": {
                side: round(self.accepted_images[side] / n, 4) for side, n in sorted(images.items()) if n
            },
            "tries_per_side": {
                side: dict(sorted(c.items(), key=lambda i: int(i[0]))) for side, c in self.tries.items()
            },
            "rejections": {side: dict(sorted(c.items())) for side, c in self.rejections.items()},
            "by_sampler": {name: dict(sorted(c.items())) for name, c in sorted(self.by_sampler.items())},
            "blocks_reused": self.blocks_reused,
            "seconds": round(self.seconds, 3),
        }


def draw_best_of(
    config: BuildConfig,
    best_of: BestOf,
    out_dir: Path,
    rows: list[dict],
    generators: Sequence[WeightedGenerator],
    progress: bool,
) -> tuple[list[dict], DrawStats]:
    """The kept rows (index order), updated with kind, sampler, tries and review_status "oracle", and what the
    drawing did. Images of kept pairs are written to their rows' paths (module docstring)."""
    start = time.perf_counter()
    stats = DrawStats(best_of.max_tries)
    kept: list[dict] = []
    (out_dir / BEST_OF_DIR).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(rows), desc="best-of-N", unit="pair", disable=not progress, dynamic_ncols=True)
    for weighted in generators:
        generator = weighted.generator
        own = [row for row in rows if row["generator"] == generator.name]
        try:
            for block, first in enumerate(range(0, len(own), generator.batch_size)):
                block_rows = own[first : first + generator.batch_size]
                record_path = out_dir / BEST_OF_DIR / f"{generator.name}_{block:05d}.json"
                entries = _recorded_block(record_path, block_rows, out_dir)
                if entries is None:
                    entries = _draw_block(config, best_of, generator, block_rows, out_dir)
                    atomic_write_json(record_path, {"pairs": entries})
                else:
                    stats.blocks_reused += 1
                for row, entry in zip(block_rows, entries, strict=True):
                    stats.add(entry)
                    if entry["status"] == "kept":
                        kept.append(_kept_row(row, entry))
                bar.update(len(block_rows))
        finally:
            generator.close()
    bar.close()
    stats.seconds = time.perf_counter() - start
    return sorted(kept, key=lambda row: row["index"]), stats


def _recorded_block(path: Path, rows: list[dict], out_dir: Path) -> list[dict] | None:
    """The record of a block drawn earlier, if it is there, describes these pairs and its kept images exist."""
    if not path.is_file():
        return None
    try:
        entries = json.loads(path.read_text())["pairs"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    if [entry.get("index") for entry in entries] != [row["index"] for row in rows]:
        return None
    for row, entry in zip(rows, entries, strict=True):
        if entry["status"] == "kept" and not all(
            (out_dir / row[c]).is_file() for c in ("perfect_image", "perturbed_image")
        ):
            return None
    return entries


def _draw_block(
    config: BuildConfig, best_of: BestOf, generator: ImageGenerator, rows: list[dict], out_dir: Path
) -> list[dict]:
    """Draw one block of pairs round by round; write the kept images; one record entry per pair."""
    pairs: list[_Pair | None] = []
    too_long = generator.prompt_too_long([p for row in rows for p in (row["prompt"], row["perturbed_prompt"])])
    for position, row in enumerate(rows):
        if too_long[2 * position] or too_long[2 * position + 1]:
            pairs.append(None)
            continue
        graph = pair_graph(row)
        kind = pair_kind(config.seed, row["index"], best_of.ranked_fraction)
        perfect_scene, perturbed_scene = Scene.from_json(row["perfect_scene"]), Scene.from_json(row["perturbed_scene"])
        if kind == "ranked":
            sides = [_Side(RANKED_SIDE, row["prompt"], perfect_scene, frozenset())]
        else:
            sides = [
                _Side("perfect", row["prompt"], perfect_scene, frozenset()),
                _Side("perturbed", row["perturbed_prompt"], perturbed_scene, graph.broken),
            ]
        pairs.append(_Pair(row, graph, kind, choose_sampler(generator, config.seed, row["index"]), sides))
    for attempt in range(best_of.max_tries):
        pending = [(pair, side) for pair in pairs if pair is not None for side in pair.sides if not side.done]
        if not pending:
            break
        requests = [
            ImageRequest(
                side.prompt, side.scene, try_seed(pair.row["render_seed"], attempt), config.resolution, pair.sampler
            )
            for pair, side in pending
        ]
        images: list[Image.Image] = []
        for chunk in range(0, len(requests), generator.batch_size):
            images += generator.generate(requests[chunk : chunk + generator.batch_size])
        assert len(images) == len(pending), f"{generator.name} returned {len(images)} of {len(pending)} images"
        for (pair, side), image in zip(pending, images, strict=True):
            side.take(image.convert("RGB"), pair.graph)
    return [_finish(config, best_of, row, pair, out_dir) for row, pair in zip(rows, pairs, strict=True)]


def _finish(config: BuildConfig, best_of: BestOf, row: dict, pair: _Pair | None, out_dir: Path) -> dict:
    """Write a kept pair's images; its record entry."""
    if pair is None:
        kind = pair_kind(config.seed, row["index"], best_of.ranked_fraction)
        return {"index": row["index"], "kind": kind, "sampler": None, "status": "prompt_too_long", "sides": {}}
    sides = {
        side.name: {"tries": side.tries, "accepted": side.done, "rejections": dict(sorted(side.rejections.items()))}
        for side in pair.sides
    }
    entry = {"index": row["index"], "kind": pair.kind, "sampler": pair.sampler, "sides": sides}
    if not all(side.done for side in pair.sides):
        return {**entry, "status": "no_ordered_samples" if pair.kind == "ranked" else "no_accepted_image"}
    if pair.kind == "ranked":
        (side,) = pair.sides
        preferred, other = side.chosen
        images = (side.samples[preferred][0], side.samples[other][0])
        entry |= {
            "preferred_try": preferred,
            "other_try": other,
            "readings": [side.samples[preferred][1].to_dict(), side.samples[other][1].to_dict()],
        }
    else:
        images = (pair.sides[0].image, pair.sides[1].image)
    for image, column in zip(images, ("perfect_image", "perturbed_image"), strict=True):
        atomic_write_bytes(out_dir / row[column], png_bytes(image), durable=False)
    return {**entry, "status": "kept"}


def _kept_row(row: dict, entry: dict) -> dict:
    """A described row as the dataset keeps it after the drawing (from its record entry alone, so a resumed build
    writes the same row)."""
    sides = entry["sides"]
    kept = {**row, "kind": entry["kind"], "sampler": entry["sampler"] or "", "review_status": "oracle"}
    if entry["kind"] != "ranked":
        return kept | {"perfect_tries": sides["perfect"]["tries"], "perturbed_tries": sides["perturbed"]["tries"]}
    stated = [Relation.from_dict(item) for item in json.loads(row["stated_relations"])]
    preferred, other = ([Truth(t) for t in reading["truths"]] for reading in entry["readings"])
    broken = [i for i in range(len(stated)) if preferred[i] is Truth.HOLDS and other[i] is not Truth.HOLDS]
    tries = sides[RANKED_SIDE]["tries"]
    return kept | {
        "perturbed_prompt": row["prompt"],
        "perturbed_scene": row["perfect_scene"],
        "perturbed_relations": row["stated_relations"],
        "broken_relations": json.dumps(broken),
        "broken_families": ",".join(sorted({stated[i].family for i in broken})),
        "operations": json.dumps([]),
        "num_broken": len(broken),
        "perfect_tries": tries,
        "perturbed_tries": tries,
    }
