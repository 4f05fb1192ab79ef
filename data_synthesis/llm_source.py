"""LLM prompt source: an LLM behind an OpenAI-compatible endpoint writes each pair's scene and its perturbation.

The paper's dataset: "an LLM writes long prompts with several objects and explicit spatial relations (to each other
and to the background); each prompt is perturbed so that one or more relations break while the others hold". Two
requests per pair, through the one cached chat client (`shared/chat.py`), their text rendered from versioned
template files (`templates/llm_scene_v1.txt`, `templates/llm_perturb_v1.txt`; the version is in the cache
namespace, and the rendered text is the request, so editing a template asks again):

1. scene: pair `index` fixes what the LLM must use (the objects' colours drawn from the palette, the background,
   how many relations, the number k to break later); the LLM chooses shapes and sizes, states relations between the
   objects and to the background, and writes a long natural prompt;
2. perturbation: k of the stated relations are picked (from a hash of (seed, index)); the LLM replaces exactly those
   by their opposites (`Relation.opposite`), keeps every other one and rewrites the prompt.

Replies are validated against SpatialWorld's schema (colours, shapes, sizes and backgrounds of `scene.py`,
relation kinds, arities and regions of `relations.py`): a reply that is not JSON, names an object that is not in
the scene, uses an unknown relation kind, contradicts itself, or (perturbation) breaks other relations than the
chosen ones, a different number of them, or changes a kept one, is rejected. The chat client asks a rejected
request again (warmer, with the next seed and the attempt number in the cache key, so the cached bad reply is not
returned) up to `ChatConfig.parse_retries` times; then the pair is skipped and counted (`llm_scene_invalid`,
`llm_perturbation_invalid`; `llm_request_failed` for timeouts and HTTP errors). Every reply is cached, so a rerun
sends nothing; pairs are described on at most `ChatConfig.max_concurrency` threads; token usage is reported.

Simplification: an LLM scene has objects and relations but no coordinates. Its scene JSON keeps SpatialWorld's
fields (so the review app and export read it) with x, y, radius and depth null, and a sky/ground background's
horizon at the middle (the schema requires one); nothing can render or verify it exactly, so its images come from
a generator backend and its pairs are `unreviewed`.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from string import Template
from typing import NamedTuple

from data_synthesis.build import BuildConfig, PairDescription, image_paths, relations_json, split_of
from data_synthesis.relations import KINDS, Relation
from data_synthesis.scene import REGIONS, SIZES, Background, Scene, SceneObject
from shared.chat import ChatClient, ChatError, parse_json_object
from shared.io import stable_seed

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE_VERSION = "v1"
MAX_RELATIONS = 8
NOMINAL_HORIZON = 0.5  # LLM scenes have no geometry; the schema needs a horizon for sky_ground
BACKGROUND_MEANING = {"plain": "a plain light backdrop", "sky_ground": "blue sky over green ground, with a horizon"}
SKIP_SCENE, SKIP_PERTURBATION, SKIP_REQUEST = "llm_scene_invalid", "llm_perturbation_invalid", "llm_request_failed"


class ScenePlan(NamedTuple):
    """What pair `index` asks the LLM for (all drawn from (seed, index))."""

    scene_id: str
    colours: tuple[str, ...]  # the objects' identities, each used once
    shapes: tuple[str, ...]  # allowed shapes
    background: str  # plain | sky_ground
    num_relations: int
    num_broken: int
    style_seed: int  # render_seed of the pair


class LLMScene(NamedTuple):
    scene: Scene  # objects and background; coordinates null
    relations: list[Relation]  # stated, all holding
    prompt: str


class LLMPerturbation(NamedTuple):
    relations: list[Relation]  # the stated relations with the broken ones replaced by their opposites
    prompt: str


def load_template(kind: str, version: str = TEMPLATE_VERSION) -> Template:
    """The request template `templates/llm_{kind}_{version}.txt` ($-placeholders)."""
    path = TEMPLATE_DIR / f"llm_{kind}_{version}.txt"
    if not path.is_file():
        known = sorted(p.name for p in TEMPLATE_DIR.glob(f"llm_{kind}_*.txt"))
        raise ValueError(f"LLM template {path} does not exist (known: {', '.join(known) or 'none'})")
    return Template(path.read_text())


# --- validation -----------------------------------------------------------------------------------------------------
def _mentions(prompt: object, colours: Sequence[str], what: str) -> str:
    if not isinstance(prompt, str) or len(prompt.split()) < 8:
        raise ValueError(f"{what} must be a prompt of at least 8 words, got {str(prompt)[:60]!r}")
    missing = [c for c in colours if not re.search(rf"\b{re.escape(c)}\b", prompt, re.IGNORECASE)]
    if missing:
        raise ValueError(f"{what} does not mention the object(s) {missing}")
    return prompt.strip()


def _relations(items: object, scene: Scene) -> list[Relation]:
    """Relations in their JSON form, checked against the relation schema and the scene's objects."""
    if not isinstance(items, list):
        raise ValueError(f"'relations' must be a list, got {type(items).__name__}")
    relations = []
    for item in items:
        relation = Relation.from_dict(item)  # SceneError (a ValueError) for an unknown kind, arity or region
        unknown = [c for c in relation.subjects if c not in scene.by_colour]
        if unknown:
            raise ValueError(f"relation {item} names object(s) {unknown} that are not in the scene")
        if relation.family == "background" and scene.background.kind != "sky_ground":
            raise ValueError(f"relation {item} needs the sky_ground background")
        relations.append(relation)
    return relations


