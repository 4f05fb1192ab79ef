"""The cached chat client against a real HTTP server on loopback that speaks the chat-completions API: good replies,
cache hits on rerun, unparseable replies retried then counted, malformed bodies, timeouts, server errors retried,
a rejected key and an unreachable endpoint failing `check()` with one clear error, and concurrency."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from shared.chat import ChatClient, ChatConfig, ChatError, parse_json_object
from tests.chat_server import ChatServer, HTTPReply, request_text, serve_chat

KEY = "sk-test-secret"


class Answers:
    """Replies by the last user message: 'json' -> a JSON object, 'prose' -> text that is not JSON, 'slow' -> sleeps
    past the client's timeout, 'garbage' -> a 200 body that is not JSON, 'flaky' -> 503 on the first call then a
    good reply, 'wait ...' -> echo once another 'wait' is in flight (at most 0.3 s later), anything else -> echo."""

    def __init__(self) -> None:
        self.flaky_failures = 1
        self.lock = threading.Lock()
        self.in_flight = threading.Condition()
        self.waiting = 0

    def __call__(self, request: dict) -> str | HTTPReply:
        question = request_text(request)
        if question == "slow":
            time.sleep(1.5)
        if question == "garbage":
            return HTTPReply(200, b"{not json")
        if question == "flaky":
            with self.lock:
                failing = self.flaky_failures > 0
                self.flaky_failures -= 1
            if failing:
                return HTTPReply(503, json.dumps({"error": {"message": "overloaded"}}).encode())
        if question.startswith("wait"):  # hold the reply until another request is in flight too (or 0.3 s)
            with self.in_flight:
                self.waiting += 1
                self.in_flight.notify_all()
                self.in_flight.wait_for(lambda: self.waiting > 1, timeout=0.3)
            time.sleep(0.05)
            with self.in_flight:
                self.waiting -= 1
        return {"json": '```json\n{"answer": "yes", "score": 1}\n```', "prose": "I think so."}.get(question, question)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with serve_chat(Answers(), api_key=KEY) as server:  # a wrong bearer token gets 401
        yield server


@pytest.fixture
def config(server, tmp_path, monkeypatch) -> ChatConfig:
    monkeypatch.setenv("SPATIALSCORE_TEST_KEY", KEY)
    return ChatConfig(
        base_url=server.url,
        model="judge",
        api_key_env="SPATIALSCORE_TEST_KEY",
        timeout_s=0.5,
        max_retries=1,
        cache_path=str(tmp_path / "chat.sqlite"),
    )


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_good_reply_is_parsed_counted_and_cached_for_the_rerun(server, config):
    client = ChatClient(config)
    client.check()
    first = client.complete(ask("json"), parse=parse_json_object)
    assert first.ok and not first.cached and first.value == {"answer": "yes", "score": 1}
    sent = server.calls[-1]
    assert sent["temperature"] == 0.0 and sent["seed"] == 0 and sent["model"] == "judge"
    rerun = ChatClient(config)  # a new process would open the same SQLite file
    second = rerun.complete(ask("json"), parse=parse_json_object)
    assert second.cached and second.value == first.value
    assert len(server.calls) == 2  # check() and the first request; the rerun cost nothing
    assert client.usage.prompt_tokens == 7 and client.usage.completion_tokens == 3 and client.usage.requests == 1
    assert rerun.usage.cache_hits == 1 and rerun.usage.requests == 0


def test_unparseable_reply_is_asked_again_warmer_then_counted_not_raised(server, config):
    client = ChatClient(config)
    result = client.complete(ask("prose"), parse=parse_json_object)
    assert result.value is None and result.text == "I think so." and "unparseable" in result.error
    assert result.attempts == 2
    assert [call["temperature"] for call in server.calls] == [0.0, 0.7]
    assert [call["seed"] for call in server.calls] == [0, 1]
    assert client.usage.unparseable == 1 and client.usage.parse_retries == 1


def test_malformed_body_and_timeout_fail_the_request_cleanly(server, config):
    client = ChatClient(config)
    garbage = client.complete(ask("garbage"))
    assert garbage.value is None and garbage.error is not None
    started = time.perf_counter()
    slow = client.complete(ask("slow"))
    assert slow.value is None and "request failed" in slow.error
    assert time.perf_counter() - started < 5  # 2 tries of 0.5 s plus backoff, not the server's 1.5 s each
    assert client.usage.failed >= 1


def test_server_error_is_retried_with_backoff(server, config):
    client = ChatClient(config)
    result = client.complete(ask("flaky"))
    assert result.ok and result.value == "flaky"
    assert [call["messages"][-1]["content"] for call in server.calls] == ["flaky", "flaky"]


def test_check_names_a_rejected_key_and_an_unreachable_endpoint(server, config, monkeypatch):
    monkeypatch.setenv("SPATIALSCORE_TEST_KEY", "wrong")
    with pytest.raises(ChatError, match=r"rejected the API key \(read from \$SPATIALSCORE_TEST_KEY"):
        ChatClient(config).check()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = ChatConfig(base_url=f"http://127.0.0.1:{port}/v1", model="judge", timeout_s=0.5, max_retries=0)
    with pytest.raises(ChatError, match="cannot reach the chat endpoint"):
        ChatClient(unreachable).check()


def test_the_key_is_never_in_the_config_or_the_cache(server, config, tmp_path):
    client = ChatClient(config)
    client.complete(ask("hello"))
    client.close()
    assert KEY not in repr(config)
    assert KEY.encode() not in (tmp_path / "chat.sqlite").read_bytes()


def test_complete_many_keeps_order_and_the_concurrency_limit(server, config):
    limited = ChatConfig(**{**config.__dict__, "max_concurrency": 3, "cache_path": None})
    client = ChatClient(limited)
    questions = [f"wait {index}" for index in range(9)]
    results = client.complete_many([ask(question) for question in questions])
    assert [result.value for result in results] == questions
    assert 1 < server.peak_active <= 3


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="base_url"):
        ChatConfig(base_url="localhost:8000", model="m")
    with pytest.raises(ValueError, match="max_concurrency"):
        ChatConfig(base_url="http://x/v1", model="m", max_concurrency=0)
