"""A real HTTP server on loopback that speaks the chat-completions API, for the tests of everything that talks to
an OpenAI-compatible endpoint through `shared.chat` (the client itself, the VLM judges, the LLM prompt source).

The test gives `answer(request) -> str | HTTPReply`: a string becomes a chat completion whose message is that text
(with `usage` tokens), an `HTTPReply` is sent as it is (error statuses, bodies that are not JSON). Every request is
recorded in `calls`; `peak_active` is the most requests served at once; with `api_key`, a request with another
bearer token gets 401 before `answer` is asked.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple


class HTTPReply(NamedTuple):
    status: int
    body: bytes


Answer = Callable[[dict[str, Any]], "str | HTTPReply"]


def request_text(request: dict[str, Any]) -> str:
    """The text of a request's last message (the text parts of a multimodal message, joined)."""
    content = request["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part.get("type") == "text")


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer: Answer, *, api_key: str | None = None, usage: tuple[int, int] = (7, 3)) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer, self.api_key, self.usage = answer, api_key, usage
        self.calls: list[dict[str, Any]] = []
        self.active = 0
        self.peak_active = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.calls.append(request)
            self.server.active += 1
            self.server.peak_active = max(self.server.peak_active, self.server.active)
        try:
            self._reply(request)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass
        finally:
            with self.server.lock:
                self.server.active -= 1

    def _reply(self, request: dict[str, Any]) -> None:
        if self.server.api_key is not None and self.headers.get("Authorization") != f"Bearer {self.server.api_key}":
            self._send(401, json.dumps({"error": {"message": "invalid api key", "type": "auth"}}).encode())
            return
        answer = self.server.answer(request)
        if isinstance(answer, HTTPReply):
            self._send(answer.status, answer.body)
            return
        prompt_tokens, completion_tokens = self.server.usage
        reply = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        self._send(200, json.dumps(reply).encode())


@contextmanager
def serve_chat(answer: Answer, **options) -> Iterator[ChatServer]:
    """A running `ChatServer` (see the module docstring), shut down on exit."""
    server = ChatServer(answer, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