def parse_scene(text: str, plan: ScenePlan) -> LLMScene:
    """The scene in a reply, or ValueError saying what is wrong with it."""
    data = parse_json_object(text)
    objects = data.get("objects")
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        raise ValueError("'objects' must be a list of objects")
    try:
        attributes = [(o["colour"], o["shape"], o["size"]) for o in objects]
    except KeyError as error:
        raise ValueError(f"every object needs colour, shape and size; one lacks {error}") from None
    if not all(isinstance(value, str) for values in attributes for value in values):
        raise ValueError("an object's colour, shape and size must be strings")
    colours = [colour for colour, _, _ in attributes]
    if sorted(colours) != sorted(plan.colours):
        raise ValueError(f"the objects must be exactly the colours {list(plan.colours)}, got {colours}")
    bad_shapes = [shape for _, shape, _ in attributes if shape not in plan.shapes]
    if bad_shapes:
        raise ValueError(f"unknown shape(s) {bad_shapes}; allowed: {list(plan.shapes)}")
    if data.get("background") != plan.background:
        raise ValueError(f"background must be {plan.background!r}, got {data.get('background')!r}")
    horizon = NOMINAL_HORIZON if plan.background == "sky_ground" else None
    scene = Scene(
        tuple(SceneObject(colour, shape, size, None, None, None, None) for colour, shape, size in attributes),
        Background(plan.background, horizon),
    )  # SceneError (a ValueError) for an unknown size
    relations = _relations(data.get("relations"), scene)
    if not plan.num_broken + 1 <= len(relations) <= MAX_RELATIONS:
        needed = f"{plan.num_broken + 1} to {MAX_RELATIONS}"
        raise ValueError(f"{len(relations)} relations stated; need {needed} ({plan.num_relations} asked)")
    if len(set(relations)) < len(relations):
        raise ValueError("a relation is stated twice")
    contradicted = [r.to_dict() for r in relations if r.opposite() in relations]
    if contradicted:
        raise ValueError(f"relations stated together with their opposites: {contradicted}")
    return LLMScene(scene, relations, _mentions(data.get("prompt"), plan.colours, "'prompt'"))


