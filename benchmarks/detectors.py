"""A transformers instance-segmentation model from a local dir as a `Detector`, for real images.

GenEval's detector is mmdetection's Mask2Former (Swin-S, COCO); its transformers counterpart is a
`Mask2FormerForUniversalSegmentation` checkpoint such as facebook/mask2former-swin-small-coco-instance, downloaded
beforehand to a local dir (this code never downloads). Each image is read once; every instance the model proposes
(the top `num_queries` (query, class) pairs, as transformers' instance post-processing ranks them) comes back with
its score, its binary mask at the image's size and the box of that mask, so the task applies GenEval's own
thresholds. It reads no colours (`Detection.colour` is None) by itself.

Colours as GenEval reads them: `ColourReadingDetector` wraps a detector and names the colour of each detection that
can count (score >= 0.3, the 16 most confident per class) with `CLIPColourClassifier`, a zero-shot CLIP classifier
(GenEval uses CLIP ViT-L/14 with OpenAI weights, e.g. openai/clip-vit-large-patch14 in transformers' format, from a
local dir) over GenEval's ten colour names. Each detection's image has every pixel outside its mask set to grey
#999999 and is cropped to its box; each colour's text embedding is the normalised mean of the normalised embeddings
of three prompts ("a photo of a {colour} {class}", "a photo of a {colour}-colored {class}", "a photo of a {colour}
object"); the colour is the argmax of the cosine similarity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.geneval import geneval_name
from benchmarks.judges import Detection
from shared.io import directory_sha256


class Mask2FormerDetector:
    """`Detector` over a universal-segmentation model and its image processor; classes are the model's label names
    (`config.id2label`: COCO names for COCO checkpoints)."""

    template_version = "1"

    def __init__(self, model, processor, name: str) -> None:
        self.model, self.processor, self.name = model.eval(), processor, name
        self.labels = {label: int(index) for index, label in model.config.id2label.items()}

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Mask2FormerDetector:
        """Load the model (on CUDA when there is one) and its image processor from a local dir."""
        import torch
        from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"--detector {directory} is not a transformers model dir: config.json missing")
        processor = AutoImageProcessor.from_pretrained(directory)
        model = AutoModelForUniversalSegmentation.from_pretrained(directory)
        model = model.to("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, processor, f"{model.config.model_type}:{directory_sha256(directory)[:16]}")

    def detect(self, image: Image.Image, classes: Sequence[str]) -> dict[str, list[Detection]]:
        """Every proposed instance of the asked classes with score > 0, mask [H, W] and the mask's pixel box."""
        import torch

        unknown = sorted(set(classes) - set(self.labels))
        if unknown:
            raise ValueError(f"detector {self.name} has no classes {unknown}; it knows {sorted(self.labels)}")
        image = image.convert("RGB")
        inputs = self.processor(images=image, return_tensors="pt").to(self.model.device)
        with torch.no_grad():
            outputs = self.model(**inputs)
        result = self.processor.post_process_instance_segmentation(
            outputs, threshold=0.0, target_sizes=[(image.height, image.width)], return_binary_maps=True
        )[0]
        wanted = {self.labels[name]: name for name in classes}
        detections: dict[str, list[Detection]] = {}
        for index, segment in enumerate(result["segments_info"]):
            name = wanted.get(segment["label_id"])
            if name is None:
                continue
            mask = result["segmentation"][index].cpu().numpy().astype(bool)  # [H, W]
            rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
            box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
            detections.setdefault(name, []).append(Detection(box, float(segment["score"]), mask, None))
        return detections


GENEVAL_COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
COLOUR_TEMPLATES = (
    "a photo of a {colour} {name}",
    "a photo of a {colour}-colored {name}",
    "a photo of a {colour} object",
)
CROP_BACKGROUND = (153, 153, 153)  # GenEval's #999


def masked_crop(image: Image.Image, box: Sequence[float], mask: np.ndarray | None) -> Image.Image:
    """The detection as GenEval's colour classifier sees it: pixels outside `mask` ([H, W] bool) set to #999999,
    then cropped to `box` (x0, y0, x1, y1 in pixels)."""
    image = image.convert("RGB")
    if mask is not None:
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask of shape {mask.shape} for an image of {image.height} x {image.width}")
        blank = Image.new("RGB", image.size, CROP_BACKGROUND)
        image = Image.composite(image, blank, Image.fromarray(mask.astype(np.uint8) * 255))
    return image.crop(tuple(round(v) for v in box[:4]))


