"""Command line of the RL stage.

    python -m rl_policy pretrain-text --data data/spatialworld-rl --out runs/rl/text    # its T5 reads layouts
    python -m rl_policy pretrain --data data/spatialworld-rl --init-from runs/rl/text/pipeline --out runs/rl/generator
    python -m rl_policy fit --config configs/rl/tiny.yaml                             # GRPO (LightningCLI)
    python -m rl_policy sample --lora runs/rl/tiny-oracle/lora --prompt "..." --seed 0 --out x.png
    python -m rl_policy draw --pipeline DIR --data data/spatialworld-rl --out data/agreement-test   # judged groups

`fit` is LightningCLI over `rl_policy.training.GRPOTraining` + `rl_policy.data.PromptDataModule`, with
`ExportPolicy` attached (options under `--export.*`): the run ends with a base-vs-trained evaluation, the LoRA in
diffusers' format in `<default_root_dir>/lora/` and `<default_root_dir>/metrics.json`. Rerun with
`--ckpt_path <default_root_dir>/checkpoints/last.ckpt` to resume a killed run.

`sample` draws images of a pipeline (and optionally a trained LoRA: the `lora/` dir a fit writes, whose policy.json
names its base pipeline) with the ODE sampler the RL evaluation uses, one PNG per seed.

`pretrain-text` builds the tiny pipeline (or takes --init-from) and trains its T5 text encoder to say where each
object of a prompt goes (rl_policy.text_layout) on fresh SpatialWorld prompts, then writes the pipeline with that T5 to
`<out>/pipeline`; `pretrain --init-from` it trains the transformer on those text features.

`pretrain` trains the tiny FluxTransformer2DModel from scratch with the rectified-flow loss on a SpatialWorld
dataset dir's (prompt, perfect image) pairs (rl_policy.pretrain), evaluates it with the SpatialWorld oracle at the end
of every epoch, and writes the pipeline (EMA weights, safetensors) to `<out>/pipeline` with its metrics; Lightning
logs and checkpoints go to `<out>/logs` (rerun the same command to resume a killed run).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from jsonargparse import Namespace, set_parsing_settings
from jsonargparse._common import get_parsing_setting

from rl_policy.data import PromptDataModule
from rl_policy.training import GRPOCLI, GRPOTraining
from shared.cli import TRACEBACK_HELP, build_lightning_cli

SCORER_CLASS_PATHS = ("reward_model.SpatialScorer", "reward_model.scorer.SpatialScorer")


def start_tiny_pipeline(arguments: argparse.Namespace):
    """`pretrain` and `pretrain-text`: torch's threads and every seed set, then the pipeline of --init-from (float32)
    or a new tiny one from --num-layers, --num-single-layers, --max-prompt-tokens and --seed."""
    import torch
    from lightning.pytorch import seed_everything

    from rl_policy.policy import build_tiny_flux_pipeline, load_pipeline

    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)
    seed_everything(arguments.seed)
    if arguments.init_from is not None:
        return load_pipeline(arguments.init_from, torch_dtype=torch.float32)
    return build_tiny_flux_pipeline(
        num_layers=arguments.num_layers,
        num_single_layers=arguments.num_single_layers,
        max_prompt_tokens=arguments.max_prompt_tokens,
        seed=arguments.seed,
    )


def pretrain_command(argv: Sequence[str]) -> None:
    """Pretrain the tiny embedded generator (rectified flow on SpatialWorld); writes <out>/pipeline."""
    parser = argparse.ArgumentParser(
        prog="python -m rl_policy pretrain",
        description=pretrain_command.__doc__,
        epilog=TRACEBACK_HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="a SpatialWorld dataset dir (train and val splits)")
    parser.add_argument("--out", type=Path, required=True, help="output dir: pipeline/ and logs/")
    parser.add_argument("--resolution", type=int, default=32, help="image side in pixels (a multiple of 4)")
    parser.add_argument("--steps", type=int, default=13600, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument(
        "--decay-steps",
        type=int,
        default=4000,
        help="linear learning-rate decay to 0 over the last N of --steps (0: constant after the warm-up)",
    )
    parser.add_argument("--prompt-dropout", type=float, default=0.1, help="share of steps on the empty prompt")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument(
        "--sigma-distribution",
        choices=("logit_normal", "uniform"),
        default="logit_normal",
        help="distribution of the training noise levels",
    )
    parser.add_argument(
        "--sigma-shift",
        type=float,
        default=1.0,
        help="time shift of the training noise levels, s*sigma/(1+(s-1)*sigma); > 1 trains high noise more",
    )
    parser.add_argument(
        "--train-text-encoders",
        action="store_true",
        help="train the CLIP and T5 text encoders with the transformer (default: frozen at their random weights)",
    )
    parser.add_argument(
        "--layout-loss-weight",
        type=float,
        default=0.0,
        help="weight of the layout head's loss beside the flow loss: a linear head on the image stream after the "
        "double-stream blocks names each image token's object colour or background (rl_policy/layout_head.py); 0 = off",
    )
    parser.add_argument(
        "--object-loss-weight",
        type=float,
        default=0.0,
        help="an image token's flow loss counts 1 + this x the share of it that the prompt's objects cover "
        "(objects are a few percent of the image); 0 = the plain flow loss",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from this saved tiny pipeline (e.g. checkpoints/generator_tiny/pipeline): its weights and "
        "architecture; --num-layers and --num-single-layers are then not used",
    )
    parser.add_argument(
        "--fresh-scenes",
        type=int,
        default=0,
        help="also train on N fresh pairs drawn with --data's settings and --fresh-seed (train prompts only; kept at "
        "--fresh-path for a resumed run); prompts over the text encoders' limit are skipped and counted",
    )
    parser.add_argument("--fresh-seed", type=int, default=1000, help="seed of the fresh pairs (not --data's own)")
    parser.add_argument(
        "--fresh-path",
        type=Path,
        default=None,
        help="where the fresh pairs are kept (default <out>/fresh_scenes.safetensors; `pretrain-text` can share it)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes that draw the fresh pairs")
    parser.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts sampled at each epoch end")
    parser.add_argument("--eval-steps", type=int, default=20, help="ODE steps of the evaluation sampler")
    parser.add_argument("--eval-every-epochs", type=int, default=1, help="evaluate at every N-th epoch end")
    parser.add_argument(
        "--epoch-steps",
        type=int,
        default=None,
        help="steps per epoch (default: one pass over the train set): its end evaluates and logs; set it with "
        "--fresh-scenes, whose pass is long",
    )
    parser.add_argument("--eval-cfg-scale", type=float, default=3.0, help="true classifier-free guidance scale")
    parser.add_argument("--max-prompt-tokens", type=int, default=96, help="text encoder length (longer: error)")
    parser.add_argument("--num-layers", type=int, default=1, help="double-stream blocks")
    parser.add_argument("--num-single-layers", type=int, default=2, help="single-stream blocks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--accelerator",
        choices=("cpu", "gpu", "auto"),
        default="cpu",
        help="where to train (gpu: one CUDA device; the tiny model needs no more)",
    )
    parser.add_argument(
        "--precision",
        choices=("32-true", "bf16-mixed"),
        default="32-true",
        help="Lightning precision of the training steps (the EMA and the saved weights stay float32)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after this much training time (then evaluate and save as at --steps); the learning-rate "
        "schedule still follows --steps",
    )
    arguments = parser.parse_args(argv)
    if not (arguments.data / "pairs.parquet").is_file():
        parser.error(f"--data {arguments.data} is not a SpatialWorld dataset dir (no pairs.parquet)")
    if arguments.max_minutes is not None and not arguments.max_minutes > 0:
        parser.error(f"--max-minutes must be positive, got {arguments.max_minutes}")
    if arguments.epoch_steps is not None and arguments.epoch_steps < 1:
        parser.error(f"--epoch-steps must be positive, got {arguments.epoch_steps}")
    if arguments.accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            parser.error("--accelerator gpu: torch sees no CUDA device")
    if arguments.decay_steps > arguments.steps:
        parser.error(f"--decay-steps {arguments.decay_steps} exceeds --steps {arguments.steps}")
    if arguments.init_from is not None and not (arguments.init_from / "model_index.json").is_file():
        parser.error(f"--init-from {arguments.init_from} is not a saved pipeline (no model_index.json)")

    import torch
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from rl_policy.policy import FluxPolicy
    from rl_policy.pretrain import GeneratorPretrainDataModule, GeneratorPretrainModule, save_generator

    pipeline = start_tiny_pipeline(arguments)
    policy = FluxPolicy(pipeline, max_sequence_length=arguments.max_prompt_tokens + 1, strict_prompt_length=True)
    module = GeneratorPretrainModule(
        policy,
        lr=arguments.lr,
        warmup_steps=arguments.warmup_steps,
        decay_steps=arguments.decay_steps,
        total_steps=arguments.steps,
        prompt_dropout=arguments.prompt_dropout,
        ema_decay=arguments.ema_decay,
        sigma_distribution=arguments.sigma_distribution,
        sigma_shift=arguments.sigma_shift,
        train_text_encoders=arguments.train_text_encoders,
        layout_loss_weight=arguments.layout_loss_weight,
        object_loss_weight=arguments.object_loss_weight,
        eval_steps=arguments.eval_steps,
        eval_cfg_scale=arguments.eval_cfg_scale,
        eval_seed=arguments.seed,
        eval_every_epochs=arguments.eval_every_epochs,
    )
    datamodule = GeneratorPretrainDataModule(
        arguments.data,
        resolution=arguments.resolution,
        batch_size=arguments.batch_size,
        num_eval_prompts=arguments.eval_prompts,
        seed=arguments.seed,
        fresh_scenes=arguments.fresh_scenes,
        fresh_seed=arguments.fresh_seed,
        fresh_path=arguments.fresh_path or arguments.out / "fresh_scenes.safetensors",
        workers=arguments.workers,
        prompt_fits=lambda prompt: policy.prompt_overflow(prompt) is None,
    )
    logs = arguments.out / "logs"
    # No version counter: last.ckpt is always the newest, also when <out> was copied from another run's dir (the
    # callback then does not recognise the old last.ckpt as its own and would write last-v1.ckpt beside it).
    checkpoints = ModelCheckpoint(
        dirpath=logs / "checkpoints", save_last=True, every_n_train_steps=200, enable_version_counter=False
    )
    trainer = Trainer(
        accelerator=arguments.accelerator,
        devices=1,
        precision=arguments.precision,
        max_steps=arguments.steps,
        max_epochs=-1,
        max_time=None if arguments.max_minutes is None else timedelta(minutes=arguments.max_minutes),
        logger=TensorBoardLogger(logs, name="pretrain"),
        callbacks=[checkpoints],
        log_every_n_steps=20,
        limit_train_batches=arguments.epoch_steps,
    )
    last = logs / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    trainer.fit(module, datamodule, ckpt_path=last if last.is_file() else None)
    metrics = module.evaluate_held_out(datamodule)[0] | {
        "steps": trainer.global_step,
        "resolution": arguments.resolution,
        "fresh_prompts_skipped": datamodule.skipped_fresh,
        "seconds_this_run": time.perf_counter() - started,
    }
    out = save_generator(module, arguments.out / "pipeline", metrics)
    print(json.dumps({"pipeline": str(out), "metrics": metrics}, indent=2))


def pretrain_text_command(argv: Sequence[str]) -> None:
    """Train the tiny generator's T5 text encoder to read layouts (where each object goes) from fresh SpatialWorld
    prompts; writes <out>/pipeline (the pipeline with that T5) and <out>/text_layout_metrics.json."""
    parser = argparse.ArgumentParser(
        prog="python -m rl_policy pretrain-text",
        description=pretrain_text_command.__doc__,
        epilog=TRACEBACK_HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, required=True, help="a SpatialWorld dataset dir (its world; val split)")
    parser.add_argument("--out", type=Path, required=True, help="output dir: pipeline/, logs/, the metrics")
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="a saved tiny pipeline whose T5 to train (default: a new tiny pipeline from --seed, as `pretrain` builds)",
    )
    parser.add_argument("--fresh-scenes", type=int, default=200000, help="fresh train prompts (one pass at most)")
    parser.add_argument("--fresh-seed", type=int, default=1000, help="seed of the fresh pairs (not --data's own)")
    parser.add_argument(
        "--fresh-path",
        type=Path,
        default=None,
        help="where the fresh pairs are kept (default <out>/fresh_scenes.safetensors; share it with `pretrain`)",
    )
    parser.add_argument("--resolution", type=int, default=32, help="image side of the kept fresh pairs")
    parser.add_argument("--steps", type=int, default=6000, help="(6,000 read both orderings; 3,500 only left/right)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--decay-steps", type=int, default=1500, help="linear decay to 0 over the last N steps")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between val checks")
    parser.add_argument("--max-prompt-tokens", type=int, default=96, help="text encoder length, as `pretrain`'s")
    parser.add_argument("--num-layers", type=int, default=1, help="double-stream blocks of a new pipeline")
    parser.add_argument("--num-single-layers", type=int, default=2, help="single-stream blocks of a new pipeline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes that draw the fresh pairs")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    arguments = parser.parse_args(argv)
    if not (arguments.data / "pairs.parquet").is_file():
        parser.error(f"--data {arguments.data} is not a SpatialWorld dataset dir (no pairs.parquet)")
    if arguments.init_from is not None and not (arguments.init_from / "model_index.json").is_file():
        parser.error(f"--init-from {arguments.init_from} is not a saved pipeline (no model_index.json)")
    if arguments.decay_steps > arguments.steps:
        parser.error(f"--decay-steps {arguments.decay_steps} exceeds --steps {arguments.steps}")

    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from rl_policy.text_layout import TextLayoutDataModule, TextLayoutModule
    from shared import atomic_write_json
    from shared.io import atomic_directory

    pipeline = start_tiny_pipeline(arguments)
    module = TextLayoutModule(
        pipeline.text_encoder_2,
        lr=arguments.lr,
        warmup_steps=arguments.warmup_steps,
        decay_steps=arguments.decay_steps,
        total_steps=arguments.steps,
        eval_every=arguments.eval_every,
    )
    datamodule = TextLayoutDataModule(
        arguments.data,
        pipeline.tokenizer_2,
        length=arguments.max_prompt_tokens + 1,  # the policy's max_sequence_length (FluxPolicy in `pretrain`)
        fresh_scenes=arguments.fresh_scenes,
        fresh_path=arguments.fresh_path or arguments.out / "fresh_scenes.safetensors",
        fresh_seed=arguments.fresh_seed,
        resolution=arguments.resolution,
        batch_size=arguments.batch_size,
        workers=arguments.workers,
        seed=arguments.seed,
    )
    logs = arguments.out / "logs"
    checkpoints = ModelCheckpoint(
        dirpath=logs / "checkpoints", save_last=True, every_n_train_steps=250, enable_version_counter=False
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=arguments.steps,
        max_epochs=-1,
        logger=TensorBoardLogger(logs, name="text_layout"),
        callbacks=[checkpoints],
        log_every_n_steps=20,
    )
    last = logs / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    trainer.fit(module, datamodule, ckpt_path=last if last.is_file() else None)
    metrics = {
        "val": module.evaluate(),
        "history_this_run": module.history,
        "steps": trainer.global_step,
        "fresh_prompts": len(datamodule.train),
        "fresh_prompts_skipped": datamodule.skipped,
        "seconds_this_run": time.perf_counter() - started,
    }
    pipeline.text_encoder_2 = module.encoder.requires_grad_(False).eval()
    with atomic_directory(arguments.out / "pipeline") as staging:
        pipeline.save_pretrained(staging, safe_serialization=True)
    atomic_write_json(arguments.out / "text_layout_metrics.json", metrics)
    print(json.dumps({"pipeline": str(arguments.out / "pipeline"), "val": metrics["val"]}, indent=2))


def sample_command(argv: Sequence[str]) -> None:
    """Draw images of a pipeline, with a trained LoRA if given, by the RL evaluation's ODE sampler."""
    parser = argparse.ArgumentParser(
        prog="python -m rl_policy sample",
        description=sample_command.__doc__,
        epilog=TRACEBACK_HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--pipeline", type=Path, help="a diffusers pipeline dir (default: the LoRA's base pipeline)")
    parser.add_argument("--lora", type=Path, help="a `lora/` dir written by `python -m rl_policy fit` (or its run dir)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="one image per seed")
    parser.add_argument("--out", type=Path, required=True, help="the PNG (several seeds: NAME_seed<N>.png)")
    parser.add_argument(
        "--size", type=int, help="image side (default: 32 for the tiny pixel-space generator, else 1024)"
    )
    parser.add_argument("--steps", type=int, default=20, help="Euler steps of the ODE")
    parser.add_argument(
        "--cfg-scale", type=float, help="true classifier-free guidance (default: 3 for the tiny generator)"
    )
    parser.add_argument("--guidance", type=float, help="FLUX.1-dev's distilled guidance (default 3.5 where it has one)")
    arguments = parser.parse_args(argv)
    lora = arguments.lora
    if lora is not None and (lora / "lora" / "policy.json").is_file():
        lora = lora / "lora"
    if lora is not None and not (lora / "policy.json").is_file():
        parser.error(f"--lora {arguments.lora} is not a LoRA dir of `python -m rl_policy fit` (no policy.json)")
    pipeline_dir = arguments.pipeline
    if pipeline_dir is None and lora is not None:
        base = json.loads((lora / "policy.json").read_text()).get("base_pipeline")
        pipeline_dir = None if base in (None, "tiny-random") else Path(base)
    if pipeline_dir is None:
        parser.error("give --pipeline (the LoRA's policy.json names no loadable base pipeline)")
    if not (pipeline_dir / "model_index.json").is_file():
        parser.error(f"--pipeline {pipeline_dir} is not a diffusers pipeline dir (no model_index.json)")
    if arguments.steps < 1:
        parser.error(f"--steps must be positive, got {arguments.steps}")

    import torch

    from data_synthesis import to_pil
    from rl_policy.policy import FluxPolicy, PixelUnshuffleAutoencoder, load_pipeline
    from rl_policy.rollout import sample_ode
    from shared import atomic_write_bytes

    pipeline = load_pipeline(pipeline_dir, torch_dtype=torch.float32)
    if lora is not None:
        pipeline.load_lora_weights(lora)
    tiny = isinstance(pipeline.vae, PixelUnshuffleAutoencoder)
    has_guidance = bool(getattr(pipeline.transformer.config, "guidance_embeds", False))
    size = arguments.size or (32 if tiny else 1024)
    cfg_scale = arguments.cfg_scale if arguments.cfg_scale is not None else (3.0 if tiny else 1.0)
    guidance = arguments.guidance if arguments.guidance is not None else (3.5 if has_guidance else None)
    policy = FluxPolicy(pipeline, max_sequence_length=min(512, pipeline.tokenizer_2.model_max_length))
    for seed in arguments.seed:
        generator = torch.Generator().manual_seed(seed)
        image = sample_ode(
            policy,
            [arguments.prompt],
            height=size,
            width=size,
            num_steps=arguments.steps,
            cfg_scale=cfg_scale,
            guidance=guidance,
            generator=generator,
        )[0]
        out = (
            arguments.out
            if len(arguments.seed) == 1
            else arguments.out.with_name(f"{arguments.out.stem}_seed{seed}{arguments.out.suffix or '.png'}")
        )
        buffer = io.BytesIO()
        to_pil(image).save(buffer, format="PNG")
        atomic_write_bytes(out, buffer.getvalue())
        print(out)


def draw_command(argv: Sequence[str]) -> None:
    """Draw the agreement set: groups of SDE samples of held-out prompts, judged by the oracle (rl_policy.draw)."""
    parser = argparse.ArgumentParser(
        prog="python -m rl_policy draw",
        description=draw_command.__doc__,
        epilog=TRACEBACK_HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--pipeline", required=True, help="a diffusers pipeline dir (the base generator)")
    parser.add_argument("--lora", help="a `lora/` dir of `python -m rl_policy fit` applied to the pipeline")
    parser.add_argument("--data", required=True, help="a SpatialWorld dataset dir (prompts with scene graphs)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--prompts", type=int, default=32, help="groups: the split's first prompts")
    parser.add_argument("--per-prompt", type=int, default=24, help="samples per group (GRPO's group size)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="SDE sampler steps (the rollouts')")
    parser.add_argument("--noise-level", type=float, default=0.8)
    parser.add_argument("--cfg-scale", type=float, default=3.0, help="true classifier-free guidance")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="output dir (rerun to resume)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    arguments = parser.parse_args(argv)
    from rl_policy.draw import SAMPLES_FILE, DrawSettings, draw_agreement_set

    settings = DrawSettings(
        pipeline=arguments.pipeline,
        data=arguments.data,
        lora=arguments.lora,
        split=arguments.split,
        prompts=arguments.prompts,
        per_prompt=arguments.per_prompt,
        resolution=arguments.resolution,
        num_steps=arguments.steps,
        noise_level=arguments.noise_level,
        cfg_scale=arguments.cfg_scale,
        seed=arguments.seed,
    )
    frame = draw_agreement_set(settings, arguments.out, progress=not arguments.quiet)
    print(
        f"{len(frame)} samples of {frame['group'].nunique()} prompts -> {arguments.out / SAMPLES_FILE}; "
        f"oracle relation accuracy {frame['relation_accuracy'].mean():.3f}, all found {frame['all_found'].mean():.3f}"
    )


def check_reward_checkpoints(model: Namespace) -> None:
    """A `reward_model.SpatialScorer` as `model.reward` or `model.eval_reward` (the parsed `model` section) whose
    checkpoint dir does not exist: one error naming the option, the dir, the command that writes it and the oracle
    reward that needs none (the scorer's own error, raised later while building, knows nothing of the RL stage)."""
    for name in ("reward", "eval_reward"):
        spec = getattr(model, name, None)
        if getattr(spec, "class_path", None) not in SCORER_CLASS_PATHS:
            continue
        directory = getattr(getattr(spec, "init_args", None), "checkpoint_dir", None)
        if directory is not None and not Path(directory).is_dir():
            raise FileNotFoundError(
                f"model.{name}: the reward checkpoint dir {directory} does not exist; `make train-reward` writes "
                "runs/reward/tiny/export (with REWARD_RUN_DIR=DIR: DIR/export), or train against the SpatialWorld "
                "oracle instead: `make train-rl REWARD=oracle` (here: add --config configs/rl/reward_oracle.yaml)"
            )


class CheckedGRPOCLI(GRPOCLI):
    """`GRPOCLI` that checks the reward checkpoints as soon as the config is parsed, before the seed is set and any
    class is built."""

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        check_reward_checkpoints((self.config[subcommand] if subcommand else self.config).model)


def lightning_cli(args: Sequence[str] | None = None, *, run: bool = True) -> CheckedGRPOCLI:
    """LightningCLI over GRPOTraining and PromptDataModule with ExportPolicy attached (rl_policy.training.GRPOCLI),
    the reward checkpoints checked once the config is parsed."""
    # reward, eval_reward and oracle are typed Any (training.GRPOTraining): by default jsonargparse drops such a
    # value whose class fails to build (a missing reward checkpoint) and then reports a missing argument instead
    validating = get_parsing_setting("validate_subclass_spec_in_any")
    set_parsing_settings(validate_subclass_spec_in_any=True)
    try:
        return build_lightning_cli(CheckedGRPOCLI, GRPOTraining, PromptDataModule, args, run=run)
    finally:
        set_parsing_settings(validate_subclass_spec_in_any=validating)


COMMANDS = {
    "pretrain-text": pretrain_text_command,
    "pretrain": pretrain_command,
    "sample": sample_command,
    "draw": draw_command,
}
CLI_COMMANDS = ("fit", "validate", "test")


def dispatch(argv: list[str]) -> None:
    """Run one command; errors propagate (`main` reports them)."""
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:])
    elif argv and (argv[0] in CLI_COMMANDS or argv[0] in ("-h", "--help")):
        lightning_cli(argv)
    else:
        print(f"usage: python -m rl_policy {{{','.join([*COMMANDS, 'fit'])}}} [--verbose] --help", file=sys.stderr)
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; an error is one line on stderr and exit status 1 (the traceback with --verbose or
    SPATIALSCORE_TRACEBACK=1, shared.cli)."""
    from shared.cli import run_command

    return run_command("python -m rl_policy", dispatch, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
