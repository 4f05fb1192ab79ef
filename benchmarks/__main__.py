"""`python -m benchmarks list | run | compare`: see `--help` of each command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from benchmarks.cache import CachedJudges, ImageCache, JudgeCache
from benchmarks.compare import compare
from benchmarks.images import ImageFolder, ImageSource, PipelineImages, SamplerSettings
from benchmarks.runner import SUMMARY_FILE, run_task
from benchmarks.tasks import TASKS, RunInputs, get_task
from shared.chat import ChatError
from shared.io import atomic_write_text

BATCH_HELP = "images drawn per pipeline call (lower it when a large generator runs out of GPU memory)"

EPILOG = """examples:
  python -m benchmarks list
  python -m benchmarks run --task spatialscore-pairs --data data/spatialworld --scorer runs/reward/tiny/export \\
      --out reports/runs/spatialscore-pairs
  python -m benchmarks run --task spatialworld-oracle --data data/spatialworld --images generated/base \\
      --scorer runs/reward/tiny/export --out reports/runs/oracle-base
  python -m benchmarks run --task geneval --data geneval/prompts/evaluation_metadata.jsonl --images outputs \\
      --judge spatialworld --out reports/runs/geneval-base
  python -m benchmarks export-prompts --format geneval --data data/spatialworld --out reports/geneval_sw.jsonl
  python -m benchmarks compare reports/runs/oracle-base reports/runs/oracle-rl --out reports

