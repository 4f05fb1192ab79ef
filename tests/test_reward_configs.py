"""Every shipped reward YAML parses with the LightningCLI parser (nothing instantiated, no weights), the 7B FSDP
strategy resolves as configured, and the full-size SpatialScore built on the `meta` device (no memory) has the
published Qwen2.5-VL-7B-Instruct size with the LoRA targets and trainable count that its rank implies.

Counts (Qwen2.5-VL-7B-Instruct, published config.json): 8,292,166,656 parameters with the LM head; the LM head is
152,064 x 3,584 = 544,997,376, so the reward model's backbone (`Qwen2_5_VLModel`, no LM head) has 7,747,169,280.
LoRA rank r on a Linear d_in -> d_out adds r (d_in + d_out). Per decoder layer (hidden 3584, 4 key-value heads of
128 = 512, MLP 18944): q and o 2 x (3584 + 3584), k and v 2 x (3584 + 512), gate and up 2 x (3584 + 18944), down
(18944 + 3584): 90,112 r; at r = 64 over 28 layers 161,480,704. Plus the reward token's row (3,584) and the head
(3584 x 256 + 256 + 256 x 2 + 2 = 918,274): 162,402,562 trainable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock

from reward_model.__main__ import RewardCLI
from reward_model.data import PairwiseDataModule
from reward_model.model import SPATIALWORLD_TOKEN_IDS, build_spatialscore, qwen2_5_vl_7b_config
from reward_model.module import RewardModule

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "reward"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
PUBLISHED_TOTAL = 8_292_166_656  # Qwen2.5-VL-7B-Instruct, LM head included
LM_HEAD = 152_064 * 3_584
LORA_PER_LAYER_PER_RANK = 2 * (3584 + 3584) + 2 * (3584 + 512) + 2 * (3584 + 18944) + (18944 + 3584)
HEAD = 3584 * 256 + 256 + 256 * 2 + 2


class ParseOnlyCLI(RewardCLI):
    """The reward CLI's parser and config checks, without building the trainer, the model or the data."""

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass


def parse(*paths: Path):
    arguments = [part for path in paths for part in ("--config", str(path))]
    return ParseOnlyCLI(RewardModule, PairwiseDataModule, args=arguments, run=False).config


def launch_configs(path: Path) -> list[Path]:
    """The configs a YAML's launch command (its first line) names, in order: itself last (an overlay such as
    tiny_ranked.yaml comes after the config it changes)."""
    names = [part.split()[0] for part in path.read_text().splitlines()[0].split("--config ")[1:]]
    assert names and Path(names[-1]).name == path.name, f"{path.name}: its launch command must end with it"
    return [CONFIG_DIR.parents[1] / name for name in names]


def test_every_reward_yaml_parses_and_starts_with_its_launch_command():
    assert {"tiny.yaml", "qwen2_5_vl_7b.yaml", "qwen2_5_vl_7b_qlora.yaml"} <= {path.name for path in CONFIGS}
    for path in CONFIGS:
        assert path.read_text().startswith("# "), f"{path.name} must start with its launch command"
        # stage A's phases belong to `pretrain` (run by tests/test_reward_pretrain.py); every other YAML is a fit config
        if not path.read_text().startswith("# python -m reward_model pretrain "):
            config = parse(*launch_configs(path))
            assert config.model.network.class_path, path.name


def test_the_ranked_overlay_changes_only_the_data_the_steps_and_the_stage_a():
    """`make train-reward`'s default critic: tiny.yaml's stage B from the stage A that has seen the generator's
    samples, plus the ranked pairs read twice, 2,400 steps."""
    base, ranked = parse(CONFIG_DIR / "tiny.yaml"), parse(*launch_configs(CONFIG_DIR / "tiny_ranked.yaml"))
    assert ranked.trainer.max_steps == 2400 and base.trainer.max_steps == 300
    assert ranked.data.extra_dataset_dirs == ["data/spatialworld-ranked-4800"]
    assert ranked.data.train_repeats == {"ranked": 2}
    network, base_network = ranked.model.network.init_args, base.model.network.init_args
    assert network.backbone_dir == "checkpoints/reward_tiny_stage_a_generated"
    assert base_network.backbone_dir == "checkpoints/reward_tiny_stage_a"
    assert {k: v for k, v in network.items() if k != "backbone_dir"} == {
        k: v for k, v in base_network.items() if k != "backbone_dir"
    }
    assert ranked.model.optimizer == base.model.optimizer and ranked.model.loss == base.model.loss
    assert ranked.data.dataset_dir == base.data.dataset_dir
    assert (CONFIG_DIR.parents[1] / network.backbone_dir / "model.safetensors").is_file()


