"""The SpatialWorld word-level tokenizer: the text side of the embedded default, shared by the tiny reward backbone
(reward_model wraps it in a Qwen2.5-VL processor) and the tiny generator's text encoders (rl_policy).

`build_spatialworld_tokenizer` is a word-level tokenizer (the `tokenizers` library) over a fixed vocabulary: every
word SpatialWorld prompts can contain (from this package's templates and word lists), the digits and punctuation,
an unknown token, and Qwen2.5-VL's special tokens (`<|endoftext|>` doubles as the pad token, as in Qwen) plus the
reward token `<|reward|>`. Special tokens come first, at the fixed ids of `SPECIAL_TOKENS`, so a tiny
`Qwen2_5_VLConfig` can name them without a tokenizer at hand.

Simplified against the real Qwen2.5-VL tokenizer (151,643 byte-level BPE tokens): whole lower-cased words instead
of BPE pieces, so any word outside SpatialWorld's language maps to `<|unk|>` and whitespace is not kept (decoding
joins words with spaces). It lives here, with the language it covers, because both the reward model and the policy
read it and neither may import the other.
"""

from __future__ import annotations

import re

from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from data_synthesis.prompts import BACKGROUND_WORDS, NUMBER_WORDS, SHAPE_WORDS, SIZE_WORDS, TEMPLATES
from data_synthesis.scene import COLOURS, REGIONS, SHAPES, SIZES

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
