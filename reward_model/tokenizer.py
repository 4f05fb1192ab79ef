"""The processor of the tiny SpatialScore backbone: the image-only Qwen2.5-VL processor around the SpatialWorld
word-level tokenizer (`data_synthesis.build_spatialworld_tokenizer`, re-exported here with its special tokens).

- `SpatialScoreProcessor`: `Qwen2_5_VLProcessor` without the video processor (the stock one needs torchvision,
  which cannot be imported beside torch 2.13 here). Reload a saved one with `SpatialScoreProcessor.from_pretrained`;
  `AutoProcessor.from_pretrained` silently returns only the tokenizer.
- `build_spatialworld_processor`: the SpatialWorld tokenizer with `Qwen2VLImageProcessorPil` (the default image
  processor class needs torchvision).

The real Qwen2.5-VL tokenizer and processor load from a local directory through the same
`SpatialScoreProcessor.from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from data_synthesis import (  # noqa: F401 (the special tokens are re-exported for reward_model's modules)
    IMAGE_TOKEN,
    PAD_TOKEN,
    REWARD_TOKEN,
    SPECIAL_TOKENS,
    UNKNOWN_TOKEN,
    VIDEO_TOKEN,
    VISION_END_TOKEN,
    VISION_START_TOKEN,
    build_spatialworld_tokenizer,
)


class SpatialScoreProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` for images only: its `__init__` takes no video processor, so `from_pretrained` and
    `save_pretrained` handle just the image processor and the tokenizer (no torchvision needed).

    Returns `input_ids, attention_mask, mm_token_type_ids` [B, T] and `pixel_values` [sum of patches, C * t * p * p],
    `image_grid_thw` [num_images, 3].
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def build_spatialworld_processor(
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
    min_pixels: int = 56 * 56,
    max_pixels: int = 448 * 448,
) -> SpatialScoreProcessor:
    """The SpatialWorld tokenizer (or `tokenizer`) with a PIL Qwen2-VL image processor. Images are resized to
    multiples of patch_size * merge_size within [min_pixels, max_pixels]: a 112 px image gives 8 x 8 patches,
    merged into 4 x 4 = 16 image tokens."""
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    tokenizer = build_spatialworld_tokenizer() if tokenizer is None else tokenizer
    return SpatialScoreProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_processor(path: str | Path) -> SpatialScoreProcessor:
    """A processor saved by `save_pretrained` (ours or a Qwen2.5-VL checkpoint's) from a local directory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"processor directory {path} does not exist")
    if not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{path} holds no processor: tokenizer_config.json is missing")
    if not any((path / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        raise FileNotFoundError(f"{path} holds no image processor: processor_config.json / preprocessor_config.json")
    return SpatialScoreProcessor.from_pretrained(str(path))
