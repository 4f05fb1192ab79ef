"""SpatialWorld: procedurally generated spatial preference pairs with an exact scene graph.

`Scene`/`SceneObject` describe a scene, `Relation` a stated relation (evaluated with `evaluate` on a scene's
`SceneLayout` or on what `detect` reads from any image), `sample_scene` draws a scene and the relations to state,
`perturb` breaks exactly k of them, `render` draws a scene, `describe` writes its prompt,
`build_spatialworld_tokenizer` tokenizes it (the embedded default's word-level tokenizer) and `build` writes a
dataset dir (see docs/DESIGN.md for the format)."""

from data_synthesis.build import BuildConfig, BuildError, ImageGenerator, PromptSource, WeightedGenerator, build
from data_synthesis.detect import PixelLayout, detect, read_relations
from data_synthesis.oracle import OracleVerdict, SpatialWorldOracle, oracle_metadata, to_pil
from data_synthesis.perturb import Perturbation, perturb
from data_synthesis.prompts import BACKGROUND_WORDS, NUMBER_WORDS, SHAPE_WORDS, SIZE_WORDS, TEMPLATES, describe
from data_synthesis.relations import FAMILIES, KINDS, Relation, SceneLayout, Truth, evaluate, relation_margin
from data_synthesis.render import render
from data_synthesis.sampler import WorldConfig, sample_scene
from data_synthesis.scene import COLOURS, REGIONS, SHAPES, SIZES, Background, Scene, SceneError, SceneObject
from data_synthesis.tokenizer import (
    IMAGE_TOKEN,
    PAD_TOKEN,
    REWARD_TOKEN,
    SPECIAL_TOKENS,
    UNKNOWN_TOKEN,
    VIDEO_TOKEN,
    VISION_END_TOKEN,
    VISION_START_TOKEN,
    build_spatialworld_tokenizer,
)
from data_synthesis.verify import DatasetError, load_pairs, verify

__all__ = [
    "IMAGE_TOKEN",
    "PAD_TOKEN",
    "REWARD_TOKEN",
    "SPECIAL_TOKENS",
    "UNKNOWN_TOKEN",
    "VIDEO_TOKEN",
    "VISION_END_TOKEN",
    "VISION_START_TOKEN",
    "build_spatialworld_tokenizer",
    "ImageGenerator",
    "PromptSource",
    "WeightedGenerator",
    "BACKGROUND_WORDS",
    "NUMBER_WORDS",
    "SHAPE_WORDS",
    "SIZE_WORDS",
    "TEMPLATES",
    "COLOURS",
    "FAMILIES",
    "KINDS",
    "REGIONS",
    "SHAPES",
    "SIZES",
    "Background",
    "BuildConfig",
    "BuildError",
    "DatasetError",
    "OracleVerdict",
    "Perturbation",
    "PixelLayout",
    "Relation",
    "Scene",
    "SceneError",
    "SceneLayout",
    "SceneObject",
    "SpatialWorldOracle",
    "Truth",
    "WorldConfig",
    "build",
    "describe",
    "detect",
    "evaluate",
    "load_pairs",
    "oracle_metadata",
    "perturb",
    "read_relations",
    "relation_margin",
    "render",
    "sample_scene",
    "to_pil",
    "verify",
]