def parse_perturbation(text: str, original: LLMScene, broken: tuple[int, ...]) -> LLMPerturbation:
    """The perturbation in a reply, or ValueError: it must replace exactly the relations `broken` (indices into
    the stated relations) by their opposites and keep every other one."""
    data = parse_json_object(text)
    relations = _relations(data.get("relations"), original.scene)
    if len(relations) != len(original.relations):
        raise ValueError(f"{len(relations)} relations in the reply, the scene states {len(original.relations)}")
    said = data.get("broken")
    if not isinstance(said, list) or sorted(set(map(str, said))) != sorted(map(str, broken)):
        raise ValueError(f"'broken' must list exactly the relations {list(broken)}, got {said!r}")
    not_broken = [i for i in broken if relations[i] != original.relations[i].opposite()]
    if not_broken:
        raise ValueError(f"relation(s) {not_broken} must be replaced by their opposites")
    changed = [i for i, r in enumerate(relations) if i not in broken and r != original.relations[i]]
    if changed:
        raise ValueError(f"relation(s) {changed} must be kept, and were changed")
    prompt = _mentions(data.get("prompt"), [o.colour for o in original.scene.objects], "'prompt'")
    if prompt == original.prompt:
        raise ValueError("the perturbed prompt is the original prompt")
    return LLMPerturbation(relations, prompt)


