"""Command line of the RL stage.

    python -m rl_policy pretrain --data data/spatialworld-rl --out runs/rl/generator   # the tiny generator (embedded)
    python -m rl_policy fit --config configs/rl/tiny.yaml                             # GRPO (LightningCLI)

`fit` is LightningCLI over `rl_policy.training.GRPOTraining` + `rl_policy.data.PromptDataModule`, with
`ExportPolicy` attached (options under `--export.*`): the run ends with a base-vs-trained evaluation, the LoRA in
diffusers' format in `<default_root_dir>/lora/` and `<default_root_dir>/metrics.json`. Rerun with
`--ckpt_path <default_root_dir>/checkpoints/last.ckpt` to resume a killed run.

`pretrain` trains the tiny FluxTransformer2DModel from scratch with the rectified-flow loss on a SpatialWorld
dataset dir's (prompt, perfect image) pairs (rl_policy.pretrain), evaluates it with the SpatialWorld oracle at the end
of every epoch, and writes the pipeline (EMA weights, safetensors) to `<out>/pipeline` with its metrics; Lightning
logs and checkpoints go to `<out>/logs` (rerun the same command to resume a killed run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def pretrain_command(argv: Sequence[str]) -> None:
    """Pretrain the tiny embedded generator (rectified flow on SpatialWorld); writes <out>/pipeline."""
    parser = argparse.ArgumentParser(
        prog="python -m rl_policy pretrain",
        description=pretrain_command.__doc__,
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
    parser.add_argument("--eval-prompts", type=int, default=64, help="held-out prompts sampled at each epoch end")
    parser.add_argument("--eval-steps", type=int, default=20, help="ODE steps of the evaluation sampler")
    parser.add_argument("--eval-cfg-scale", type=float, default=3.0, help="true classifier-free guidance scale")
    parser.add_argument("--max-prompt-tokens", type=int, default=96, help="text encoder length (longer: error)")
    parser.add_argument("--num-layers", type=int, default=1, help="double-stream blocks")
    parser.add_argument("--num-single-layers", type=int, default=2, help="single-stream blocks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    arguments = parser.parse_args(argv)
    if not (arguments.data / "pairs.parquet").is_file():
        parser.error(f"--data {arguments.data} is not a SpatialWorld dataset dir (no pairs.parquet)")
    if arguments.decay_steps > arguments.steps:
        parser.error(f"--decay-steps {arguments.decay_steps} exceeds --steps {arguments.steps}")

    import torch
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from rl_policy.policy import FluxPolicy, build_tiny_flux_pipeline
    from rl_policy.pretrain import GeneratorPretrainDataModule, GeneratorPretrainModule, save_generator

    if arguments.threads is not None:
        torch.set_num_threads(arguments.threads)
    seed_everything(arguments.seed)
    pipeline = build_tiny_flux_pipeline(
        num_layers=arguments.num_layers,
        num_single_layers=arguments.num_single_layers,
        max_prompt_tokens=arguments.max_prompt_tokens,
        seed=arguments.seed,
    )
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
        eval_steps=arguments.eval_steps,
        eval_cfg_scale=arguments.eval_cfg_scale,
        eval_seed=arguments.seed,
    )
    datamodule = GeneratorPretrainDataModule(
        arguments.data,
        resolution=arguments.resolution,
        batch_size=arguments.batch_size,
        num_eval_prompts=arguments.eval_prompts,
        seed=arguments.seed,
    )
    logs = arguments.out / "logs"
    # No version counter: last.ckpt is always the newest, also when <out> was copied from another run's dir (the
    # callback then does not recognise the old last.ckpt as its own and would write last-v1.ckpt beside it).
    checkpoints = ModelCheckpoint(
        dirpath=logs / "checkpoints", save_last=True, every_n_train_steps=200, enable_version_counter=False
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=arguments.steps,
        max_epochs=-1,
        logger=TensorBoardLogger(logs, name="pretrain"),
        callbacks=[checkpoints],
        log_every_n_steps=20,
    )
    last = logs / "checkpoints" / "last.ckpt"
    started = time.perf_counter()
    trainer.fit(module, datamodule, ckpt_path=last if last.is_file() else None)
    metrics = module.evaluate_held_out(datamodule)[0] | {
        "steps": trainer.global_step,
        "resolution": arguments.resolution,
        "seconds_this_run": time.perf_counter() - started,
    }
    out = save_generator(module, arguments.out / "pipeline", metrics)
    print(json.dumps({"pipeline": str(out), "metrics": metrics}, indent=2))


def lightning_cli(args: Sequence[str] | None = None, *, run: bool = True):
    """LightningCLI over GRPOTraining and PromptDataModule with ExportPolicy attached (rl_policy.training.GRPOCLI)."""
    from rl_policy.data import PromptDataModule
    from rl_policy.training import GRPOCLI, GRPOTraining

    return GRPOCLI(
        GRPOTraining,
        PromptDataModule,
        args=args,
        run=run,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
    )


COMMANDS = {"pretrain": pretrain_command}
CLI_COMMANDS = ("fit", "validate", "test")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:])
    elif argv and (argv[0] in CLI_COMMANDS or argv[0] in ("-h", "--help")):
        lightning_cli(argv)
    else:
        print(f"usage: python -m rl_policy {{{','.join([*COMMANDS, 'fit'])}}} --help", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
