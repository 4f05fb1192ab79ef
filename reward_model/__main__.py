"""Command line of the reward model stage.

    python -m reward_model fit --config configs/reward/tiny.yaml        # train; exports <default_root_dir>/export
    python -m reward_model validate|test --config ... --ckpt_path ...   # LightningCLI, as usual
    python -m reward_model score --checkpoint DIR --prompt "..." IMG... # prints JSON
    python -m reward_model export --ckpt LIGHTNING.ckpt --out DIR      # a reward checkpoint dir from a checkpoint
    python -m reward_model pretrain --config configs/reward/tiny_stage_a_v3.yaml [--init-from DIR]  # stage A
    python -m reward_model serve --checkpoint DIR [--host --port ...]  # HTTP reward server (reward_model/serve.py)

`fit`, `validate` and `test` are LightningCLI over `RewardModule` + `PairwiseDataModule`; the network and the
optimizer are objects in the config (`class_path` / `init_args`, e.g. `reward_model.recipes.build_tiny_spatialscore`
and `torch.optim.AdamW`). `ExportRewardCheckpoint` is always attached (its options under `--export.*`), so a `fit`
ends with a test-split pass and the reward checkpoint dir with metrics.json; the resolved config is saved beside the
Lightning logs (`config.yaml`) and inside the export's config.json.

`export` rebuilds the module from the run's `config.yaml` (found beside the checkpoint, or `--config`), loads the
checkpoint's weights and writes the reward checkpoint dir; `--evaluate` also writes metrics.json from a test pass
(without `train_seconds`, which only the fit knows).
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from textwrap import shorten
from typing import Any

import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from PIL import Image

from reward_model.callbacks import ExportRewardCheckpoint, PairGridLogger, evaluate_pairs, json_safe
from reward_model.data import PairwiseDataModule
from reward_model.export import export_checkpoint
from reward_model.module import RewardModule
from shared.cli import TRACEBACK_HELP, build_lightning_cli

EXPORT_KEY = "export"  # config key of the ExportRewardCheckpoint options
GRID_KEY = "pair_grid"  # config key of the PairGridLogger options
BACKBONE_KEY = "backbone"  # config key of stage A's SaveGroundedBackbone options
INIT_FROM_KEY = "--model.network.init_args.init_from"  # what `pretrain --init-from` stands for


class RewardCLI(LightningCLI):
    """LightningCLI with the end-of-fit export (given the resolved config) and the TensorBoard pair grid attached."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ExportRewardCheckpoint, EXPORT_KEY)
        parser.add_lightning_class_args(PairGridLogger, GRID_KEY)

    def after_instantiate_classes(self) -> None:
        parser = self._parser(self.subcommand)
        config = self.config[self.subcommand] if self.subcommand is not None else self.config
        resolved = yaml.safe_load(parser.dump(config, skip_none=False, format="yaml"))
        for callback in self.trainer.callbacks:
            if isinstance(callback, ExportRewardCheckpoint):
                callback.resolved_config = resolved


def lightning_cli(args: Sequence[str] | dict[str, Any] | None = None, *, run: bool = True) -> RewardCLI:
    """`RewardCLI` over `RewardModule` and `PairwiseDataModule` (`args`: command-line words or a config dict)."""
    return build_lightning_cli(RewardCLI, RewardModule, PairwiseDataModule, args, run=run)


def score_command(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reward_model score",
        description="Score images against one prompt; prints JSON. A prompt longer than the model reads is scored "
        "without its end, with a warning on stderr saying how many tokens and words were cut.",
        epilog=TRACEBACK_HELP,
    )
    parser.add_argument("--checkpoint", required=True, help="a reward checkpoint dir (e.g. runs/reward/tiny/export)")
    parser.add_argument("--prompt", required=True, help="the prompt every image is scored against")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="backbone dtype: float32, bfloat16, float16 (default: as saved)")
    parser.add_argument("--batch-size", type=int, default=16)
    arguments = parser.parse_args(argv)
    if arguments.batch_size < 1:
        parser.error(f"--batch-size must be positive, got {arguments.batch_size}")
    images = read_images(arguments.images)  # before the model loads: a bad file costs no loading time
    from reward_model.scorer import SpatialScorer

    scorer = SpatialScorer.from_pretrained(
        arguments.checkpoint, device=arguments.device, dtype=arguments.dtype, batch_size=arguments.batch_size
    )
    prompt, cut = scorer.fit_prompt(arguments.prompt, images)
    if cut is not None:  # a word the cut goes through counts among the words cut
        print(
            f"warning: the prompt has {cut.tokens} tokens ({len(arguments.prompt.split())} words) and this model "
            f"reads {cut.budget} ({cut.reason}); scored without its last {cut.tokens - cut.budget} tokens "
            f"({len(cut.dropped.split())} words): {shorten(cut.dropped, 160)!r}",
            file=sys.stderr,
        )
    mean, std = scorer.score(prompts=[prompt] * len(images), images=images)
    scores = [
        {"image": image, "mean": m, "std": s}
        for image, m, s in zip(arguments.images, mean.tolist(), std.tolist(), strict=True)
    ]
    result = {"checkpoint": arguments.checkpoint, "prompt": arguments.prompt, "scores": scores}
    if cut is not None:
        result["prompt_scored"] = prompt
    print(json.dumps(result, indent=2))


