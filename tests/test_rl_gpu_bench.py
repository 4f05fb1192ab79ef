"""The prepared GPU script of full-size Flow-GRPO (bench/rl_gpu.py): arguments, the no-CUDA message, and its whole
path (meta build, bf16 materialisation, SDE sampling of a group, training pass with the KL) on the tiny transformer
on CPU. The full-size run is `@pytest.mark.gpu`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "rl_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("rl_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments_and_errors(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--group", "4", "--keep-per-side", "3"])
    assert "exceeds half of --group 4" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exit_info:
            bench.main(["--size", "tiny"])
        assert exit_info.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().out


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("objective, pairs", [("grpo", 2), ("nft", 6)])
def test_tiny_path_on_cpu(bench, objective, pairs):
    # GRPO: 2 kept samples x 1 SDE step; NFT: 2 kept samples x 3 noised copies
    result = bench.main(
        ["--size", "tiny", "--no-critic", "--device", "cpu", "--resolution", "32", "--group", "2"]
        + ["--keep-per-side", "1", "--steps", "2", "--lora-rank", "4", "--objective", objective, "--nft-draws", "3"]
    )
    assert result["trained_pairs"] == pairs and result["lora_parameters"] > 0 and result["objective"] == objective
    assert result["sampling_seconds_per_group"] > 0 and result["training_seconds_kept_samples"] > 0


@pytest.mark.gpu
def test_full_size_on_gpu(bench):
    result = bench.main([])
    assert result["peak_memory_gib"] < 80