# --- the source -----------------------------------------------------------------------------------------------------
class LLMPromptSource:
    """`PromptSource` whose scenes and perturbations an LLM writes (module docstring). Owns no connection: the
    caller makes the `ChatClient` (its config holds URL, model, key variable, cache, retries and concurrency) and
    closes it."""

    name = "llm"
    has_geometry = False

    def __init__(self, client: ChatClient, *, template_version: str = TEMPLATE_VERSION):
        self.client = client
        self.template_version = template_version
        self.scene_template = load_template("scene", template_version)
        self.perturb_template = load_template("perturb", template_version)

    def arguments(self) -> dict:
        config = self.client.config
        return {
            "name": self.name,
            "model": config.model,  # the endpoint's URL does not change the pairs; the model does
            "templates": self.template_version,
            "temperature": config.temperature,
            "seed": config.seed,
            "parse_retries": config.parse_retries,
            "max_tokens": config.max_tokens,
        }

    def usage(self) -> dict:
        return self.client.usage.as_dict()

    def _namespace(self, kind: str) -> str:
        return f"data_synthesis.llm_{kind}_{self.template_version}"

    def preflight(self, config: BuildConfig) -> None:
        """One request to the endpoint (`ChatClient.check`), unless the first pair is already cached: a rerun of a
        finished build then needs no endpoint at all."""
        if self.client.is_cached(self.scene_messages(self.plan(config, 0)), namespace=self._namespace("scene")):
            return
        try:
            self.client.check()
        except ChatError as error:
            raise ChatError(f"LLM prompt source: {error}") from None

    def plan(self, config: BuildConfig, index: int) -> ScenePlan:
        rng = random.Random(stable_seed(config.seed, "llm-pair", index))
        num_objects = rng.randint(config.min_objects, config.max_objects)
        colours = tuple(rng.sample(list(config.colours), num_objects))
        background = rng.choice(("plain", "sky_ground"))
        num_broken = rng.randint(1, config.max_broken)
        num_relations = rng.randint(num_broken + 1, min(MAX_RELATIONS, num_broken + 4))  # at least one kept
        return ScenePlan(
            f"{config.seed}-{index}",
            colours,
            tuple(config.shapes),
            background,
            num_relations,
            num_broken,
            rng.randrange(2**31),
        )

    def scene_messages(self, plan: ScenePlan) -> list[dict]:
        kinds = "\n".join(
            f"- {kind} ({arity} object{'s' if arity > 1 else ''}; opposite: {opposite})"
            for kind, (arity, opposite, _) in KINDS.items()
        )
        text = self.scene_template.substitute(
            scene_id=plan.scene_id,
            num_objects=len(plan.colours),
            colours=", ".join(plan.colours),
            shapes=", ".join(plan.shapes),
            sizes=", ".join(SIZES),
            background=plan.background,
            background_meaning=BACKGROUND_MEANING[plan.background],
            num_relations=plan.num_relations,
            kinds=kinds,
            regions=", ".join(REGIONS),
        )
        return [{"role": "user", "content": text}]

    def perturb_messages(self, plan: ScenePlan, scene: LLMScene, broken: tuple[int, ...]) -> list[dict]:
        shown = {
            "background": scene.scene.background.kind,
            "objects": [{"colour": o.colour, "shape": o.shape, "size": o.size} for o in scene.scene.objects],
            "relations": {str(i): r.to_dict() for i, r in enumerate(scene.relations)},
            "prompt": scene.prompt,
        }
        opposites = "\n".join(
            f"- relation {i}: {json.dumps(scene.relations[i].to_dict())} becomes "
            f"{json.dumps(scene.relations[i].opposite().to_dict())}"
            for i in broken
        )
        text = self.perturb_template.substitute(
            scene_id=plan.scene_id,
            scene_json=json.dumps(shown, indent=1),
            broken=json.dumps(list(broken)),
            opposites=opposites,
        )
        return [{"role": "user", "content": text}]

    def describe(self, config: BuildConfig, indices: Sequence[int]) -> list[PairDescription | str]:
        with ThreadPoolExecutor(max_workers=self.client.config.max_concurrency) as pool:
            return list(pool.map(partial(self._describe_one, config), indices))

    def _describe_one(self, config: BuildConfig, index: int) -> PairDescription | str:
        plan = self.plan(config, index)
        asked = self.client.complete(
            self.scene_messages(plan),
            parse=partial(parse_scene, plan=plan),
            namespace=self._namespace("scene"),
        )
        if asked.value is None:
            return _skip(SKIP_SCENE, index, asked.error)
        scene: LLMScene = asked.value
        rng = random.Random(stable_seed(config.seed, "llm-break", index))
        broken = tuple(sorted(rng.sample(range(len(scene.relations)), plan.num_broken)))
        asked = self.client.complete(
            self.perturb_messages(plan, scene, broken),
            parse=partial(parse_perturbation, original=scene, broken=broken),
            namespace=self._namespace("perturb"),
        )
        if asked.value is None:
            return _skip(SKIP_PERTURBATION, index, asked.error)
        perturbation: LLMPerturbation = asked.value
        perfect_image, perturbed_image = image_paths(index)
        scene_json = scene.scene.to_json()  # the perturbed scene has the same objects: only relations differ
        row = {
            "pair_id": f"llm-{config.seed}-{index:07d}",
            "index": index,
            "split": split_of(scene.prompt, config.split_fractions),
            "prompt": scene.prompt,
            "perturbed_prompt": perturbation.prompt,
            "perfect_image": perfect_image,
            "perturbed_image": perturbed_image,
            "perfect_scene": scene_json,
            "perturbed_scene": scene_json,
            "stated_relations": relations_json(scene.relations),
            "broken_relations": json.dumps(list(broken)),
            "perturbed_relations": relations_json(perturbation.relations),
            "broken_families": ",".join(sorted({scene.relations[i].family for i in broken})),
            "operations": json.dumps(["llm_rewrite"] * len(broken)),
            "num_broken": len(broken),
            "num_relations": len(scene.relations),
            "num_objects": len(scene.scene.objects),
            "seed": stable_seed(config.seed, "pair", index),
            "render_seed": plan.style_seed,
        }
        return PairDescription(row, None)


def _skip(reason: str, index: int, error: str | None) -> str:
    """The skip reason to count: a failed request (timeout, HTTP error, a body that is not a chat completion) is
    counted apart from a reply that was rejected."""
    log.info("pair %d skipped: %s", index, error)
    if error is not None and error.startswith(("request failed", "malformed reply")):
        return SKIP_REQUEST
    return reason
