"""VLM judges through the one cached chat client (`shared.chat`): `YesNoVQA`, `TestpointJudge` and `PairwiseJudge`.

Fixed templates (below) at the client's deterministic settings (temperature 0, fixed seed); images go as base64
PNG data URLs in the OpenAI vision message format. A reply the parser rejects is asked again by the client (its
`parse_retries`), then recorded as unreadable (None) and counted; a request that failed after the client's retries
is marked `retryable`, so it is not cached and a rerun asks again. Bump `TEMPLATE_VERSION` when a template or a
parser changes (it is part of every judge-cache key).
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from typing import Any

from PIL import Image

from benchmarks.judges import PairwiseVerdict, Testpoint, TestpointScores, YesNoAnswers
from shared.chat import ChatClient, ChatResult, parse_json_object

TEMPLATE_VERSION = "1"
YES_NO_TEMPLATE = "Look at the image and answer the question with one word, yes or no.\nQuestion: {question}"
TESTPOINT_TEMPLATE = (
    "You check whether an image satisfies a text-to-image prompt.\n"
    "Prompt: {prompt}\n"
    "For each numbered test point, answer 1 if the image satisfies it and 0 if it does not.\n"
    "{testpoints}\n"
    'Reply with only a JSON object that maps every number to 0 or 1, for example {{"1": 1, "2": 0}}.'
)
PAIRWISE_TEMPLATE = (
    "Two images were generated for the same prompt: Image 1 comes first, Image 2 second.\n"
    "Prompt: {prompt}\n"
    "Which image follows the prompt better, above all the spatial relations between the objects? "
    "Reply with only 1 or 2."
)


def image_data_url(image: Image.Image) -> str:
    """A PNG data URL of the image (RGB)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def user_message(text: str, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
    """One user message: the images, then the text (OpenAI vision format)."""
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image_data_url(i)}} for i in images]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def parse_yes_no(text: str) -> bool:
    """True for a reply whose first word is "yes", False for "no" (case and punctuation ignored); ValueError else."""
    match = re.match(r"\W*([a-z]+)", text.lower())
    if match is None or match[1] not in ("yes", "no"):
        raise ValueError(f"not a yes/no answer: {text[:80]!r}")
    return match[1] == "yes"


def parse_choice(text: str) -> str:
    """ "first" for a reply that starts with 1 (or "Image 1"), "second" for 2, "tie" for tie/equal/both; ValueError
    else."""
    lowered = text.strip().lower()
    match = re.match(r"\W*(?:image\s*)?([12])\b", lowered)
    if match is not None:
        return "first" if match[1] == "1" else "second"
    if re.match(r"\W*(tie|equal|both|neither)\b", lowered):
        return "tie"
    raise ValueError(f"not 1 or 2: {text[:80]!r}")


def make_testpoint_parser(count: int):
    """A parser of a JSON object mapping "1".."count" to 0 or 1 -> [count] ints; ValueError when any is missing."""

    def parse(text: str) -> list[int]:
        answer = parse_json_object(text)
        scores = []
        for number in range(1, count + 1):
            value = answer.get(str(number))
            if isinstance(value, str) and value.strip() in ("0", "1"):
                value = int(value)
            if value not in (0, 1) or isinstance(value, float):
                raise ValueError(f"test point {number} is {value!r}, not 0 or 1")
            scores.append(int(value))
        return scores

    return parse


def _retryable(result: ChatResult) -> bool:
    return result.error is not None and result.error.startswith("request failed")


class VLMYesNo:
    """`YesNoVQA`: one request per question (as DPG-Bench and TIIF-Bench ask), sent concurrently."""

    template_version = TEMPLATE_VERSION

    def __init__(self, client: ChatClient) -> None:
        self.client, self.name = client, f"vlm:{client.config.model}"

    def answer(self, *, image: Image.Image, questions: Sequence[str]) -> YesNoAnswers:
        requests = [user_message(YES_NO_TEMPLATE.format(question=q), [image]) for q in questions]
        results = self.client.complete_many(requests, parse=parse_yes_no, namespace="benchmarks.yes_no", max_tokens=8)
        errors = [r.error for r in results if r.error is not None]
        return YesNoAnswers(
            tuple(r.value for r in results),
            f"{len(errors)} of {len(results)} unanswered: {errors[0]}" if errors else None,
            any(_retryable(r) for r in results),
        )


class VLMTestpoints:
    """`TestpointJudge`: one request per image listing every testpoint, answered as a JSON object of 0/1."""

    template_version = TEMPLATE_VERSION

    def __init__(self, client: ChatClient) -> None:
        self.client, self.name = client, f"vlm:{client.config.model}"

    def judge(self, *, image: Image.Image, prompt: str, testpoints: Sequence[Testpoint]) -> TestpointScores:
        listing = "\n".join(f"{i}. [{point.name}] {point.description}" for i, point in enumerate(testpoints, 1))
        text = TESTPOINT_TEMPLATE.format(prompt=prompt, testpoints=listing)
        result = self.client.complete(
            user_message(text, [image]), parse=make_testpoint_parser(len(testpoints)), namespace="benchmarks.testpoints"
        )
        scores = tuple(result.value) if result.value is not None else (None,) * len(testpoints)
        return TestpointScores(scores, result.error, _retryable(result))


class VLMPairwise:
    """`PairwiseJudge`: both images in one request, the first as Image 1."""

    template_version = TEMPLATE_VERSION

    def __init__(self, client: ChatClient) -> None:
        self.client, self.name = client, f"vlm:{client.config.model}"

    def compare(self, *, prompt: str, first: Image.Image, second: Image.Image) -> PairwiseVerdict:
        messages = user_message(PAIRWISE_TEMPLATE.format(prompt=prompt), [first, second])
        result = self.client.complete(messages, parse=parse_choice, namespace="benchmarks.pairwise", max_tokens=8)
        return PairwiseVerdict(result.value, result.error, _retryable(result))
