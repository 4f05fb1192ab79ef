"""The prepared GPU script of full-size Flow-GRPO (bench/rl_gpu.py): arguments, the no-CUDA message, its whole
path (meta build, bf16 materialisation, SDE sampling of a group, training pass with the KL) on the tiny transformer
on CPU with each throughput switch, and the model FLOPs it reports (bench/flops.py) against PyTorch's FLOP counter
on the tiny transformer and against hand values for FLUX.1-dev. The full-size run is `@pytest.mark.gpu`."""

from __future__ import annotations

import importlib.util
import json
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
@pytest.mark.parametrize(
    "objective, pairs, switches",
    [
        ("grpo", 2, []),
        ("nft", 6, []),
        ("grpo", 2, ["--beta", "0", "--sample-batch", "2", "--sampling-attention", "math"]),
        ("grpo", 2, ["--training-attention", "flash", "--sampling-attention", "flash", "--train-batch", "1"]),
    ],
)
def test_tiny_path_on_cpu(bench, objective, pairs, switches, tmp_path):
    # GRPO: 2 kept samples x 1 SDE step; NFT: 2 kept samples x 3 noised copies
    result = bench.main(
        ["--size", "tiny", "--no-critic", "--device", "cpu", "--resolution", "32", "--group", "2"]
        + ["--keep-per-side", "1", "--steps", "2", "--lora-rank", "4", "--objective", objective, "--nft-draws", "3"]
        + switches
    )
    assert result["trained_pairs"] == pairs and result["lora_parameters"] > 0 and result["objective"] == objective
    assert result["sampling_seconds_per_group"] > 0 and result["training_seconds_kept_samples"] > 0
    adapted = bench.flops.flux_forward_flops(bench.TINY, 4, 512, 4)  # 32 px: 2 x 2 tokens, 512 text tokens
    base = bench.flops.flux_forward_flops(bench.TINY, 4, 512)
    assert result["sampling_flop"] == 2 * 2 * adapted and result["sampling_mfu"] > 0
    per_pair = 3 * adapted if objective == "nft" else 2 * adapted + (base if "--beta" not in switches else 0)
    assert result["training_flop"] == pairs * per_pair
    assert result["end_to_end_seconds"] >= result["sampling_seconds_per_group"]
    # bench/gpu_check.sh's table of this run, beside a run that left only a log
    (tmp_path / "policy-after.json").write_text(json.dumps(result))
    (tmp_path / "policy-compiled.log").write_text("Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory\n")
    table = bench.load_sibling("gpu_table").table(tmp_path).splitlines()
    assert len(table) == 2 + 2 + 1 + 2 and table[-1].startswith("Device: cpu")
    assert table[2].startswith("| policy-after | GRPO sampling, group 2 x 2 steps") and table[3].endswith("% |  |")
    assert table[4] == "| policy-compiled | no result: torch.OutOfMemoryError: CUDA out of memory | | | | |"


@pytest.mark.slow  # inductor compiles the two block classes
@pytest.mark.usefixtures("one_thread")
def test_tiny_path_on_cpu_compiled(bench):
    result = bench.main(
        ["--size", "tiny", "--no-critic", "--device", "cpu", "--resolution", "32", "--group", "2", "--text-tokens"]
        + ["16", "--keep-per-side", "1", "--steps", "2", "--lora-rank", "4", "--compile"]
    )
    assert result["switches"]["compile"] and result["trained_pairs"] == 2


@pytest.mark.usefixtures("one_thread")
def test_flops_of_the_tiny_transformer_match_pytorch_s_counter(bench):
    """Every matmul of a LoRA Flux forward (math attention, so that the counter sees its matmuls): 2 samples of 16
    image and 8 text tokens."""
    from diffusers import FluxTransformer2DModel
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    transformer = FluxTransformer2DModel(**bench.TINY)
    bench.add_lora(transformer, rank=4)
    batch, image, text = 2, 16, 8
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        transformer(
            hidden_states=torch.randn(batch, image, bench.TINY["in_channels"]),
            timestep=torch.rand(batch),
            guidance=torch.full((batch,), 3.5),
            pooled_projections=torch.randn(batch, bench.TINY["pooled_projection_dim"]),
            encoder_hidden_states=torch.randn(batch, text, bench.TINY["joint_attention_dim"]),
            txt_ids=torch.zeros(text, 3),
            img_ids=torch.zeros(image, 3),
            return_dict=False,
        )
    assert counter.get_total_flops() == batch * bench.flops.flux_forward_flops(bench.TINY, image, text, lora_rank=4)


def test_flops_of_flux_dev_by_hand(bench):
    """512 px (1,024 image tokens) with 512 text tokens, L = 1,536, inner = 24 x 128 = 3,072.
    Per token and block 2 x 12 x 3072^2 (double blocks: q, k, v, out + the 4x MLP of its own stream; single blocks:
    q, k, v, the MLP in and the fused output 5 x 3072 -> 3072), 57 blocks; attention 4 x 1536^2 x 3072 per block;
    embeddings in (64 and 4096 -> 3072) and out (3072 -> 64); per sample the time and guidance embeddings
    (256 -> 3072 -> 3072 each), the pooled text (768 -> 3072 -> 3072), the modulations (19 x 2 x 6, 38 x 3 and 2
    times 3072 x 3072). About 21.5 TFLOP (issue 22). LoRA 32 on 19 x 8 + 38 x 3 projections of 3072 -> 3072."""
    flops = bench.flops
    inner, tokens = 3072, 1536
    expected = 57 * tokens * 2 * 12 * inner**2 + 57 * 4 * tokens**2 * inner
    expected += 2 * 1024 * 64 * inner + 2 * 512 * 4096 * inner + 2 * 1024 * inner * 64
    expected += 2 * (2 * 256 * inner + 2 * inner**2) + 2 * 768 * inner + 2 * inner**2
    expected += 2 * inner**2 * (19 * 2 * 6 + 38 * 3 + 2)
    assert flops.flux_forward_flops(bench.FLUX_DEV, 1024, 512) == expected
    assert round(expected / 1e12, 1) == 21.5
    lora = (19 * 4 + 38 * 3) * tokens * 2 * 32 * 2 * inner  # double blocks: 4 per stream, each token in one stream
    assert flops.flux_forward_flops(bench.FLUX_DEV, 1024, 512, lora_rank=32) == expected + lora


@pytest.mark.gpu
def test_full_size_on_gpu(bench):
    result = bench.main([])
    assert result["peak_memory_gib"] < 80