def test_7b_configs_say_what_the_recipe_says():
    fsdp, qlora = parse(CONFIG_DIR / "qwen2_5_vl_7b.yaml"), parse(CONFIG_DIR / "qwen2_5_vl_7b_qlora.yaml")
    for config, devices in ((fsdp, 8), (qlora, 1)):
        network = config.model.network
        assert network.class_path == "reward_model.model.build_spatialscore"
        assert network.init_args.lora_rank == 64 and network.init_args.max_pixels == 200_704
        assert network.init_args.gradient_checkpointing is True
        assert config.model.optimizer.init_args.lr == 2e-6
        assert config.trainer.precision == "bf16-mixed" and config.trainer.devices == devices
        global_batch = devices * config.data.batch_size * config.trainer.accumulate_grad_batches
        assert global_batch == 32, global_batch
    assert qlora.model.network.init_args.quantization == "4bit"
    assert fsdp.model.network.init_args.quantization is None
    assert fsdp.model.network.init_args.dtype == "float32"  # FSDP flat parameters: one dtype with the fp32 head
    assert fsdp.trainer.gradient_clip_val is None  # Lightning's FSDPPrecision raises on clipping by norm

    strategy = fsdp.trainer.strategy
    assert strategy.class_path == "lightning.pytorch.strategies.FSDPStrategy"
    built = FSDPStrategy(**vars(strategy.init_args), **strategy.dict_kwargs)  # a plain object: no process group yet
    assert built.kwargs["use_orig_params"] is True
    assert built.sharding_strategy.name == "FULL_SHARD"
    assert built.kwargs["auto_wrap_policy"]._module_classes == {Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock}


@pytest.fixture(scope="module")
def meta_7b():
    """The 7B SpatialScore of qwen2_5_vl_7b.yaml's network settings, on the meta device (no memory)."""
    settings = vars(parse(CONFIG_DIR / "qwen2_5_vl_7b.yaml").model.network.init_args)
    del settings["backbone"], settings["processor"]
    config = qwen2_5_vl_7b_config(token_ids=SPATIALWORLD_TOKEN_IDS)  # sizes as published; offline processor ids
    with torch.device("meta"):
        network = build_spatialscore(config, **settings)
    return network, settings


def test_full_size_backbone_matches_the_published_parameter_count():
    with torch.device("meta"):
        with_lm_head = Qwen2_5_VLForConditionalGeneration._from_config(qwen2_5_vl_7b_config())
    assert sum(parameter.numel() for parameter in with_lm_head.parameters()) == PUBLISHED_TOTAL


def test_meta_7b_spatialscore_has_every_lora_target_and_the_rank_implied_trainable_count(meta_7b):
    network, settings = meta_7b
    assert {parameter.device.type for parameter in network.parameters()} == {"meta"}
    base = network.backbone.get_base_model()
    backbone = {
        name: parameter
        for name, parameter in base.named_parameters()
        if "lora_" not in name and "trainable_tokens_delta" not in name
    }
    assert sum(parameter.numel() for parameter in backbone.values()) == PUBLISHED_TOTAL - LM_HEAD == 7_747_169_280

    rank, layers = settings["lora_rank"], 28
    for index in range(layers):
        for module in settings["lora_target_modules"]:
            parent = "self_attn" if module.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            layer = base.get_submodule(f"language_model.layers.{index}.{parent}.{module}")
            assert layer.lora_A["default"].weight.shape[0] == rank, (index, module)
    assert not any("lora_" in name for name, _ in base.visual.named_parameters())  # the vision tower is frozen

    trainable = {name: p.numel() for name, p in network.named_parameters() if p.requires_grad}
    lora = sum(count for name, count in trainable.items() if "lora_" in name)
    assert lora == rank * LORA_PER_LAYER_PER_RANK * layers == 161_480_704
    assert sum(count for name, count in trainable.items() if "trainable_tokens_delta" in name) == 3584
    assert sum(count for name, count in trainable.items() if name.startswith("head.")) == HEAD
    assert sum(trainable.values()) == 162_402_562
    assert network.processor.image_processor.size["longest_edge"] == 200_704
