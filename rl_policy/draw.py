"""The agreement set: groups of a policy's own samples of held-out prompts, drawn with the RL rollouts' sampler and
judged by the SpatialWorld oracle, so that a critic can be measured where GRPO uses it (within a prompt's group).

    python -m rl_policy draw --pipeline checkpoints/generator_tiny/pipeline --data data/spatialworld-rl \
        --split test --prompts 32 --per-prompt 24 --out data/agreement-test

Each group is the first `prompts` prompts of `split` (file order), `per_prompt` SDE samples (the rollouts' sampler:
`rollout.sample_trajectories` with the given steps, noise level and guidance), from noise seeded by (seed, prompt
position), so a larger set begins with the same groups. Output, read by `reward_model` as files:
- `images/g{group:04d}_s{sample:02d}.png`;
- `samples.parquet`: group, sample, pair_id, prompt, image (relative path), relation_accuracy (share of the stated
  relations the oracle confirms), all_found (every named object detected), num_relations, and per stated relation
  (in the order of the prompt's scene graph, `stated_relations`, not its sentences') relations_confirmed and
  relation_kinds;
- `draw_args.json`: the arguments and `weights_fingerprint` (of the pipeline's and the LoRA's weight files: their
  names, sizes and first and last MiB); a rerun with the same ones resumes (groups already judged are kept: each
  group's labels are written atomically after its images, `groups/g{group:04d}.json`); other arguments, or other
  weights under the same path (a retrained generator), are refused. Only `prompts` may change: the groups do not
  depend on it, so a larger set draws just the new groups and a smaller one writes the first groups' table.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from data_synthesis import SpatialWorldOracle, to_pil
from rl_policy.data import load_prompts
from rl_policy.policy import FluxPolicy, load_pipeline
from rl_policy.rollout import sample_trajectories
from shared import atomic_write_bytes, atomic_write_json, stable_seed

SAMPLES_FILE = "samples.parquet"
ARGS_FILE = "draw_args.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
FINGERPRINT_SPAN = 1 << 20  # bytes read at each end of a weight file


@dataclass(frozen=True)
class DrawSettings:
    pipeline: str
    data: str
    lora: str | None = None
    split: str = "test"
    prompts: int = 32
    per_prompt: int = 24
    resolution: int = 32
    num_steps: int = 6
    noise_level: float = 0.8
    cfg_scale: float = 3.0
    seed: int = 0

    def check(self) -> None:
        if self.prompts < 1 or self.per_prompt < 2:
            raise ValueError(f"need prompts >= 1 and per_prompt >= 2, got {self.prompts}, {self.per_prompt}")
        if self.num_steps < 2 or self.resolution < 8 or not self.noise_level > 0:
            raise ValueError(
                f"need num_steps >= 2, resolution >= 8 and a positive noise level, got {self.num_steps}, "
                f"{self.resolution}, {self.noise_level}"
            )
        if not (Path(self.pipeline) / "model_index.json").is_file():
            raise FileNotFoundError(f"--pipeline {self.pipeline} is not a diffusers pipeline dir (no model_index.json)")


def draw_agreement_set(settings: DrawSettings, out: str | Path, *, progress: bool = True) -> pd.DataFrame:
    """Draw and judge the groups not yet in `out` (module docstring); -> the samples table."""
    settings.check()
    out = Path(out)
    records = load_prompts(settings.data, settings.split)[: settings.prompts]
    if any(record.metadata is None for record in records):
        raise ValueError(f"{settings.data} has prompts without SpatialWorld scene graphs: the oracle cannot judge them")
    _claim(out, settings)
    todo = [group for group in range(len(records)) if not (out / "groups" / f"g{group:04d}.json").is_file()]
    if todo:
        pipeline = load_pipeline(Path(settings.pipeline), torch_dtype=torch.float32)
        if settings.lora is not None:
            pipeline.load_lora_weights(settings.lora)
        policy = FluxPolicy(pipeline, max_sequence_length=min(512, pipeline.tokenizer_2.model_max_length))
        oracle = SpatialWorldOracle()
        from tqdm.auto import tqdm

        for group in tqdm(todo, desc=f"draw ({settings.split} prompts)", unit="group", disable=not progress):
            _draw_group(policy, oracle, settings, records[group], group, out)
    rows = [
        row for group in range(len(records)) for row in json.loads((out / "groups" / f"g{group:04d}.json").read_text())
    ]
    frame = pd.DataFrame(rows)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(out / SAMPLES_FILE, buffer.getvalue())
    return frame


@torch.no_grad()
def _draw_group(policy: FluxPolicy, oracle: SpatialWorldOracle, settings: DrawSettings, record, group: int, out: Path):
    generator = torch.Generator().manual_seed(stable_seed("agreement-set", settings.seed, group) % 2**63)
    side = settings.resolution
    trajectory = sample_trajectories(
        policy,
        [record.prompt],
        settings.per_prompt,
        height=side,
        width=side,
        num_steps=settings.num_steps,
        noise_level=settings.noise_level,
        cfg_scale=settings.cfg_scale,
        generator=generator,
    )
    images = policy.decode(trajectory.latents[:, -1], side, side).cpu()  # [G, 3, H, W]
    rows = []
    for sample, image in enumerate(images):
        picture = to_pil(image)
        name = f"images/g{group:04d}_s{sample:02d}.png"
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        atomic_write_bytes(out / name, buffer.getvalue(), durable=False)
        verdict = oracle.judge(picture, record.metadata)
        rows.append(
            {
                "group": group,
                "sample": sample,
                "pair_id": record.prompt_id,
                "prompt": record.prompt,
                "image": name,
                "relation_accuracy": verdict.accuracy,
                "all_found": verdict.all_found,
                "num_relations": len(verdict.confirmed),
                "relations_confirmed": list(verdict.confirmed),
                "relation_kinds": list(verdict.kinds),
            }
        )
    atomic_write_json(out / "groups" / f"g{group:04d}.json", rows)


def weights_fingerprint(*directories: str | Path | None) -> str:
    """sha256 over the weight files under `directories` (None skipped): each one's relative path, size, and first and
    last MiB. Enough to tell a retrained generator at the same path from the one drawn before, without reading a
    12B checkpoint whole."""
    digest = hashlib.sha256()
    for index, directory in enumerate(directories):
        if directory is None:
            continue
        root = Path(directory)
        for file in sorted(path for path in root.rglob("*") if path.is_file() and path.suffix in WEIGHT_SUFFIXES):
            size = file.stat().st_size
            digest.update(f"{index}\0{file.relative_to(root).as_posix()}\0{size}\0".encode())
            with file.open("rb") as handle:
                digest.update(handle.read(FINGERPRINT_SPAN))
                if size > FINGERPRINT_SPAN:
                    handle.seek(max(FINGERPRINT_SPAN, size - FINGERPRINT_SPAN))
                    digest.update(handle.read(FINGERPRINT_SPAN))
    return digest.hexdigest()


def _claim(out: Path, settings: DrawSettings) -> None:
    """Create `out` with the arguments and the weights' fingerprint, or check that an existing one was drawn with the
    same ones."""
    arguments = asdict(settings) | {"weights_fingerprint": weights_fingerprint(settings.pipeline, settings.lora)}
    path = out / ARGS_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        # the groups do not depend on how many there are (noise seeded by their position): `prompts` may change
        changed = sorted(key for key in asdict(settings) if key != "prompts" and previous.get(key) != arguments[key])
        if changed:
            raise ValueError(f"{out} was drawn with other arguments ({', '.join(changed)}): use a new --out")
        if previous.get("weights_fingerprint") != arguments["weights_fingerprint"]:
            what = "other weights" if "weights_fingerprint" in previous else "weights it did not record"
            lora = f" / --lora {settings.lora}" if settings.lora else ""
            raise ValueError(
                f"{out} was drawn from {what} at --pipeline {settings.pipeline}{lora} (a retrained generator?): its "
                "samples are not this generator's; remove it or use a new --out"
            )
        if previous.get("prompts") != settings.prompts:
            atomic_write_json(path, arguments)
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, arguments)
