"""bench/reward_gpu.py, the one-shot GPU check of the 7B reward model: its command line, its clear exit without
CUDA, and the meta -> device materialisation it relies on, checked on CPU with the tiny model against a model built
the ordinary way (same buffers, HF-style weights, LoRA B zero, reward-token row from the embedding matrix); the
model FLOPs it reports (bench/flops.py) against PyTorch's FLOP counter on the tiny model and against hand values at
full size; its timed loops (training, scoring, SpatialScorer with a token budget, compiled blocks) dry-run on CPU.
The run itself needs a GPU (marked `gpu`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from reward_model.loss import gaussian_bt_loss

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "reward_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("reward_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_and_argument_checks(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--score-batch" in capsys.readouterr().out
    args = bench.parse_args([])
    assert (args.size, args.lora_rank, args.pairs, args.image_pixels, args.score_batch) == ("7b", 64, 2, 200_704, 32)
    assert args.gradient_checkpointing is True
    with pytest.raises(SystemExit):
        bench.parse_args(["--pairs", "0"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when there is no CUDA")
def test_exits_with_a_clear_message_without_cuda(bench):
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.main(["--size", "tiny"])


@pytest.mark.usefixtures("one_thread")
def test_materialize_initialises_a_meta_model_like_its_builder(bench, tmp_path):
    args = bench.parse_args(
        ["--size", "tiny", "--lora-rank", "4", "--image-pixels", "12544", "--prompt-words", "8"]
        + ["--train-steps", "1", "--warmup-steps", "0", "--score-batch", "2", "--score-batches", "1"]
    )
    network = bench.build_on_meta(args)
    assert {parameter.device.type for parameter in network.parameters()} == {"meta"}
    bench.materialize(network, torch.device("cpu"))

    reference = bench.build_spatialscore(
        bench.tiny_backbone_config(text_hidden_size=64, text_layers=2, text_intermediate_size=128),
        lora_rank=4,
        dtype="bfloat16",
    )
    buffers = dict(network.named_buffers())
    assert buffers.keys() == dict(reference.named_buffers()).keys()
    frequencies = [(name, buffer) for name, buffer in reference.named_buffers() if "inv_freq" in name]
    assert len(frequencies) == 4  # text and vision rotary, each inv_freq and original_inv_freq
    for name, buffer in frequencies:  # recomputed, not left as uninitialised memory
        torch.testing.assert_close(buffers[name], buffer, rtol=0, atol=0, msg=name)
    parameters = dict(network.named_parameters())
    assert parameters.keys() == dict(reference.named_parameters()).keys()
    for name, parameter in parameters.items():
        assert parameter.device.type == "cpu" and torch.isfinite(parameter).all(), name
        if "lora_B" in name:
            assert not parameter.any(), name
        elif "norm" in name and name.endswith("weight"):
            assert (parameter == 1).all(), name
    base = network.backbone.get_base_model()
    embeddings = base.language_model.embed_tokens.token_adapter  # peft's TrainableTokensLayer
    weight = embeddings.get_base_layer().weight
    assert 0.015 < weight.float().std() < 0.025  # Hugging Face's normal(0, 0.02)
    reward_row = weight[network.reward_token_id]  # [H]
    torch.testing.assert_close(
        embeddings.trainable_tokens_delta["default"][0], reward_row, rtol=0, atol=0, check_dtype=False
    )
    torch.testing.assert_close(
        embeddings.trainable_tokens_original["default"][0], reward_row, rtol=0, atol=0, check_dtype=False
    )

    network.train()
    inputs = bench.make_inputs(network, 4, args.image_pixels, args.prompt_words, seed=0)
    mean, std = network(**inputs)
    loss = gaussian_bt_loss(*mean.chunk(2)[:1], *std.chunk(2)[:1], *mean.chunk(2)[1:], *std.chunk(2)[1:])
    loss.backward()
    assert torch.isfinite(loss) and network.head.layers[0].weight.grad.abs().sum() > 0
    network.zero_grad(set_to_none=True)

    # the timed loops run on CPU too (the script itself refuses to: its numbers are for a GPU)
    training = bench.time_training(network, args, torch.device("cpu"))
    trainable = sum(parameter.numel() for parameter in network.parameters() if parameter.requires_grad)
    assert training["trainable_parameters"] == trainable and len(training["train_step_seconds_all"]) == 1
    assert training["train_mfu"] > 0 and training["train_step_flop"] > 0
    scoring = bench.time_scoring(network, args, torch.device("cpu"))
    assert scoring["score_images_per_second"] > 0 and scoring["score_mfu"] > 0
    for budget in (None, 400):  # the SpatialScorer path, fixed batches and length buckets
        args.scorer_rows, args.max_batch_tokens = 3, budget
        scorer = bench.time_scorer(network.float(), args, torch.device("cpu"))
        assert scorer["scorer_images_per_second"] > 0 and scorer["scorer_max_batch_tokens"] == budget
    # bench/gpu_check.sh's table of such a report
    report = {"device": "cpu", "pairs_per_step": 2, "gradient_checkpointing": True, "prompt_words": 8}
    report |= training | scoring | scorer
    (tmp_path / "reward-after.json").write_text(json.dumps(report))
    spec = importlib.util.spec_from_file_location("gpu_table", SCRIPT.with_name("gpu_table.py"))
    gpu_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_table)
    rows = gpu_table.table(tmp_path).splitlines()[2:5]
    assert [row.split(" | ")[1] for row in rows] == [
        "SpatialScore 7B training, 2 pairs per step, checkpointing",
        "SpatialScore 7B scoring, batch 2",
        "SpatialScorer, 3 rows of 10-8 words, buckets of <= 400 tokens",
    ]


@pytest.mark.usefixtures("one_thread")
def test_flops_of_the_tiny_model_match_pytorch_s_counter(bench):
    """Every matmul of a LoRA SpatialScore backbone forward (math attention, so that the counter sees its matmuls)
    on one row whose image (224 x 168 px: 16 x 12 patches, 8 x 6 merged) has partial attention windows."""
    from PIL import Image
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    network = bench.build_spatialscore(bench.tiny_backbone_config(), lora_rank=4, lora_dropout=0.0).eval()
    inputs = network.encode(["a red circle left of a blue square"], [Image.new("RGB", (224, 168), "white")])
    assert inputs["image_grid_thw"].tolist() == [[1, 12, 16]]
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        network.backbone(**{k: v for k, v in inputs.items()}, use_cache=False)
    counted = bench.forward_flops(network, inputs)
    assert sum(counted.values()) == counter.get_total_flops()
    assert counted["vision"] == sum(counter.get_flop_counts()["PeftModel.base_model.model.visual"].values())


def test_flops_of_qwen2_5_vl_7b_by_hand(bench):
    """One 448 px image (32 x 32 patches, 256 merged tokens) in a 356-token sequence, no LoRA.
    Language, per token and layer: 2 x (2 x 3584^2 + 2 x 3584 x 512 + 3 x 3584 x 18944) for q, o, k, v and the MLP;
    attention 4 x 356^2 x 3584 per layer; 28 layers.
    Vision: patch embedding 2 x 1024 x 1176 x 1280; per patch and block 2 x (4 x 1280^2 + 3 x 1280 x 3420); 32 blocks;
    attention over all 1024 patches in the 4 full blocks, within 16 windows of 64 patches in the other 28; merger
    2 x 256 x (5120^2 + 5120 x 3584). About 6.0 TFLOP in all (issue 22)."""
    flops = bench.flops
    config = bench.qwen2_5_vl_7b_config()
    language = 28 * (356 * 2 * (2 * 3584**2 + 2 * 3584 * 512 + 3 * 3584 * 18944) + 4 * 356**2 * 3584)
    vision = 2 * 1024 * 1176 * 1280 + 32 * 1024 * 2 * (4 * 1280**2 + 3 * 1280 * 3420)
    vision += 4 * 4 * 1024**2 * 1280 + 28 * 4 * 16 * 64**2 * 1280 + 2 * 256 * (5120**2 + 5120 * 3584)
    counted = flops.qwen2_5_vl_forward_flops(config, [356], [(1, 32, 32)])
    assert counted == {"vision": vision, "language": language}
    assert round(sum(counted.values()) / 1e12, 1) == 6.0
    with_lora = flops.qwen2_5_vl_forward_flops(config, [356], [(1, 32, 32)], lora_rank=64)
    lora = 28 * 356 * 2 * 64 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))
    assert with_lora["language"] - language == lora
    assert flops.mfu(989e12, 2.0) == 0.5


@pytest.mark.gpu
def test_runs_on_a_gpu_with_small_settings(bench, capsys):
    report = bench.main(["--size", "tiny", "--train-steps", "2", "--warmup-steps", "1", "--score-batches", "1"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    assert report["train_step_seconds"] > 0 and report["score_images_per_second"] > 0
    assert report["train_peak_memory_gib"] > 0
