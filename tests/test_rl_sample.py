"""`python -m rl_policy sample`: the RL evaluation's ODE sampler from the command line, with and without a LoRA
written in diffusers' format (what `python -m rl_policy fit` exports), and clear errors for bad paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from PIL import Image

from rl_policy.__main__ import main
from rl_policy.policy import FluxPolicy, add_lora, build_tiny_flux_pipeline
from rl_policy.rollout import sample_ode

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a red circle is left of a blue square."


@pytest.fixture(scope="module")
def generator_and_lora(tmp_path_factory):
    """A saved tiny pipeline, and a LoRA for it with non-zero B (so it changes the samples) saved like `fit` does."""
    root = tmp_path_factory.mktemp("sample")
    pipeline = build_tiny_flux_pipeline(max_prompt_tokens=96, seed=0)
    pipeline.save_pretrained(root / "pipeline")
    torch.manual_seed(0)
    add_lora(pipeline.transformer, rank=4)
    with torch.no_grad():
        for name, parameter in pipeline.transformer.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    layers = get_peft_model_state_dict(pipeline.transformer)
    type(pipeline).save_lora_weights(root / "lora", transformer_lora_layers=layers, safe_serialization=True)
    (root / "lora" / "policy.json").write_text(json.dumps({"base_pipeline": str(root / "pipeline")}))
    return root, pipeline


def expected_image(pipeline, seed: int) -> np.ndarray:
    policy = FluxPolicy(pipeline, max_sequence_length=97)
    image = sample_ode(
        policy, [PROMPT], height=32, width=32, num_steps=3, cfg_scale=3.0, generator=torch.Generator().manual_seed(seed)
    )[0]
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def test_sample_with_a_lora_draws_what_the_lora_policy_draws(generator_and_lora, tmp_path):
    root, lora_pipeline = generator_and_lora
    main(
        [
            "sample",
            "--lora",
            str(root / "lora"),
            "--prompt",
            PROMPT,
            "--seed",
            "3",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    drawn = np.asarray(Image.open(tmp_path / "x.png"))
    assert drawn.shape == (32, 32, 3)
    assert np.abs(drawn.astype(int) - expected_image(lora_pipeline, 3).astype(int)).max() <= 1
    main(
        [
            "sample",
            "--pipeline",
            str(root / "pipeline"),
            "--prompt",
            PROMPT,
            "--seed",
            "3",
            "4",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "base.png"),
        ]
    )
    base = np.asarray(Image.open(tmp_path / "base_seed3.png"))
    assert (tmp_path / "base_seed4.png").is_file() and not np.array_equal(base, drawn)  # the LoRA changed the image


def test_sample_bad_paths_are_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--pipeline", str(tmp_path), "--prompt", PROMPT, "--out", str(tmp_path / "x.png")])
    assert "is not a diffusers pipeline dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--lora", str(tmp_path), "--prompt", PROMPT, "--out", str(tmp_path / "x.png")])
    assert "is not a LoRA dir" in capsys.readouterr().err
