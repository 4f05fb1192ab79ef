"""Command line of SpatialWorld: `python -m data_synthesis {build,verify,show,review,export} --help`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from data_synthesis.build import BuildConfig, BuildError, WeightedGenerator, build
from data_synthesis.review import ReviewStore, existing_db, export_reviewed, format_agreement, pairwise_agreement, serve
from data_synthesis.review.store import DB_NAME
from data_synthesis.scene import COLOURS, SHAPES, SceneError
from data_synthesis.show import contact_sheet
from data_synthesis.verify import DatasetError, format_report, load_pairs, verify
from shared.chat import ChatConfig, ChatError
from shared.io import atomic_write_json

LLM_CACHE = "~/.cache/spatialscore/llm_chat.sqlite"
SHIPPED_GENERATOR = Path(__file__).resolve().parents[1] / "checkpoints" / "generator_tiny" / "pipeline"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_synthesis",
        description="SpatialWorld: procedural spatial preference pairs with exact ground truth.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    b = commands.add_parser(
        "build",
        help="build a dataset dir (pairs.parquet, images/, meta.json)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Build (or resume building) a dataset dir: SpatialWorld scenes drawn by the Pillow renderer by "
        "default, or prompts from an LLM (--prompt-source llm) and images from local diffusers pipelines "
        "(--generator). The same arguments give the same dataset; rerun after a kill to finish.",
    )
    b.add_argument("--out", required=True, help="output dataset dir")
    b.add_argument("--num-pairs", type=int, required=True, help="number of (prompt, perfect, perturbed) pairs")
    b.add_argument("--seed", type=int, default=0, help="dataset seed")
    b.add_argument("--resolution", type=int, default=128, help="image side in pixels (64 to 1024)")
    b.add_argument("--min-objects", type=int, default=3, help="fewest objects per scene (at least 2)")
    b.add_argument("--max-objects", type=int, default=6, help="most objects per scene (at most 8)")
    b.add_argument(
        "--max-broken", type=int, default=3, help="each pair breaks k relations, k uniform in 1..max-broken (at most 3)"
    )
    b.add_argument(
        "--split-fractions",
        type=float,
        nargs=3,
        default=(0.8, 0.1, 0.1),
        metavar=("TRAIN", "VAL", "TEST"),
        help="fractions of prompts per split (disjoint by prompt)",
    )
    b.add_argument("--colours", nargs="+", default=list(COLOURS), help="palette to draw object colours from")
    b.add_argument("--shapes", nargs="+", default=list(SHAPES), help="shapes to draw objects from")
    b.add_argument("--jitter", type=int, default=8, help="colour jitter in levels (0 to switch off)")
    b.add_argument("--noise", type=float, default=0.0, help="Gaussian pixel noise in levels")
    b.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (SpatialWorld + Pillow builds)"
    )
    b.add_argument("--overwrite", action="store_true", help="replace a dataset built with other arguments")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    llm = b.add_argument_group(
        "LLM prompt source (--prompt-source llm)",
        "An OpenAI-compatible chat endpoint (a hosted model or a local vLLM server) writes each pair's scene and its "
        "perturbation. The API key is read from the environment variable named by --llm-api-key-env, never from a "
        "flag; a local server takes none.",
    )
    llm.add_argument(
        "--prompt-source",
        choices=("spatialworld", "llm", "dataset"),
        default="spatialworld",
        help="where prompts, scenes and relations come from (dataset: the pairs of --source-split of --source-dir)",
    )
    llm.add_argument("--source-dir", help="--prompt-source dataset: the dataset dir whose pairs are drawn again")
    llm.add_argument("--source-split", default="train", help="--prompt-source dataset: the split of --source-dir")
    llm.add_argument(
        "--llm-base-url",
        default=os.environ.get("SPATIALSCORE_LLM_BASE_URL"),
        help="chat endpoint, e.g. http://127.0.0.1:8000/v1; $SPATIALSCORE_LLM_BASE_URL when not given",
    )
    llm.add_argument(
        "--llm-model",
        default=os.environ.get("SPATIALSCORE_LLM_MODEL"),
        help="served model; $SPATIALSCORE_LLM_MODEL when not given",
    )
    llm.add_argument("--llm-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    llm.add_argument("--llm-cache", default=LLM_CACHE, help="SQLite cache of every reply (a rerun asks nothing)")
    llm.add_argument("--llm-concurrency", type=int, default=8, help="requests in flight at most")
    llm.add_argument("--llm-timeout", type=float, default=120.0, help="seconds per request")
    llm.add_argument("--llm-retries", type=int, default=2, help="times a rejected reply is asked again")
    llm.add_argument(
        "--llm-http-retries", type=int, default=4, help="retries of a timed-out or failed request (with backoff)"
    )
    llm.add_argument("--llm-max-tokens", type=int, default=2048, help="longest reply, in tokens")
    llm.add_argument("--llm-templates", default="v1", help="version of data_synthesis/templates/llm_*_VERSION.txt")
    gen = b.add_argument_group(
        "generators",
        "Local diffusers text-to-image pipelines instead of the Pillow renderer; their pairs are 'unreviewed'.",
    )
    gen.add_argument(
        "--generator",
        action="append",
        default=[],
        metavar="NAME=DIR[:WEIGHT]",
        help="a diffusers pipeline dir (repeat to mix several by weight; the name is stored per pair)",
    )
    gen.add_argument("--generator-steps", type=int, default=28, help="denoising steps (without --sampler)")
    gen.add_argument(
        "--sampler",
        action="append",
        default=[],
        metavar="ode:STEPS | sde:STEPS:NOISE",
        help="repeat to mix: each pair draws with one, by hash (ode: the pipeline's own scheduler; sde: the RL "
        "rollouts' Flow-GRPO SDE with that noise level); the pipeline's own with --generator-steps when not given",
    )
    gen.add_argument(
        "--generator-true-cfg", type=float, help="true classifier-free guidance scale against the empty prompt"
    )
    gen.add_argument(
        "--best-of",
        type=int,
        metavar="N",
        help="draw each image up to N times until the SpatialWorld oracle accepts it; pairs without an accepted "
        "image are skipped and counted (--num-pairs pairs are tried); the shipped tiny generator when no --generator",
    )
    gen.add_argument(
        "--ranked-fraction",
        type=float,
        default=0.0,
        help="with --best-of: share of the pairs made on-policy ranked pairs (two samples of one prompt, ordered by "
        "the oracle)",
    )
    gen.add_argument("--generator-guidance", type=float, help="guidance scale; the pipeline's own when not given")
    gen.add_argument("--generator-batch-size", type=int, default=4, help="images per pipeline call")
    gen.add_argument("--device", help="torch device for the pipelines; cuda if available, else cpu, when not given")
    gen.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        help="pipeline dtype; bfloat16 on CUDA, else float32, when not given",
    )

    v = commands.add_parser(
        "verify",
        help="check every file and read every image back with the pixel detector",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    v.add_argument("dataset", help="dataset dir")
    v.add_argument(
        "--threshold",
        type=float,
        default=0.99,
        help="fail below this fraction of perfect/perturbed images read exactly as recorded",
    )
    v.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    v.add_argument("--report", help="also write the report as JSON to this path")
    v.add_argument("--quiet", action="store_true", help="no progress bar")

    s = commands.add_parser(
        "show",
        help="contact sheet of pairs with prompts and broken relations",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("dataset", help="dataset dir")
    s.add_argument("--num", type=int, default=16, help="number of pairs")
    s.add_argument("--split", choices=("train", "val", "test"), help="only pairs of this split")
    s.add_argument("--columns", type=int, default=4, help="pairs per row")
    s.add_argument("--out", default="grid.png", help="output PNG")

    r = commands.add_parser(
        "review",
        help="serve the page where people judge the pairs (or print agreement between reviewers)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Serve the review page. Off loopback an access token is required: $SPATIALSCORE_REVIEW_TOKEN, "
        "or one generated and printed at start.",
    )
    r.add_argument("dataset", help="dataset dir")
    r.add_argument("--host", default="127.0.0.1", help="address to listen on")
    r.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    r.add_argument("--reviewer", help="reviewer name used when the page URL gives none (?reviewer=NAME)")
    r.add_argument("--db", help="decisions database; DIR/review.sqlite when not given")
    r.add_argument("--all-pairs", action="store_true", help="review every pair, not only review_status 'unreviewed'")
    r.add_argument(
        "--oracle-accepted",
        action="store_true",
        help="review the pairs the SpatialWorld oracle accepted (after `oracle-review`), whatever their status",
    )
    r.add_argument("--agreement", action="store_true", help="print Cohen's kappa between reviewers and exit")

    o = commands.add_parser(
        "oracle-review",
        help="the SpatialWorld oracle reviews every pair, as reviewer 'oracle' in the review decisions",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Accept a pair when every object is found in both images, every stated relation holds in the "
        "perfect image and exactly the recorded relations are broken in the perturbed one; the decision, with the "
        "reason of a rejection, goes into the review decisions (reviewer 'oracle'). Pairs already decided by the "
        "oracle are skipped, so a rerun resumes.",
    )
    o.add_argument("dataset", help="dataset dir (its pairs need SpatialWorld scene graphs)")
    o.add_argument("--db", help="decisions database; DIR/review.sqlite when not given")
    o.add_argument("--quiet", action="store_true", help="no progress bar")

    g = commands.add_parser(
        "ranked-groups",
        help="on-policy ranked pairs from groups of a generator's samples (`python -m rl_policy draw`)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="For each group of samples of one prompt, the oracle reads every sample and up to "
        "--pairs-per-group pairs it strictly orders (more stated relations confirmed, or every object found, and "
        "worse on neither) become Bradley-Terry pairs of kind 'ranked' under that prompt, the preferred sample as "
        "the perfect image. Splits by prompt. Groups with no ordered pair are skipped and counted.",
    )
    g.add_argument("draw", help="a finished `python -m rl_policy draw` dir (samples.parquet, draw_args.json)")
    g.add_argument("--source-dir", required=True, help="the dataset dir the draw took its prompts from")
    g.add_argument("--out", required=True, help="output dataset dir")
    g.add_argument("--pairs-per-group", type=int, default=6, help="most ordered pairs kept per group")
    g.add_argument("--seed", type=int, default=0, help="which ordered pairs are kept")
    g.add_argument(
        "--split-fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1), help="train/val/test shares of the prompts"
    )

    e = commands.add_parser(
        "export",
        help="write the reviewed dataset (accepted pairs only) as a dataset dir",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    e.add_argument("dataset", help="dataset dir that was reviewed")
    e.add_argument("--out", required=True, help="output dataset dir")
    e.add_argument("--db", help="decisions database; DIR/review.sqlite when not given")
    e.add_argument("--min-reviewers", type=int, default=1, help="accept a pair only with this many decisions")

    ls = commands.add_parser(
        "label-studio",
        help="review in Label Studio instead: write its tasks, or import its JSON export into the decisions",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="`tasks DIR --out TASKS_DIR` writes tasks.json, labeling_config.xml and images/ (opaque names) for "
        "a Label Studio project; `import DIR EXPORT.json` adds the annotations of its JSON export to the review "
        "decisions, so `export` and `review --agreement` work as after the review app.",
    )
    ls.add_argument("action", choices=("tasks", "import"))
    ls.add_argument("dataset", help="dataset dir")
    ls.add_argument("export_file", nargs="?", help="import: Label Studio's JSON export of the project")
    ls.add_argument("--out", help="tasks: the dir for tasks.json, labeling_config.xml and images/")
    ls.add_argument("--url-prefix", default="/data/local-files/?d=", help="tasks: prefix of the image URLs")
    ls.add_argument("--all-pairs", action="store_true", help="tasks: every pair, not only review_status 'unreviewed'")
    ls.add_argument(
        "--db",
        help="tasks and import: the decisions database, whose secret key orders the images and which import "
        "writes into (give both the same); DIR/review.sqlite when not given",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            config = BuildConfig(
                num_pairs=args.num_pairs,
                seed=args.seed,
                resolution=args.resolution,
                min_objects=args.min_objects,
                max_objects=args.max_objects,
                max_broken=args.max_broken,
                split_fractions=tuple(args.split_fractions),
                jitter=args.jitter,
                noise=args.noise,
                colours=tuple(args.colours),
                shapes=tuple(args.shapes),
            )
            return _build(args, config)
        if args.command == "verify":
            report = verify(args.dataset, workers=args.workers, threshold=args.threshold, progress=not args.quiet)
            print(format_report(report))
            if args.report:
                atomic_write_json(args.report, report.to_dict())
            return 0 if report.passed else 1
        if args.command == "show":
            path = contact_sheet(args.dataset, args.out, num=args.num, split=args.split, columns=args.columns)
            print(f"wrote {path}")
            return 0
        if args.command == "review":
            if args.agreement:
                decisions = ReviewStore(existing_db(args.dataset, args.db)).decisions()
                print(format_agreement(pairwise_agreement(decisions)))
                return 0
            serve(
                args.dataset,
                host=args.host,
                port=args.port,
                db_path=args.db,
                reviewer=args.reviewer,
                all_pairs=args.all_pairs,
                oracle_accepted=args.oracle_accepted,
            )
            return 0
        if args.command == "oracle-review":
            from data_synthesis.oracle_review import oracle_review

            print(oracle_review(args.dataset, db_path=args.db, progress=not args.quiet).describe())
            return 0
        if args.command == "ranked-groups":
            from data_synthesis.ranked_groups import RankedGroupsConfig, build_ranked_groups

            config = RankedGroupsConfig(args.pairs_per_group, args.seed, tuple(args.split_fractions))
            counts = build_ranked_groups(args.draw, args.source_dir, args.out, config)
            print(
                f"{args.out}: {counts['pairs']} ranked pairs from {counts['groups']} groups {counts['by_split']}; "
                f"skipped {counts['skipped']}"
            )
            return 0
        if args.command == "export":
            result = export_reviewed(args.dataset, args.out, db_path=args.db, min_reviewers=args.min_reviewers)
            print(
                f"{result.out_dir}: {result.accepted} accepted pairs; dropped {result.dropped}; "
                f"not reviewed {result.not_reviewed}"
            )
            return 0
        if args.command == "label-studio":
            return _label_studio(args)
    except (BuildError, SceneError, DatasetError, ChatError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


def _label_studio(args: argparse.Namespace) -> int:
    from data_synthesis.review.label_studio import import_annotations, write_tasks

    if args.action == "tasks":
        if not args.out:
            raise ValueError("label-studio tasks needs --out DIR")
        count = write_tasks(
            args.dataset, args.out, db_path=args.db, url_prefix=args.url_prefix, all_pairs=args.all_pairs
        )
        print(f"{args.out}: {count} tasks (tasks.json), labeling_config.xml and images/")
        return 0
    if not args.export_file:
        raise ValueError("label-studio import needs the JSON export file after the dataset dir")
    load_pairs(args.dataset)  # one clear error for a dir that is not a dataset, before any database is created
    db = Path(args.db) if args.db else Path(args.dataset) / DB_NAME
    print(import_annotations(args.dataset, args.export_file, ReviewStore(db)).describe())
    return 0


def _generators(args: argparse.Namespace) -> list[WeightedGenerator] | None:
    specs = args.generator or ([f"tiny={SHIPPED_GENERATOR}"] if args.best_of is not None else [])
    if not specs:
        if args.sampler or args.generator_true_cfg is not None:
            raise BuildError("--sampler and --generator-true-cfg need a --generator (or --best-of)")
        return None
    from data_synthesis.generators import diffusers_generators, parse_generator_spec, parse_sampler_spec

    return diffusers_generators(
        [parse_generator_spec(text) for text in specs],
        steps=args.generator_steps,
        guidance_scale=args.generator_guidance,
        batch_size=args.generator_batch_size,
        device=args.device,
        dtype=args.dtype,
        sampler_specs=tuple(parse_sampler_spec(text) for text in args.sampler),
        true_cfg_scale=args.generator_true_cfg,
    )


def _build(args: argparse.Namespace, config: BuildConfig) -> int:
    generators = _generators(args)
    client = None
    source = None
    if args.prompt_source == "llm":
        from data_synthesis.llm_source import LLMPromptSource
        from shared.chat import ChatClient

        if not args.llm_base_url or not args.llm_model:
            raise BuildError(
                "--prompt-source llm needs --llm-base-url and --llm-model (or their environment variables)"
            )
        client = ChatClient(
            ChatConfig(
                base_url=args.llm_base_url,
                model=args.llm_model,
                api_key_env=args.llm_api_key_env,
                timeout_s=args.llm_timeout,
                max_retries=args.llm_http_retries,
                max_concurrency=args.llm_concurrency,
                parse_retries=args.llm_retries,
                max_tokens=args.llm_max_tokens,
                cache_path=os.path.expanduser(args.llm_cache),
            )
        )
        source = LLMPromptSource(client, template_version=args.llm_templates)
    elif args.prompt_source == "dataset":
        from data_synthesis.dataset_source import DatasetPromptSource

        if not args.source_dir:
            raise BuildError("--prompt-source dataset needs --source-dir (a dataset dir)")
        source = DatasetPromptSource(args.source_dir, args.source_split)
    best_of = None
    if args.best_of is not None:
        from data_synthesis.best_of import BestOf

        best_of = BestOf(max_tries=args.best_of, ranked_fraction=args.ranked_fraction)
    elif args.ranked_fraction:
        raise BuildError("--ranked-fraction needs --best-of (ranked pairs are drawn until the oracle orders two)")
    try:
        result = build(
            config,
            args.out,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.quiet,
            prompt_source=source,
            generators=generators,
            best_of=best_of,
        )
    finally:
        if client is not None:
            client.close()
    rate = f" in {result.seconds:.1f} s" if result.seconds else " (already complete: nothing to do)"
    print(
        f"{result.out_dir}: {result.counts['pairs']} pairs{rate}; splits {result.counts['by_split']}; "
        f"skipped {result.counts['skipped']}"
    )
    if best_of is not None:
        drawn = json.loads((Path(args.out) / "build_log.json").read_text())["best_of"]
        print(
            f"best-of-{best_of.max_tries}: kept {drawn['pairs_kept']} of {drawn['pairs_tried']} pairs; images accepted "
            f"per try {drawn['image_acceptance_rate']}; skipped {drawn['pairs_skipped']} (details in build_log.json)"
        )
    if result.usage:
        usage = result.usage
        print(
            f"LLM: {usage['requests']} requests, {usage['cache_hits']} cache hits, {usage['prompt_tokens']} prompt + "
            f"{usage['completion_tokens']} completion tokens, {usage['parse_retries']} replies asked again, "
            f"{usage['unparseable']} rejected for good, {usage['failed']} failed requests"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