def read_images(paths: Sequence[str]) -> list[Image.Image]:
    """Every image file decoded (RGB); one `ValueError` naming each file that is missing or not an image."""
    images, problems = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except FileNotFoundError:
            problems.append(f"{path} does not exist")
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            problems.append(f"{path} is not a readable image ({error})")
    if problems:
        raise ValueError(f"{len(problems)} of {len(paths)} images cannot be scored: " + "; ".join(problems))
    return images


def find_run_config(ckpt: Path) -> Path:
    """The `config.yaml` LightningCLI saved for the run of `ckpt` (beside it, or one or two dirs up)."""
    for directory in (ckpt.parent, ckpt.parent.parent, ckpt.parent.parent.parent):
        if (directory / "config.yaml").is_file():
            return directory / "config.yaml"
    raise FileNotFoundError(
        f"no config.yaml beside {ckpt} or up to two dirs above it: pass the run's config with --config"
    )


def export_command(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m reward_model export",
        description="Write a reward checkpoint dir from a Lightning checkpoint.",
        epilog=TRACEBACK_HELP,
    )
    parser.add_argument("--ckpt", required=True, type=Path, help="a Lightning checkpoint of `fit`")
    parser.add_argument("--out", required=True, type=Path, help="the reward checkpoint dir to write")
    parser.add_argument("--config", type=Path, default=None, help="the run's config.yaml (default: found near --ckpt)")
    parser.add_argument("--evaluate", action="store_true", help="also write metrics.json from a test-split pass")
    arguments = parser.parse_args(argv)
    if not arguments.ckpt.is_file():
        raise FileNotFoundError(f"Lightning checkpoint {arguments.ckpt} does not exist")
    config_path = arguments.config or find_run_config(arguments.ckpt)
    config = yaml.safe_load(config_path.read_text())
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"{config_path} is not a reward_model fit config: it has no `model` section")
    for fit_option in set(inspect.signature(Trainer.fit).parameters) - {"self", "model"}:
        config.pop(fit_option, None)  # ckpt_path and the like belong to `fit`, not to the run=False parser
    config["trainer"] = {**(config.get("trainer") or {}), "logger": False}  # build the module, log nothing
    cli = lightning_cli(config, run=False)
    checkpoint = torch.load(arguments.ckpt, map_location="cpu", weights_only=True)
    if "state_dict" not in checkpoint:
        raise ValueError(f"{arguments.ckpt} is not a Lightning checkpoint: it has no state_dict")
    cli.model.load_state_dict(checkpoint["state_dict"], strict=True)
    network, datamodule = cli.model.network, cli.datamodule
    metrics = None
    if arguments.evaluate:
        if datamodule.processor is None:
            datamodule.processor = network.processor
        datamodule.setup("test")
        datamodule.setup("validate")  # the temperature is fitted on val, never on test
        metrics = evaluate_pairs(
            network,
            datamodule.records["test"],
            datamodule.processor,
            system_prompt=datamodule.system_prompt,
            loss=cli.model.loss_name,
            calibration_records=datamodule.records["val"],
        )
        metrics |= {"train_seconds": None, "split": "test", "global_step": checkpoint.get("global_step")}
    out = export_checkpoint(
        network,
        arguments.out,
        metrics=json_safe(metrics),
        resolved_config=config,
        system_prompt=datamodule.system_prompt,
    )
    print(json.dumps({"exported": str(out), "metrics": json_safe(metrics)}, indent=2))


class StageACLI(LightningCLI):
    """LightningCLI of stage A, with the backbone directory written at every evaluation and at the end."""

    def add_arguments_to_parser(self, parser) -> None:
        from reward_model.stage_a.callbacks import SaveGroundedBackbone

        parser.add_lightning_class_args(SaveGroundedBackbone, BACKBONE_KEY)


def stage_a_cli(args: Sequence[str] | dict[str, Any] | None = None, *, run: bool = True) -> StageACLI:
    """`StageACLI` over `VerificationModule` and `VerificationDataModule` (`args`: command-line words or a dict)."""
    from reward_model.stage_a import VerificationDataModule, VerificationModule

    return build_lightning_cli(StageACLI, VerificationModule, VerificationDataModule, args, run=run)


def pretrain_command(argv: Sequence[str]) -> None:
    """Stage A of the tiny backbone: `python -m reward_model pretrain --config configs/reward/tiny_stage_a_v<N>.yaml
    [--init-from DIR]` fits one phase of the shipped recipe (LightningCLI `fit`; any other LightningCLI option
    works too) and writes its backbone directory (`--backbone.directory`, default <trainer.default_root_dir>/backbone),
    which stage B's builder loads and the next phase starts from. --init-from DIR: the previous phase's directory
    (short for --model.network.init_args.init_from)."""
    words = list(argv)
    for index, word in enumerate(words):
        if word == "--init-from":
            words[index] = INIT_FROM_KEY
        elif word.startswith("--init-from="):
            words[index] = INIT_FROM_KEY + word.removeprefix("--init-from")
    stage_a_cli(["fit", *words])


def serve_command(argv: Sequence[str]) -> None:
    from reward_model.serve import serve_command as serve  # LitServe is imported only by this command

    serve(argv)


COMMANDS = {"score": score_command, "export": export_command, "pretrain": pretrain_command, "serve": serve_command}


def dispatch(argv: list[str]) -> None:
    """Run one command; errors propagate (`main` reports them)."""
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:])
    else:
        lightning_cli(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; an error is one line on stderr and exit status 1 (the traceback with --verbose or
    SPATIALSCORE_TRACEBACK=1, shared.cli)."""
    from shared.cli import run_command

    return run_command("python -m reward_model", dispatch, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
