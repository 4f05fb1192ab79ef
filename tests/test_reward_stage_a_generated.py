"""Stage A on the generator's own samples (reward_model/stage_a/generated.py): the examples' verdicts are the
oracle's reading of the image, not the prompt's intent; the draw's samples load with their scene graphs and split
by prompt; the training stream mixes them in at the asked share, deterministically; a phase trains on them and
reports the verdict's AUROC per relation kind on the held-out prompts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from data_synthesis import COLOURS, Background, Relation, Scene, SceneObject, render
from data_synthesis.detect import PixelLayout, detect
from reward_model.__main__ import main
from reward_model.stage_a.data import VerificationCollator, VerificationDataModule, VerificationStream
from reward_model.stage_a.examples import (
    generated_verification_example,
    holds,
    layout_colour_targets,
    stated_margin,
)
from reward_model.stage_a.generated import VAL_EVERY, load_generated_samples, sample_example
from reward_model.stage_a.model import read_grounding_heads

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "reward" / "tiny_stage_a_generated.yaml"


def two_squares(red: tuple[float, float], blue: tuple[float, float]) -> Scene:
    """Medium squares (radius 0.12) on a plain background at the given centres, blue drawn in front."""
    objects = [
        SceneObject(colour, "square", "medium", x=x, y=y, radius=0.12, depth=depth)
        for depth, (colour, (x, y)) in enumerate([("red", red), ("blue", blue)])
    ]
    return Scene(objects=tuple(objects), background=Background("plain"))


# red up and to the left of blue: "red left of blue" holds, the prompt's "red below blue" does not.
SCENE = two_squares((0.25, 0.3), (0.75, 0.7))
STATED = (Relation("left_of", ("red", "blue")), Relation("below", ("red", "blue")))


def small(scene: Scene) -> Image.Image:
    """The scene at the tiny generator's 32 px (rendered at the renderer's least 64 px, then every other pixel)."""
    return render(scene, 64, jitter=0, seed=0).resize((32, 32), Image.Resampling.NEAREST)


IMAGE = small(SCENE)
MIRRORED = small(two_squares((0.75, 0.7), (0.25, 0.3)))  # the same prompt drawn wrong: red right of and below blue


def test_the_verdicts_are_the_oracles_reading_of_the_image_not_the_prompts_intent():
    layout = detect(IMAGE, ["red", "blue"])
    stated_as_read = {Relation("left_of", ("red", "blue")), Relation("above", ("red", "blue"))}
    seen_false = False
    for seed in range(20):
        example = generated_verification_example(seed, IMAGE, SCENE, STATED)
        assert example is not None and example.image.size == (128, 128)
        assert isinstance(example.layout, PixelLayout)
        assert len(example.relations) == 2  # both read clearly: none dropped
        for relation, truth in zip(example.relations, example.sentence_truth, strict=True):
            assert holds(relation, layout) is truth
            assert (relation if truth else relation.opposite()) in stated_as_read
            assert bool(stated_margin(relation, example.scene, example.layout) > 0) is truth
        seen_false |= not example.matches
        # the objects stand at the detected boxes' centres
        for obj in example.scene.objects:
            x0, y0, x1, y1 = layout.box(obj.colour)
            assert (obj.box[0] + obj.box[2]) / 2 == pytest.approx((x0 + x1) / 2)
            assert (obj.box[1] + obj.box[3]) / 2 == pytest.approx((y0 + y1) / 2)
    assert seen_false  # some examples state an opposite of what was read
    matching = generated_verification_example(0, IMAGE, SCENE, STATED, match_fraction=1.0)
    assert set(matching.relations) == stated_as_read and all(matching.sentence_truth)


def test_an_image_that_lost_an_object_or_reads_nothing_clearly_gives_no_example():
    green = SceneObject("green", "square", "medium", x=0.75, y=0.7, radius=0.12, depth=1)
    lost = small(Scene((SCENE["red"], green), Background("plain")))  # green where the blue square should be
    assert generated_verification_example(0, lost, SCENE, STATED) is None
    level = small(two_squares((0.25, 0.5), (0.75, 0.5)))  # neither above nor below
    assert generated_verification_example(0, level, SCENE, (Relation("above", ("red", "blue")),)) is None


def test_with_allow_missing_a_lost_object_makes_its_sentences_and_the_match_false(processor):
    green = SceneObject("green", "square", "medium", x=0.75, y=0.7, radius=0.12, depth=1)
    lost = small(Scene((SCENE["red"], green), Background("plain")))  # blue was never drawn
    stated = (*STATED, Relation("in_region", ("red",), region="left half"))
    for seed in range(10):
        example = generated_verification_example(seed, lost, SCENE, stated, allow_missing=True)
        assert not example.all_found and not example.matches
        for relation, truth in zip(example.relations, example.sentence_truth, strict=True):
            if "blue" in relation.subjects:
                assert relation in STATED and truth is False  # stated as the prompt states it; it cannot hold
                assert math.isnan(stated_margin(relation, example.scene, example.layout))
            else:
                assert truth is holds(relation, example.layout)
    batch = VerificationCollator(processor, stated_all_kinds=True)([example])
    grid = batch.inputs["image_grid_thw"][0, 1:] // 2
    targets = layout_colour_targets(example.layout, int(grid[0]), int(grid[1]))
    assert torch.equal(batch.token_colours, targets)
    palette = list(COLOURS)
    per_colour = targets.reshape(len(targets), 4, len(palette)).amax((0, 1))
    assert per_colour[palette.index("red")] == 1 and per_colour[palette.index("blue")] == 0
    assert batch.matches.tolist() == [0.0]


def write_draw(root: Path, groups: list[int]) -> tuple[Path, Path]:
    """A source dataset of one prompt (SCENE, STATED) and a draw dir of its samples: per group a found sample (IMAGE,
    or MIRRORED where group // 5 is odd) and one marked not found (the oracle lost an object)."""
    source = root / "source"
    source.mkdir()
    relations = json.dumps([relation.to_dict() for relation in STATED])
    pd.DataFrame({"pair_id": ["p0"], "perfect_scene": [SCENE.to_json()], "stated_relations": [relations]}).to_parquet(
        source / "pairs.parquet"
    )
    draw = root / "draw"
    (draw / "images").mkdir(parents=True)
    rows = []
    for group in groups:
        for sample, found in enumerate((True, False)):
            name = f"images/g{group:04d}_s{sample:02d}.png"
            (MIRRORED if group // 5 % 2 else IMAGE).save(draw / name)
            rows.append({"group": group, "pair_id": "p0", "image": name, "all_found": found})
    pd.DataFrame(rows).to_parquet(draw / "samples.parquet")
    return draw, source


def test_a_draw_loads_its_found_samples_split_by_prompt(tmp_path):
    draw, source = write_draw(tmp_path, [0, 1, VAL_EVERY])
    samples = load_generated_samples([draw], source)
    assert [Path(s.image).name for s in samples] == ["g0000_s00.png", "g0001_s00.png", f"g{VAL_EVERY:04d}_s00.png"]
    assert [s.held_out for s in samples] == [True, False, True]
    assert samples[0].scene == SCENE and samples[0].relations == STATED

    (draw / "images" / "g0001_s00.png").unlink()
    with pytest.raises(FileNotFoundError, match="g0001_s00.png is missing"):
        load_generated_samples([draw], source)
    with pytest.raises(FileNotFoundError, match="has no samples.parquet"):
        load_generated_samples([tmp_path], source)
    pd.DataFrame({"pair_id": ["other"], "perfect_scene": [SCENE.to_json()], "stated_relations": ["[]"]}).to_parquet(
        source / "pairs.parquet"
    )
    with pytest.raises(ValueError, match=r"prompts \['p0'\] are not in"):
        load_generated_samples([draw], source)


def test_a_corrupt_image_is_skipped_for_the_next_draw(tmp_path):
    draw, source = write_draw(tmp_path, [1, 2])
    samples = load_generated_samples([draw], source)
    Path(samples[0].image).write_bytes(b"not a png")
    examples = [sample_example(samples, seed) for seed in range(10)]
    assert all(example is not None for example in examples)
    assert sample_example(samples[:1], 0) is None  # only the corrupt one: every try fails


def test_the_stream_mixes_in_generated_examples_at_the_asked_share_deterministically(tmp_path):
    draw, source = write_draw(tmp_path, [1, 2])
    pool = load_generated_samples([draw], source)

    def prompts_and_sources(fraction: float, pool=pool) -> list[tuple[str, bool]]:
        stream = VerificationStream(seed=0, batch_size=4, min_objects=2, generated=pool, generated_fraction=fraction)
        taken = [example for _, example in zip(range(40), stream, strict=False)]
        return [(example.prompt, example.layout is not None) for example in taken]

    renders = prompts_and_sources(0.0, ())
    assert prompts_and_sources(0.0) == renders  # a pool at share 0 changes nothing
    assert all(generated for _, generated in prompts_and_sources(1.0))
    half = prompts_and_sources(0.5)
    assert half == prompts_and_sources(0.5)
    assert 10 <= sum(generated for _, generated in half) <= 30
    # the renders keep their places in the stream: the examples not replaced are the render stream's own
    assert [item for item in half if not item[1]] == [r for r, h in zip(renders, half, strict=True) if not h[1]]


def test_the_data_module_checks_its_generated_options():
    with pytest.raises(ValueError, match="go together"):
        VerificationDataModule(generated_dirs=["d"], generated_fraction=0.0, generated_source_dir="s")
    with pytest.raises(ValueError, match="go together"):
        VerificationDataModule(generated_fraction=0.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        VerificationDataModule(generated_dirs=["d"], generated_fraction=1.5, generated_source_dir="s")


@pytest.mark.usefixtures("one_thread")
def test_the_shipped_phase_trains_on_a_draw_and_reports_the_verdict_by_kind(tmp_path):
    draw, source = write_draw(tmp_path, list(range(0, 3 * VAL_EVERY, 5)))
    root = tmp_path / "run"
    main(
        [
            "pretrain",
            "--config",
            str(CONFIG),
            f"--data.generated_dirs=[{draw}]",
            f"--data.generated_source_dir={source}",
            "--data.dataset_dir=null",
            "--data.batch_size=4",
            "--data.val_size=2",
            "--data.generated_val_size=16",
            "--data.num_workers=0",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            f"--trainer.default_root_dir={root}",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    history = json.loads((root / "backbone" / "pretrain_metrics.json").read_text())["history"]
    (record,) = history
    assert {"generated/auroc_verdict", "generated/auroc_verdict_left_of", "val/auroc_verdict"} <= set(record)
    assert 0.0 <= record["generated/auroc_verdict_left_of"] <= 1.0
    assert "generated/auroc_verdict_behind" not in record  # no such sentence in the held-out set
    shipped = read_grounding_heads(CONFIG.parents[2] / "checkpoints" / "reward_tiny_stage_a")
    trained = read_grounding_heads(root / "backbone")
    assert any(not torch.equal(shipped[head][key], trained[head][key]) for head in shipped for key in shipped[head])
    assert all(math.isfinite(value) for value in record.values() if isinstance(value, float))
