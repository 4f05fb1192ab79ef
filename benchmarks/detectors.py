"""A transformers instance-segmentation model from a local dir as a `Detector`, for real images.

GenEval's detector is mmdetection's Mask2Former (Swin-S, COCO); its transformers counterpart is a
`Mask2FormerForUniversalSegmentation` checkpoint such as facebook/mask2former-swin-small-coco-instance, downloaded
beforehand to a local dir (this code never downloads). Each image is read once; every instance the model proposes
(the top `num_queries` (query, class) pairs, as transformers' instance post-processing ranks them) comes back with
its score, its binary mask at the image's size and the box of that mask, so the task applies GenEval's own
thresholds. It reads no colours (`Detection.colour` is None): GenEval classifies colours with CLIP on the masked
crops, which is not built here, so colour clauses cannot pass with this detector (the geneval task counts them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.cache import directory_sha256
from benchmarks.judges import Detection


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