class CLIPColourClassifier:
    """Zero-shot colour names for object crops with a CLIP model (module docstring)."""

    template_version = "geneval-colour-2"  # 2: GenEval's class names in the prompts (cached colours are redone)

    def __init__(self, model, tokenizer, image_processor, name: str, colours: Sequence[str] = GENEVAL_COLOURS) -> None:
        self.model, self.tokenizer, self.image_processor = model.eval(), tokenizer, image_processor
        self.name, self.colours = name, tuple(colours)
        self._text: dict[str, object] = {}  # class name -> [D, colours] normalised text embeddings

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> CLIPColourClassifier:
        """A transformers CLIP dir (config, weights, tokenizer and preprocessor files), on CUDA when there is one."""
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"--colour-model {directory} is not a transformers CLIP dir: config.json missing")
        model = CLIPModel.from_pretrained(directory).to("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer, processor = AutoTokenizer.from_pretrained(directory), AutoImageProcessor.from_pretrained(directory)
        return cls(model, tokenizer, processor, f"clip:{directory_sha256(directory)[:16]}")

    @staticmethod
    def _features(output):
        return output if not hasattr(output, "pooler_output") else output.pooler_output  # transformers 4 vs 5

    def text_classifier(self, name: str):
        """[D, colours]: per colour, the normalised mean of its normalised template embeddings."""
        import torch

        if name not in self._text:
            prompts = [t.format(colour=c, name=name) for c in self.colours for t in COLOUR_TEMPLATES]
            tokens = self.tokenizer(prompts, padding=True, return_tensors="pt").to(self.model.device)
            with torch.no_grad():
                embeddings = self._features(self.model.get_text_features(**tokens)).float()
            embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
            per_colour = embeddings.view(len(self.colours), len(COLOUR_TEMPLATES), -1).mean(1)
            self._text[name] = torch.nn.functional.normalize(per_colour, dim=-1).T
        return self._text[name]

    def classify(self, crops: Sequence[Image.Image], name: str) -> list[str]:
        """The colour name of each crop of an object of class `name`."""
        import torch

        if not crops:
            return []
        pixels = self.image_processor(images=list(crops), return_tensors="pt")["pixel_values"].to(self.model.device)
        with torch.no_grad():
            features = self._features(self.model.get_image_features(pixel_values=pixels)).float()
        similarity = torch.nn.functional.normalize(features, dim=-1) @ self.text_classifier(name)
        return [self.colours[int(index)] for index in similarity.argmax(1)]


class ColourReadingDetector:
    """A `Detector` whose detections that can count in GenEval (score >= `min_score`, the `max_per_class` most
    confident of each class) carry the colour a `CLIPColourClassifier` reads from their masked crops; the others keep
    `colour=None`."""

    def __init__(
        self, detector, classifier: CLIPColourClassifier, min_score: float = 0.3, max_per_class: int = 16
    ) -> None:
        self.detector, self.classifier = detector, classifier
        self.min_score, self.max_per_class = min_score, max_per_class
        self.name = f"{detector.name}+{classifier.name}"
        self.template_version = f"{getattr(detector, 'template_version', '1')}+{classifier.template_version}"

    def detect(self, image: Image.Image, classes: Sequence[str]) -> dict[str, list[Detection]]:
        found = self.detector.detect(image, classes)
        for name, detections in found.items():
            ranked = sorted(range(len(detections)), key=lambda i: -detections[i].score)
            chosen = [i for i in ranked[: self.max_per_class] if detections[i].score >= self.min_score]
            crops = [masked_crop(image, detections[i].box, detections[i].mask) for i in chosen]
            # the detector's classes are COCO label names; GenEval's colour prompts say "computer mouse", not "mouse"
            colours = self.classifier.classify(crops, geneval_name(name))
            for index, colour in zip(chosen, colours, strict=True):
                detection = detections[index]
                detections[index] = Detection(detection.box, detection.score, detection.mask, colour)
        return found
