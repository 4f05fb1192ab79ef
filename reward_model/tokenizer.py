"""An offline tokenizer and processor for the tiny SpatialScore backbone, and the image-only Qwen2.5-VL processor.

Implemented:
- `build_spatialworld_tokenizer`: a word-level tokenizer (the `tokenizers` library) over a fixed vocabulary: every
  word SpatialWorld prompts can contain (derived from data_synthesis' templates and word lists), the digits and
  punctuation, an unknown token, and Qwen2.5-VL's special tokens (`<|endoftext|>` doubles as the pad token, as in
  Qwen) plus the reward token `<|reward|>`. Special tokens come first, at the fixed ids of `SPECIAL_TOKENS`, so a
  tiny `Qwen2_5_VLConfig` can name them without a tokenizer at hand.
- `SpatialScoreProcessor`: `Qwen2_5_VLProcessor` without the video processor (the stock one needs torchvision,
  which cannot be imported beside torch 2.13 here). Reload a saved one with `SpatialScoreProcessor.from_pretrained`;
  `AutoProcessor.from_pretrained` silently returns only the tokenizer.
- `build_spatialworld_processor`: that tokenizer with `Qwen2VLImageProcessorPil` (the default image processor class
  needs torchvision).

Simplified against the real Qwen2.5-VL tokenizer (151,643 byte-level BPE tokens): whole lower-cased words instead
of BPE pieces, so any word outside SpatialWorld's language maps to `<|unk|>` and whitespace is not kept (decoding
joins words with spaces). The real tokenizer and processor load from a local directory through the same
`SpatialScoreProcessor.from_pretrained`.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from data_synthesis import (
    BACKGROUND_WORDS,
    COLOURS,
    NUMBER_WORDS,
    REGIONS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    TEMPLATES,
)

PAD_TOKEN = "<|endoftext|>"
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
REWARD_TOKEN = "<|reward|>"
UNKNOWN_TOKEN = "<|unk|>"
# Ids 0-8 of the SpatialWorld tokenizer, in this order (the tiny backbone config refers to them by id). The
# reward token is last so that a tokenizer built without it keeps every other id.
SPECIAL_TOKENS = (
    PAD_TOKEN,
    "<|im_start|>",
    "<|im_end|>",
    VISION_START_TOKEN,
    VISION_END_TOKEN,
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    UNKNOWN_TOKEN,
    REWARD_TOKEN,
)

# Words of `data_synthesis.describe`'s own sentence frames (not in its word lists) and of the chat roles.
FRAME_TEXT = (
    "An image of shapes on: The picture shows, set against. The scene is with objects in it. There is a the and "
    "user assistant system"
)
PUNCTUATION = ".,:;!?'\"()-/+*=#%&<>[]_"


def _normaliser() -> normalizers.Normalizer:
    return normalizers.Lowercase()


def _pre_tokeniser() -> pre_tokenizers.PreTokenizer:
    # Words split on whitespace, then every punctuation mark and digit is a token of its own.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )


def spatialworld_texts() -> list[str]:
    """Every text fragment SpatialWorld prompts are assembled from (template placeholders removed)."""
    texts = [re.sub(r"\{\w+\}", " ", template) for options in TEMPLATES.values() for template in options]
    texts += [word for options in SIZE_WORDS.values() for word in options]
    texts += [word for options in SHAPE_WORDS.values() for word in options]
    texts += [phrase for options in BACKGROUND_WORDS.values() for phrase in options]
    texts += [*NUMBER_WORDS, *COLOURS, *REGIONS, *SHAPES, *SIZES, FRAME_TEXT]
    return texts


def spatialworld_words(extra_texts: tuple[str, ...] = ()) -> list[str]:
    """The sorted vocabulary (special tokens excluded) of `spatialworld_texts()`, `extra_texts`, the ten digits and
    `PUNCTUATION`, split exactly as the tokenizer splits text."""
    normaliser, pre_tokeniser = _normaliser(), _pre_tokeniser()
    words = set("0123456789") | set(PUNCTUATION)
    for text in [*spatialworld_texts(), *extra_texts]:
        words.update(piece for piece, _ in pre_tokeniser.pre_tokenize_str(normaliser.normalize_str(text)))
    return sorted(words)


def build_spatialworld_tokenizer(
    extra_texts: tuple[str, ...] = (), include_reward_token: bool = True
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over SpatialWorld's language plus the words of `extra_texts` (e.g. stage-A captions).

    Ids: `SPECIAL_TOKENS` first (0-8), then the sorted words. `include_reward_token=False` leaves `<|reward|>` out
    (the words move down by one) to stand in for a base-model tokenizer that `build_spatialscore` must extend.
    """
    specials = [token for token in SPECIAL_TOKENS if include_reward_token or token != REWARD_TOKEN]
    vocabulary = {token: index for index, token in enumerate(specials)}
    for word in spatialworld_words(extra_texts):
        vocabulary.setdefault(word, len(vocabulary))
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token=UNKNOWN_TOKEN))
    backend.normalizer = _normaliser()
    backend.pre_tokenizer = _pre_tokeniser()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNKNOWN_TOKEN,
        extra_special_tokens=[token for token in specials if token not in (PAD_TOKEN, UNKNOWN_TOKEN)],
        padding_side="right",
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
