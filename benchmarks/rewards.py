"""The GenEval rules as an RL reward: Flow-GRPO's GenEval reward, the paper's Flow-GRPO* baseline.

`GenEvalReward` follows rl_policy's keyword-only `Reward` protocol (rl_policy imports no implementation; a config
names this class by `class_path`). Each image is scored against its prompt's metadata with the rules of the
`geneval` task (`benchmarks.geneval`: kept detections, include clauses with count, colour and position, exclude
clauses). The reward is the fraction of the prompt's clauses the image passes (partial credit, a denser signal for
RL), or with `strict=True` GenEval's own 0/1 correctness.

Metadata per prompt: GenEval's (a dict with `include`), or a SpatialWorld prompt's oracle metadata (`relations` and
`colours`, what rl_policy's `PromptDataModule` serves for a dataset dir), turned into GenEval clauses by
`clauses_from_spatialworld`: one include clause per object (class and colour = its colour, which is how the
SpatialWorld detector reads classes) and one position clause per stated left/right/above/below relation. Relations
GenEval has no rule for (depth, distance, containment, between, regions) are not rewarded: that is the baseline's
blind spot, and why the paper compares against it.

Detector: the SpatialWorld pixel detector by default; for real images a local Mask2Former dir (`detector_dir`) with
GenEval's CLIP colour reading (`colour_model_dir`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.geneval import clause_results, keep_detections
from benchmarks.spatialworld import GENEVAL_RELATIONS


def clauses_from_spatialworld(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """GenEval metadata for a SpatialWorld prompt's oracle metadata (module docstring)."""
    try:
        colours = list(metadata["colours"])
        relations = list(metadata["relations"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"SpatialWorld metadata must hold 'relations' and 'colours': {error}") from None
    include: list[dict[str, Any]] = [{"class": c, "count": 1, "color": c} for c in colours]
    index = {colour: position for position, colour in enumerate(colours)}
    for relation in relations:
        kind, subjects = relation["kind"], relation["subjects"]
        if kind in GENEVAL_RELATIONS and len(subjects) == 2 and all(s in index for s in subjects):
            subject, target = subjects
            position = [GENEVAL_RELATIONS[kind], index[target]]
            include.append({"class": subject, "count": 1, "color": subject, "position": position})
    tag = "position" if len(include) > len(colours) else "color_attr"
    return {"tag": tag, "include": include}


class GenEvalReward:
    """Reward [N] in [0, 1]: the GenEval clauses each image passes (module docstring)."""

    def __init__(
        self, *, strict: bool = False, detector_dir: str | None = None, colour_model_dir: str | None = None
    ) -> None:
        if colour_model_dir is not None and detector_dir is None:
            raise ValueError(
                "GenEvalReward: colour_model_dir names the colours of detector_dir's detections; give both"
            )
        if detector_dir is None:
            from benchmarks.spatialworld import SpatialWorldDetector

            self.detector = SpatialWorldDetector()
        else:
            from benchmarks.detectors import CLIPColourClassifier, ColourReadingDetector, Mask2FormerDetector

            self.detector = Mask2FormerDetector.from_pretrained(detector_dir)
            if colour_model_dir is not None:
                self.detector = ColourReadingDetector(
                    self.detector, CLIPColourClassifier.from_pretrained(colour_model_dir)
                )
        self.strict = strict

    def score(self, image: Any, metadata: Mapping[str, Any]) -> float:
        """One image against one prompt's metadata (GenEval's or SpatialWorld's)."""
        from data_synthesis.oracle import to_pil

        if not isinstance(metadata, Mapping):
            raise ValueError(f"GenEvalReward needs a metadata dict per prompt, got {type(metadata).__name__}")
        if "include" not in metadata:
            metadata = clauses_from_spatialworld(metadata)
        classes = sorted({clause["class"] for key in ("include", "exclude") for clause in metadata.get(key, [])})
        detections = keep_detections(self.detector.detect(to_pil(image), classes), metadata.get("tag", ""))
        passed = [ok for ok, _ in clause_results(detections, metadata)]
        if not passed:
            return 0.0
        return float(all(passed)) if self.strict else sum(passed) / len(passed)

    def __call__(
        self, *, prompts: Sequence[str], images: Sequence[Any], metadata: Sequence[Mapping[str, Any]] | None = None
    ):
        import torch

        if metadata is None or len(metadata) != len(images) or len(prompts) != len(images):
            raise ValueError(
                "GenEvalReward needs one metadata entry per image: got "
                f"{len(prompts)} prompts, {len(images)} images, {None if metadata is None else len(metadata)} metadata"
            )
        return torch.tensor([self.score(image, meta) for image, meta in zip(images, metadata, strict=True)])
