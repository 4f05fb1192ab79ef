"""The transformers Mask2Former `Detector` on a tiny random model saved to a local dir: it loads offline, returns
only the asked classes with their scores, full-size masks and the boxes of those masks, names unknown classes in one
clear error, and runs the geneval task through the CLI (colour clauses counted as unread: it reads no colours)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.__main__ import main
from benchmarks.detectors import Mask2FormerDetector

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

    torch.manual_seed(0)
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    labels = {0: "cup", 1: "dog", 2: "cat"}
    config = Mask2FormerConfig(
        backbone_config=backbone,
        hidden_dim=32,
        num_queries=8,
        encoder_layers=1,
        decoder_layers=2,
        dim_feedforward=32,
        encoder_feedforward_dim=32,
        feature_size=32,
        mask_feature_size=32,
        num_attention_heads=2,
        id2label=labels,
        label2id={name: index for index, name in labels.items()},
    )
    directory = tmp_path_factory.mktemp("mask2former")
    Mask2FormerForUniversalSegmentation(config).save_pretrained(directory)
    Mask2FormerImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(directory)
    return directory


def test_detections_are_the_asked_classes_with_masks_and_their_boxes(model_dir):
    detector = Mask2FormerDetector.from_pretrained(model_dir)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    found = detector.detect(image, ["cup", "dog"])
    assert set(found) <= {"cup", "dog"} and sum(map(len, found.values())) > 0
    for detections in found.values():
        for detection in detections:
            assert detection.mask.shape == (60, 80) and detection.mask.any() and 0 < detection.score <= 1
            rows, cols = np.nonzero(detection.mask)
            assert detection.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert detection.colour is None
    assert detector.name.startswith("mask2former:")
    with pytest.raises(ValueError, match=r"has no classes \['zebra'\]; it knows \['cat', 'cup', 'dog'\]"):
        detector.detect(image, ["cup", "zebra"])


def test_geneval_with_the_transformers_detector(model_dir, tmp_path):
    prompts = [
        {"tag": "single_object", "prompt": "a cup", "include": [{"class": "cup", "count": 1}]},
        {"tag": "colors", "prompt": "a red dog", "include": [{"class": "dog", "count": 1, "color": "red"}]},
    ]
    (tmp_path / "evaluation_metadata.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    for index in range(2):
        (tmp_path / "images" / f"{index:05d}").mkdir(parents=True)
        Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "images" / f"{index:05d}" / "0.png")
    argv = ["run", "--task", "geneval", "--data", str(tmp_path), "--images", str(tmp_path / "images")]
    assert main([*argv, "--detector", str(model_dir), "--images-per-prompt", "1", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_images"] == 2 and summary["accuracy_by_tag"]["colors"] == 0.0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["judges"]["detector"][0].startswith("mask2former:")
