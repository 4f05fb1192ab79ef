"""The VLM judges through the cached chat client, against a real HTTP server on loopback that speaks the
chat-completions API: the fixed templates with base64 images, yes/no, testpoint and pairwise replies read, unreadable
replies counted (never a crash), failed requests marked retryable and not cached, and `spatialscore-pairs` end to end
with a pairwise judge that always answers "1" (both-order accuracy 0.5, order consistency 0)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from benchmarks.__main__ import main
from benchmarks.cache import CachedJudges, JudgeCache
from benchmarks.judges import Testpoint
from benchmarks.vlm import VLMPairwise, VLMTestpoints, VLMYesNo, make_testpoint_parser, parse_choice, parse_yes_no
from shared.chat import ChatClient, ChatConfig
from tests.chat_server import ChatServer, HTTPReply, request_text, serve_chat


def answer(request: dict) -> str | HTTPReply:
    """Replies by the text of the last message: a yes/no question about "sunny" -> "maybe" (unreadable), other
    questions -> "Yes."; testpoints -> all 1, or prose when the prompt says "garbage"; pairwise -> "1"; a question
    about "broken" -> HTTP 500."""
    text = request_text(request)
    if "broken" in text:
        return HTTPReply(500, b"")
    if "test point" in text:
        count = text.count("\n") - 3
        return "no idea" if "garbage" in text else json.dumps({str(i): 1 for i in range(1, count + 1)})
    if "Image 1" in text:
        return "1"
    return "maybe" if "sunny" in text else "Yes."


def sent(server: ChatServer, position: int = -1) -> tuple[str, list[str]]:
    """The text and the image URLs of a request the server received."""
    content = server.calls[position]["messages"][-1]["content"]
    images = [] if isinstance(content, str) else [p["image_url"]["url"] for p in content if p["type"] != "text"]
    return request_text(server.calls[position]), images


@pytest.fixture(scope="module")
def server():
    with serve_chat(answer, usage=(1, 1)) as server:
        yield server


@pytest.fixture
def client(server, tmp_path):
    url = server.url
    chat = ChatClient(ChatConfig(url, "judge-model", max_retries=0, cache_path=str(tmp_path / "chat.sqlite")))
    yield chat
    chat.close()


def test_parsers():
    assert parse_yes_no("Yes.") is True and parse_yes_no(" no, it is not") is False
    assert parse_choice("Image 2") == "second" and parse_choice("1") == "first" and parse_choice("Tie") == "tie"
    assert make_testpoint_parser(2)('```json\n{"1": 1, "2": "0"}\n```') == [1, 0]
    for parse, text in [(parse_yes_no, "maybe"), (parse_choice, "3"), (make_testpoint_parser(2), '{"1": 1}')]:
        with pytest.raises(ValueError):
            parse(text)


def test_yes_no_testpoints_and_pairwise_replies(server, client):
    image = Image.new("RGB", (16, 16), (200, 10, 10))
    answers = VLMYesNo(client).answer(image=image, questions=["Is it red?", "Is it sunny?"])
    assert answers.answers == (True, None) and "1 of 2 unanswered" in answers.error and not answers.retryable
    text, images = sent(server)
    assert text.startswith("Look at the image and answer the question with one word")
    decoded = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
    assert images[0].startswith("data:image/png;base64,") and decoded.getpixel((0, 0)) == (200, 10, 10)

    points = [Testpoint("Layout-2D", "the red square is left of the circle"), Testpoint("Color", "it is red")]
    assert VLMTestpoints(client).judge(image=image, prompt="a red square", testpoints=points).scores == (1, 1)
    unreadable = VLMTestpoints(client).judge(image=image, prompt="garbage", testpoints=points)
    assert unreadable.scores == (None, None) and unreadable.error.startswith("unparseable reply")
    assert client.usage.unparseable == 2  # "maybe" and the prose, each asked twice (one parse retry)

    verdict = VLMPairwise(client).compare(prompt="a red square", first=image, second=image)
    assert verdict.choice == "first" and len(sent(server)[1]) == 2


def test_failed_requests_are_retryable_and_not_cached(client, tmp_path):
    image = Image.new("RGB", (16, 16), "white")
    judges = CachedJudges(JudgeCache(tmp_path / "judges.sqlite"), "task", vqa=VLMYesNo(client))
    first = judges.answer("s", image, ["Is the broken one red?"])
    assert first.answers == (None,) and first.retryable and judges.retryable == 1
    judges.answer("s", image, ["Is the broken one red?"])
    assert judges.calls["vqa"] == 2 and len(judges.cache) == 0  # asked again, never cached
    judges.answer("s", image, ["Is it red?"])
    judges.answer("s", image, ["Is it red?"])
    assert judges.calls["vqa"] == 3 and judges.hits["vqa"] == 1 and len(judges.cache) == 1


def test_pairs_with_a_vlm_pairwise_judge(server, small_dataset, tmp_path):
    """The server always answers "1": each direction scores ([first] + [second == "second"]) / 2 = 0.5 and is never
    order-consistent."""
    url = server.url
    argv = ["run", "--task", "spatialscore-pairs", "--data", str(small_dataset), "--judge", "vlm", "--vlm-url", url]
    assert main([*argv, "--vlm-model", "judge-model", "--limit", "3", "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["pairwise"]
    assert summary["pairwise_accuracy"] == summary["pairwise_accuracy_reversed"] == 0.5
    assert summary["order_consistency"] == summary["order_consistency_reversed"] == 0.0
    assert summary["pairwise_accuracy_by_broken"]["1"] in (0.5, None) and summary["unreadable"] == 0
    assert json.loads((tmp_path / "out" / "run_log.json").read_text())["judge_calls"] == {"pairwise": 12}
