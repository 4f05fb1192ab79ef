"""GenEval's colour reading (benchmarks/detectors.py): the masked crop, a tiny CLIP trained here for a few seconds
that then names colours through `CLIPColourClassifier`, and `ColourReadingDetector` colouring only the detections
that can count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.detectors import (
    CROP_BACKGROUND,
    GENEVAL_COLOURS,
    CLIPColourClassifier,
    ColourReadingDetector,
    masked_crop,
)
from benchmarks.judges import Detection

pytestmark = pytest.mark.usefixtures("one_thread")

RGB = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (240, 230, 40),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "purple": (130, 40, 170),
    "pink": (250, 150, 200),
    "brown": (120, 70, 30),
    "black": (10, 10, 10),
}
COLOURS = tuple(c for c in GENEVAL_COLOURS if c in RGB)  # "white" is not in the offline tokenizer's vocabulary


def test_masked_crop_greys_the_background_then_crops_to_the_box():
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[..., 0] = 200  # a red image
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:4] = True
    crop = np.asarray(masked_crop(Image.fromarray(pixels), (1, 0, 5, 3), mask))
    assert crop.shape == (3, 4, 3)
    expected = np.tile(np.array(CROP_BACKGROUND, dtype=np.uint8), (3, 4, 1))
    expected[1:3, 1:3] = (200, 0, 0)
    assert (crop == expected).all()
    assert np.asarray(masked_crop(Image.fromarray(pixels), (0, 0, 2, 2), None)).shape == (2, 2, 3)
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\) for an image of 4 x 6"):
        masked_crop(Image.fromarray(pixels), (0, 0, 2, 2), np.ones((3, 3), dtype=bool))


def noisy(colour: tuple[int, int, int], generator: np.random.Generator, size: int = 32) -> Image.Image:
    values = np.array(colour, dtype=float) + generator.normal(0, 12, (size, size, 3))
    return Image.fromarray(values.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def trained_clip(tmp_path_factory):
    """A tiny CLIP trained contrastively on noisy colour patches and "a photo of a {colour} object", saved to a dir
    with the offline tokenizer and a CLIP image processor: what `from_pretrained` reads."""
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from reward_model import build_spatialworld_processor

    torch.manual_seed(0)
    tokenizer = build_spatialworld_processor().tokenizer
    pad = tokenizer.pad_token_id
    # CLIP pools the text at the first end-of-text token, which real CLIP tokenizers append: so does this one.
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A {tokenizer.pad_token}", special_tokens=[(tokenizer.pad_token, pad)]
    )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
            pad_token_id=pad,
            bos_token_id=pad,
            eos_token_id=pad,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    model = CLIPModel(config)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    texts = tokenizer([f"a photo of a {c} object" for c in COLOURS], padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = np.random.default_rng(0)
    for _ in range(150):
        labels = torch.tensor(generator.permutation(len(COLOURS)))
        images = [noisy(RGB[COLOURS[i]], generator) for i in labels]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        output = model(input_ids=texts["input_ids"], attention_mask=texts["attention_mask"], pixel_values=pixels)
        loss = torch.nn.functional.cross_entropy(output.logits_per_image, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    directory = tmp_path_factory.mktemp("clip")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def object_on(colour: str, background: tuple[int, int, int]) -> tuple[Image.Image, np.ndarray]:
    """A 48 x 64 image: a disc of `colour` on `background`, and the disc's mask."""
    rows, cols = np.mgrid[:48, :64]
    mask = (rows - 24) ** 2 + (cols - 30) ** 2 <= 12**2
    pixels = np.empty((48, 64, 3), dtype=np.uint8)
    pixels[:] = background
    pixels[mask] = RGB[colour]
    return Image.fromarray(pixels), mask


def test_the_trained_tiny_clip_names_the_colour_of_masked_objects(trained_clip):
    classifier = CLIPColourClassifier.from_pretrained(trained_clip)
    classifier = CLIPColourClassifier(
        classifier.model, classifier.tokenizer, classifier.image_processor, classifier.name, COLOURS
    )
    assert classifier.text_classifier("cup").shape == (16, len(COLOURS))
    crops, truth = [], []
    for index, colour in enumerate(COLOURS):
        background = RGB[COLOURS[(index + 4) % len(COLOURS)]]
        image, mask = object_on(colour, background)
        crops.append(masked_crop(image, (14, 8, 47, 41), mask))
        truth.append(colour)
    named = classifier.classify(crops, "cup")
    accuracy = np.mean([a == b for a, b in zip(named, truth, strict=True)])
    assert accuracy >= 8 / 9, list(zip(named, truth, strict=True))
    assert classifier.classify([], "cup") == []


class BoxesOfOneImage:
    """A fixed set of detections (a test double of the segmentation model: the colour reader is under test)."""

    name, template_version = "fixed", "1"

    def __init__(self, found: dict[str, list[Detection]]) -> None:
        self.found = found

    def detect(self, image, classes):
        return {name: list(self.found[name]) for name in classes if name in self.found}


def test_only_detections_that_can_count_are_coloured(trained_clip):
    classifier = CLIPColourClassifier.from_pretrained(trained_clip)
    classifier = CLIPColourClassifier(
        classifier.model, classifier.tokenizer, classifier.image_processor, classifier.name, COLOURS
    )
    image, mask = object_on("blue", RGB["yellow"])
    box = (14.0, 8.0, 47.0, 41.0)
    scores = [0.95, 0.2, 0.9, 0.5]  # 0.2 is below GenEval's 0.3; with max_per_class=2 only 0.95 and 0.9 count
    found = {"cup": [Detection(box, score, mask, None) for score in scores]}
    detector = ColourReadingDetector(BoxesOfOneImage(found), classifier, max_per_class=2)
    assert detector.name == f"fixed+{classifier.name}" and detector.template_version == "1+geneval-colour-2"
    cups = detector.detect(image, ["cup", "dog"])["cup"]
    assert [d.colour for d in cups] == ["blue", None, "blue", None]
    assert [d.score for d in cups] == scores and all(d.mask is mask for d in cups)


def test_colour_prompts_use_genevals_class_names_for_coco_labels(trained_clip):
    """The detector answers in COCO label names ("mouse"); GenEval's colour prompts name the class as GenEval does
    ("a photo of a blue computer mouse"), so the classifier must be asked about "computer mouse"."""
    classifier = CLIPColourClassifier.from_pretrained(trained_clip)
    image, mask = object_on("blue", RGB["yellow"])
    found = {"mouse": [Detection((14.0, 8.0, 47.0, 41.0), 0.9, mask, None)], "cup": []}
    ColourReadingDetector(BoxesOfOneImage(found), classifier).detect(image, ["mouse", "cup"])
    assert set(classifier._text) == {"computer mouse"}
    direct = classifier.classify([masked_crop(image, (14.0, 8.0, 47.0, 41.0), mask)], "computer mouse")
    assert direct == [
        ColourReadingDetector(BoxesOfOneImage(found), classifier).detect(image, ["mouse"])["mouse"][0].colour
    ]
