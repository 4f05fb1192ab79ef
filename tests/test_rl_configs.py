"""Every shipped RL YAML parses with the RL LightningCLI parser (nothing instantiated: no weights), starts with its
launch command, and the cluster configs say what the paper's recipe says."""

from __future__ import annotations

from pathlib import Path

import yaml

from rl_policy.data import PromptDataModule
from rl_policy.training import GRPOCLI, GRPOTraining

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "rl"


class ParseOnlyCLI(GRPOCLI):
    def instantiate_classes(self) -> None:
        pass


def parse(*paths: Path):
    args = [argument for path in paths for argument in ("--config", str(path))]
    return ParseOnlyCLI(GRPOTraining, PromptDataModule, args=args, run=False).config


def test_every_rl_yaml_parses_and_starts_with_its_launch_command():
    names = {path.name for path in CONFIG_DIR.glob("*.yaml")}
    assert {"tiny.yaml", "reward_oracle.yaml", "flux_dev.yaml", "qwen_image.yaml"} <= names
    for path in CONFIG_DIR.glob("*.yaml"):
        assert path.read_text().startswith("# python -m rl_policy fit --config"), path.name
        if "seed_everything" in yaml.safe_load(path.read_text()):  # full configs; reward_oracle.yaml is an overlay
            assert parse(path).model.groups.group_size == 24, path.name
    overlay = parse(CONFIG_DIR / "tiny.yaml", CONFIG_DIR / "reward_oracle.yaml")
    assert overlay.model.reward_source == "oracle" and overlay.trainer.default_root_dir == "runs/rl/tiny-oracle"
    # an overlay sets single fields of a settings group; the base config's other fields stay
    assert overlay.model.sampler.sde_steps == [0] and overlay.model.sampler.resolution == 32
    assert overlay.model.sampler.cfg_scale == 3.0 and overlay.model.groups.keep_per_side == 12


def test_cluster_configs_follow_the_paper():
    for name, guidance, cfg in (("flux_dev.yaml", 3.5, 1.0), ("qwen_image.yaml", None, 4.0)):
        config = parse(CONFIG_DIR / name)
        model = config.model
        sampler, objective = model.sampler, model.objective.init_args
        assert (model.groups.group_size, model.groups.keep_per_side, sampler.num_steps, sampler.resolution) == (
            24,
            6,
            6,
            512,
        )
        assert model.policy.lora_rank == 32 and objective.beta == 0.01 and objective.clip_range == 1e-4
        assert model.optimizer.init_args.lr == 3e-4 and sampler.guidance == guidance and sampler.cfg_scale == cfg
        assert config.trainer.devices == 8 and config.trainer.precision == "bf16-mixed"
        assert config.trainer.strategy.class_path == "lightning.pytorch.strategies.FSDPStrategy"
        per_gpu = config.data.prompts_per_step // config.trainer.devices
        assert per_gpu * model.groups.group_size == 48  # 2 prompts x 24 images sampled per GPU and step