Images for --images DIR: DIR/<prompt_id>/<seed>.png (or GenEval's DIR/<prompt_id>/samples/<seed:04d>.png); the
prompt id is the pair id for SpatialWorld prompts and the zero-padded prompt index (00012) for GenEval."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of the reward model and of generators, with cached judges and resumable runs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the tasks and what each reads")

    run = commands.add_parser(
        "run",
        help="run one task into an output dir (resumes a killed run)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--task", required=True, help=f"one of: {', '.join(sorted(TASKS))}")
    run.add_argument("--out", required=True, type=Path, help="output dir: samples.jsonl, summary.json, report.md")
    run.add_argument("--data", type=Path, help="the task's input (dataset dir or benchmark file; see `list`)")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, help="a folder of generated images (layout below)")
    source.add_argument("--pipeline", type=Path, help="a diffusers pipeline dir to generate the images with")
    source.add_argument("--policy", type=Path, help="an rl_policy run dir (or its lora/): base pipeline + LoRA")
    run.add_argument("--images-per-prompt", type=int, help="seeds 0..N-1 per prompt (default: the task's)")
    run.add_argument("--limit", type=int, help="only the first N prompts (quick runs)")
    run.add_argument(
        "--judge",
        choices=("spatialworld", "vlm"),
        default="spatialworld",
        help="spatialworld: the pixel detector behind the detector, yes/no and testpoint judges (default); "
        "vlm: yes/no, testpoint and pairwise judges through an OpenAI-compatible chat endpoint (--vlm-*)",
    )
    run.add_argument("--scorer", type=Path, help="a SpatialScore reward checkpoint dir (the ImageScorer)")
    run.add_argument(
        "--detector",
        type=Path,
        help="a local transformers Mask2Former dir (e.g. facebook/mask2former-swin-small-coco-instance) as the "
        "Detector for real images, instead of the SpatialWorld pixel detector",
    )
    run.add_argument(
        "--colour-model",
        type=Path,
        help="a local transformers CLIP dir (GenEval uses openai/clip-vit-large-patch14) that names the colour of "
        "each --detector detection, as GenEval's colour rule needs",
    )
    run.add_argument("--cache-dir", type=Path, help="judge and image caches (default: OUT/cache); share it across runs")
    vlm = run.add_argument_group("VLM judge (--judge vlm)")
    vlm.add_argument("--vlm-url", help="base URL of the chat-completions endpoint, e.g. http://localhost:8000/v1")
    vlm.add_argument("--vlm-model", help="the served model, e.g. Qwen/Qwen2.5-VL-72B-Instruct")
    vlm.add_argument("--vlm-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    vlm.add_argument("--vlm-timeout", type=float, default=120.0, help="seconds per request")
    vlm.add_argument("--vlm-concurrency", type=int, default=8, help="requests in flight at once")
    sampler = run.add_argument_group("generation (--pipeline)")
    defaults = SamplerSettings()
    sampler.add_argument("--steps", type=int, default=defaults.num_inference_steps, help="denoising steps")
    sampler.add_argument("--guidance", type=float, default=defaults.guidance_scale, help="guidance scale")
    sampler.add_argument("--height", type=int, default=defaults.height, help="image height in pixels")
    sampler.add_argument("--width", type=int, default=defaults.width, help="image width in pixels")
    sampler.add_argument(
        "--true-cfg", type=float, default=defaults.true_cfg_scale, help="true CFG scale (> 1 for the tiny generator)"
    )
    sampler.add_argument("--batch-size", type=int, default=8, help=BATCH_HELP)

    export = commands.add_parser(
        "export-prompts", help="write a SpatialWorld dataset's prompts in a benchmark's own format"
    )
    export.add_argument(
        "--format",
        choices=("geneval", "unigenbench", "dpg", "tiif"),
        required=True,
        help="geneval: evaluation_metadata.jsonl; unigenbench: a prompt CSV (index, prompt_en, sub_dims_en); dpg: "
        "--out is a dir that gets dpg_bench.csv and prompts/; tiif: --out is a dir that gets prompts/ and "
        "eval_prompts/",
    )
    export.add_argument("--data", type=Path, required=True, help="a SpatialWorld dataset dir")
    export.add_argument("--split", default="test", help="which split's perfect prompts (default: test)")
    export.add_argument("--out", type=Path, required=True, help="the file to write")

    suite = commands.add_parser(
        "suite",
        help="every task for a reward checkpoint and for each generator, then the comparison (make eval-benchmarks)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    suite.add_argument("--out", type=Path, default=Path("reports"), help="summary.json, benchmarks.md, PNGs, runs/")
    suite.add_argument("--reward-data", type=Path, help="a SpatialWorld dataset dir for spatialscore-pairs")
    suite.add_argument("--scorer", type=Path, help="a reward checkpoint dir (also gives the images' SpatialScore)")
    suite.add_argument("--prompt-data", type=Path, help="a SpatialWorld dataset dir whose test prompts are drawn")
    suite.add_argument(
        "--generator",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="a diffusers pipeline dir or an rl_policy run dir, labelled; repeat for several",
    )
    suite.add_argument("--images-per-prompt", type=int, help="seeds per prompt (default: each task's)")
    suite.add_argument("--limit", type=int, help="only the first N prompts of each task")
    defaults = SamplerSettings()
    suite.add_argument("--steps", type=int, default=defaults.num_inference_steps, help="denoising steps")
    suite.add_argument("--guidance", type=float, default=defaults.guidance_scale, help="distilled guidance scale")
    suite.add_argument("--height", type=int, default=defaults.height)
    suite.add_argument("--width", type=int, default=defaults.width)
    suite.add_argument("--true-cfg", type=float, default=defaults.true_cfg_scale, help="true CFG scale (> 1: tiny)")
    suite.add_argument("--batch-size", type=int, default=8, help=BATCH_HELP)

    comparison = commands.add_parser("compare", help="a Markdown table and PNG bar charts across run dirs")
    comparison.add_argument("runs", nargs="+", type=Path, help="run dirs written by `run` (labelled by dir name)")
    comparison.add_argument("--out", type=Path, default=Path("reports"), help="where comparison.md and PNGs go")
    return parser


def make_judges(args: argparse.Namespace, cache: JudgeCache) -> CachedJudges:
    if args.judge == "spatialworld":
        from benchmarks.spatialworld import SpatialWorldDetector, SpatialWorldTestpoints, SpatialWorldVQA

        judges = {"vqa": SpatialWorldVQA(), "testpoints": SpatialWorldTestpoints(), "detector": SpatialWorldDetector()}
    else:
        from benchmarks.vlm import VLMPairwise, VLMTestpoints, VLMYesNo
        from shared.chat import ChatClient, ChatConfig

        if not (args.vlm_url and args.vlm_model):
            raise ValueError("--judge vlm needs --vlm-url and --vlm-model")
        config = ChatConfig(
            base_url=args.vlm_url,
            model=args.vlm_model,
            api_key_env=args.vlm_key_env,
            timeout_s=args.vlm_timeout,
            max_concurrency=args.vlm_concurrency,
            cache_path=str(cache.path.with_name("chat.sqlite")),
        )
        client = ChatClient(config)
        client.check()
        judges = {"vqa": VLMYesNo(client), "testpoints": VLMTestpoints(client), "pairwise": VLMPairwise(client)}
    colour_model = getattr(args, "colour_model", None)
    if colour_model is not None and args.detector is None:
        raise ValueError("--colour-model names the colours of --detector detections: give --detector too")
    if args.detector is not None:
        from benchmarks.detectors import CLIPColourClassifier, ColourReadingDetector, Mask2FormerDetector

        judges["detector"] = Mask2FormerDetector.from_pretrained(args.detector)
        if colour_model is not None:
            judges["detector"] = ColourReadingDetector(
                judges["detector"], CLIPColourClassifier.from_pretrained(colour_model)
            )
    if args.scorer is not None:
        from benchmarks.spatialscore import SpatialScoreJudge

        judges["scorer"] = SpatialScoreJudge.from_pretrained(args.scorer)
    return CachedJudges(cache, args.task, **judges)


def make_images(args: argparse.Namespace, cache_dir: Path) -> ImageSource | None:
    if args.images is not None:
        return ImageFolder(args.images)
    settings = SamplerSettings(args.steps, args.guidance, args.height, args.width, args.true_cfg)
    cache = ImageCache(cache_dir / "images")
    if args.policy is not None:
        return PipelineImages.from_policy(args.policy, settings, cache, args.batch_size)
    if args.pipeline is not None:
        return PipelineImages.from_pretrained(args.pipeline, settings, cache, args.batch_size)
    return None


def run(args: argparse.Namespace) -> None:
    task = get_task(args.task)
    for name in ("images_per_prompt", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    cache_dir = args.cache_dir or args.out / "cache"
    cache = JudgeCache(cache_dir / "judges.sqlite")
    try:
        inputs = RunInputs(
            judges=make_judges(args, cache),
            data=args.data,
            images=make_images(args, cache_dir),
            images_per_prompt=args.images_per_prompt,
            limit=args.limit,
        )
        result = run_task(task, inputs, args.out)
    finally:
        cache.close()
    calls, hits = sum(result.judge_calls.values()), sum(result.cache_hits.values())
    print(
        f"{task.name}: {result.evaluated} samples evaluated, {result.skipped} already done; {calls} judge calls, "
        f"{hits} cache hits; {result.seconds:.1f} s -> {args.out / SUMMARY_FILE}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "list":
            for name, task in sorted(TASKS.items()):
                print(f"{name}\n    {task.description}\n    --data: {task.data_help}")
        elif args.command == "run":
            run(args)
        elif args.command == "export-prompts":
            if args.format == "dpg":
                from benchmarks.formats import load_spatialworld_prompts, write_dpg

                path = write_dpg(load_spatialworld_prompts(args.data, args.split), args.out)
                print(f"{path} and {Path(args.out) / 'prompts'} (image folder names: the pair ids)")
            elif args.format == "tiif":
                from benchmarks.formats import load_spatialworld_prompts, write_tiif

                keys = write_tiif(load_spatialworld_prompts(args.data, args.split), args.out)
                print(f"{len(keys)} prompts -> {args.out} (image folders: <dimension>/<index>/<short|long>)")
            elif args.format == "unigenbench":
                from benchmarks.formats import load_spatialworld_prompts, write_unigenbench

                ids = write_unigenbench(load_spatialworld_prompts(args.data, args.split), args.out)
                print(f"{len(ids)} prompts -> {args.out} (image folder names: the index column)")
            else:
                from benchmarks.spatialworld import geneval_metadata

                prompts = geneval_metadata(args.data, args.split)
                atomic_write_text(args.out, "".join(json.dumps(p, sort_keys=True) + "\n" for p in prompts))
                print(f"{len(prompts)} prompts -> {args.out}")
        elif args.command == "suite":
            from benchmarks.suite import parse_generator, run_suite

            run_suite(
                args.out,
                reward_data=args.reward_data,
                scorer=args.scorer,
                prompt_data=args.prompt_data,
                generators=[parse_generator(text) for text in args.generator],
                settings=SamplerSettings(args.steps, args.guidance, args.height, args.width, args.true_cfg),
                images_per_prompt=args.images_per_prompt,
                limit=args.limit,
                batch_size=args.batch_size,
            )
            print((args.out / "benchmarks.md").read_text())
        else:
            print(compare(args.runs, args.out))
    except (ValueError, KeyError, FileNotFoundError, ChatError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
