"""Local diffusers pipeline directories, as every stage that draws images loads them (the benchmarks' image source,
the data builder's generator backends).

- `read_pipeline_index`: `model_index.json`, after checking that every component folder it lists is there; one
  `PipelineDirError` naming what is missing otherwise.
- `load_pipeline_dir`: the pipeline itself. Components may come from a library other than diffusers and transformers
  (the embedded tiny generator's pixel-space autoencoder lives in `rl_policy.policy`); diffusers can only load such a
  component once its module is imported, so every library the index names is imported first.
- `text_length`: the prompt length to ask a Flux-style pipeline for. Its default, 512 T5 tokens, pads far beyond the
  length a small text encoder was trained with (the tiny generator: 97), and the transformer attends to every pad
  token; so ask for min(512, the second tokenizer's own maximum), which is 512 for FLUX.1-dev.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

KNOWN_LIBRARIES = ("diffusers", "transformers")
FLUX_MAX_TEXT_TOKENS = 512


class PipelineDirError(FileNotFoundError):
    """A directory that is not a loadable diffusers pipeline (the message names what is missing)."""


def read_pipeline_index(path: str | os.PathLike) -> dict[str, Any]:
    """The `model_index.json` of a pipeline dir whose listed component folders all exist (module docstring)."""
    path = Path(path)
    if not path.is_dir():
        raise PipelineDirError(f"pipeline directory {path} does not exist")
    index_path = path / "model_index.json"
    if not index_path.is_file():
        raise PipelineDirError(f"{path} is not a diffusers pipeline directory: model_index.json is missing")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as error:
        raise PipelineDirError(f"{index_path} is not valid JSON: {error}") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise PipelineDirError(f"{index_path} does not name a pipeline class (_class_name)")
    missing = [name for name, library in components(index).items() if not (path / name).is_dir()]
    if missing:
        raise PipelineDirError(
            f"{path} ({index['_class_name']}) lacks the component folder(s) {', '.join(missing)} listed in "
            "model_index.json"
        )
    return index


def components(index: dict[str, Any]) -> dict[str, str]:
    """{component: library} of the components a pipeline index lists (the null ones left out)."""
    return {
        name: entry[0]
        for name, entry in index.items()
        if not name.startswith("_") and isinstance(entry, list) and len(entry) == 2 and entry[0] is not None
    }


def import_component_libraries(index: dict[str, Any]) -> None:
    """Import every library besides diffusers and transformers that the index names, so diffusers can load from it."""
    for library in sorted(set(components(index).values()) - set(KNOWN_LIBRARIES)):
        try:
            importlib.import_module(library)
        except ImportError as error:
            raise PipelineDirError(
                f"the pipeline's model_index.json names components from {library!r}, which cannot be imported: {error}"
            ) from None


def load_pipeline_dir(path: str | os.PathLike, *, dtype: Any = None, device: str = "cpu") -> Any:
    """The diffusers pipeline in a local dir (checked, its component libraries imported), on `device`, with its
    progress bar off; nothing is downloaded."""
    from diffusers import DiffusionPipeline

    index = read_pipeline_index(path)
    import_component_libraries(index)
    pipeline = DiffusionPipeline.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def text_length(pipeline: Any) -> dict[str, int]:
    """`{"max_sequence_length": n}` for a pipeline whose call takes it and that has a second tokenizer (Flux, SD3),
    n = min(512, that tokenizer's maximum); `{}` for any other pipeline (module docstring)."""
    tokenizer = getattr(pipeline, "tokenizer_2", None)
    if tokenizer is None or "max_sequence_length" not in inspect.signature(pipeline.__call__).parameters:
        return {}
    limit = getattr(tokenizer, "model_max_length", None) or FLUX_MAX_TEXT_TOKENS
    return {"max_sequence_length": int(min(FLUX_MAX_TEXT_TOKENS, limit))}
