"""The one cached client for OpenAI-compatible chat-completions endpoints (vLLM serving Qwen2.5-VL-72B, hosted APIs).

Used by the LLM prompt source of data_synthesis and by the VLM judges of benchmarks. Built on the `openai` package:

- configuration (`ChatConfig`): base URL, model, and the NAME of the environment variable that holds the API key
  (the key itself is never stored in a config, logged or cached; unset means "EMPTY", as a local vLLM server takes);
- deterministic settings: temperature 0 and a fixed seed by default, so a rerun asks the same question;
- transport: a timeout per request; connection errors, timeouts, 408/409/429 and 5xx answers are retried with
  exponential backoff (the `openai` client's own retry loop, `max_retries`); other HTTP errors fail the request;
- parsing: `complete(messages, parse=...)` runs `parse` on the reply text; a reply it rejects (`ValueError`) is
  asked again up to `parse_retries` times at `retry_temperature` (asking greedily again would repeat the reply),
  then given up on and counted as unparseable: the caller gets `ChatResult.value = None`, never an exception;
- cache: every successful reply is stored in SQLite (WAL, safe across threads and processes) under the SHA-256 of
  the request (model, messages, sampling settings, attempt number, caller's namespace), so a rerun costs nothing
  and a killed run resumes where it stopped;
- concurrency: `complete_many` runs requests on at most `max_concurrency` threads;
- accounting (`ChatUsage`): requests sent, cache hits, prompt and completion tokens, retried and unparseable
  replies, failed requests;
- `check()`: one request before any work (an unreachable endpoint, a rejected key or an unknown model gives one
  clear `ChatError`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

import openai

from shared.io import canonical_sha256
from shared.sqlite_table import SQLiteTable

log = logging.getLogger(__name__)

T = TypeVar("T")
Messages = Sequence[dict[str, Any]]


class ChatError(RuntimeError):
    """The endpoint cannot be used (unreachable, key rejected, model unknown, or a request failed for good)."""


@dataclass(frozen=True)
class ChatConfig:
    """Where and how to ask. `api_key_env` names the environment variable holding the key (never the key)."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_retries: int = 4
    max_concurrency: int = 8
    temperature: float = 0.0
    seed: int | None = 0
    max_tokens: int | None = 1024
    parse_retries: int = 1
    retry_temperature: float = 0.7
    cache_path: str | None = None

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"ChatConfig.base_url must be an http(s) URL, got {self.base_url!r}")
        if not self.model:
            raise ValueError("ChatConfig.model must name the served model")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.max_concurrency < 1 or self.parse_retries < 0:
            raise ValueError(
                "ChatConfig needs timeout_s > 0, max_retries >= 0, max_concurrency >= 1 and parse_retries >= 0, got "
                f"{self.timeout_s}, {self.max_retries}, {self.max_concurrency}, {self.parse_retries}"
            )


@dataclass
class ChatUsage:
    """Counts over a client's life (thread-safe updates through `ChatClient`)."""

    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    parse_retries: int = 0
    unparseable: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class ChatResult(Generic[T]):
    """One answered (or given-up) request: the last reply text, its parsed value (None when unparseable or failed),
    whether it came from the cache, and why it failed (None when it did not)."""

    text: str | None
    value: T | None
    cached: bool
    error: str | None = None
    attempts: int = field(default=1)

    @property
    def ok(self) -> bool:
        return self.error is None


class ChatCache:
    """SQLite store of reply texts (and their token usage) by request key (`shared.sqlite_table`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.table = SQLiteTable(
            path, "replies", ("text TEXT NOT NULL", "usage TEXT NOT NULL"), what="chat cache", error=ChatError
        )
        self.path = self.table.path

    def get(self, key: str) -> str | None:
        return self.table.get(key, "text")

    def put(self, key: str, text: str, usage: dict[str, int]) -> None:
        self.table.put(key, (text, json.dumps(usage)))

    def __len__(self) -> int:
        return len(self.table)

    def close(self) -> None:
        self.table.close()


def request_key(payload: dict[str, Any], namespace: str) -> str:
    """SHA-256 of the canonical JSON of a request payload and the caller's namespace."""
    return canonical_sha256({"namespace": namespace, **payload})


class ChatClient:
    """Cached, retried, concurrency-limited chat completions against one OpenAI-compatible endpoint."""

    def __init__(self, config: ChatConfig, *, http_client: Any = None) -> None:
        self.config = config
        api_key = os.environ.get(config.api_key_env) or "EMPTY"
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=api_key,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
            http_client=http_client,
        )
        self.cache = ChatCache(config.cache_path) if config.cache_path is not None else None
        self.usage = ChatUsage()
        self._usage_lock = threading.Lock()

    def _count(self, **increments: int) -> None:
        with self._usage_lock:
            for name, value in increments.items():
                setattr(self.usage, name, getattr(self.usage, name) + value)

    def check(self) -> None:
        """One tiny request, so that a wrong URL, key or model fails before any work, with one clear error."""
        try:
            self._client.chat.completions.create(
                model=self.config.model,
                messages=[{"role": "user", "content": "Reply with OK."}],
                max_tokens=1,
                temperature=0.0,
            )
        except openai.AuthenticationError:
            raise ChatError(
                f"{self.config.base_url} rejected the API key (read from ${self.config.api_key_env}; set it to a "
                "valid key)"
            ) from None
        except openai.NotFoundError:
            raise ChatError(f"{self.config.base_url} does not serve model {self.config.model!r}") from None
        except openai.APITimeoutError:
            raise ChatError(f"{self.config.base_url} did not answer within {self.config.timeout_s} s") from None
        except openai.APIConnectionError as error:
            raise ChatError(
                f"cannot reach the chat endpoint {self.config.base_url}: {error.__cause__ or error}"
            ) from None
        except openai.APIStatusError as error:
            raise ChatError(f"{self.config.base_url} answered HTTP {error.status_code}: {error.message}") from None

    def _ask(self, payload: dict[str, Any], key: str) -> tuple[str, bool]:
        """The reply text for one payload, from the cache or the endpoint -> (text, cached)."""
        if self.cache is not None:
            text = self.cache.get(key)
            if text is not None:
                self._count(cache_hits=1)
                return text, True
        self._count(requests=1)
        response = self._client.chat.completions.create(**payload)
        if not response.choices or response.choices[0].message is None:
            raise ValueError("the reply has no choices")
        text = response.choices[0].message.content or ""
        usage = {
            "prompt_tokens": getattr(response.usage, "prompt_tokens", 0) or 0,
            "completion_tokens": getattr(response.usage, "completion_tokens", 0) or 0,
        }
        self._count(**usage)
        if self.cache is not None:
            self.cache.put(key, text, usage)
        return text, False

    def _request(
        self, messages: Messages, attempt: int, namespace: str, max_tokens: int | None
    ) -> tuple[dict[str, Any], str]:
        """The payload of one attempt and its cache key. Retries differ from the first ask (warmer, next seed) and
        their keys name the attempt, so a retry is never answered by the cached reply it retries."""
        payload = {
            "model": self.config.model,
            "messages": list(messages),
            "temperature": self.config.temperature if attempt == 0 else self.config.retry_temperature,
            "max_tokens": max_tokens or self.config.max_tokens,
        }
        if self.config.seed is not None:
            payload["seed"] = self.config.seed + attempt
        return payload, request_key(payload if attempt == 0 else {**payload, "attempt": attempt}, namespace)

    def is_cached(self, messages: Messages, *, namespace: str = "", max_tokens: int | None = None) -> bool:
        """Whether the first ask of `messages` would be answered from the cache (no request sent)."""
        if self.cache is None:
            return False
        return self.cache.get(self._request(messages, 0, namespace, max_tokens)[1]) is not None

    def complete(
        self,
        messages: Messages,
        *,
        parse: Callable[[str], T] | None = None,
        namespace: str = "",
        max_tokens: int | None = None,
    ) -> ChatResult[T]:
        """Ask `messages`; `parse` turns the reply into a value or raises ValueError (then asked again, see the
        module docstring). Never raises for a failed or unparseable request: see `ChatResult.error`."""
        text, cached, problem = None, False, None
        attempts = 1 + self.config.parse_retries
        for attempt in range(attempts):
            payload, key = self._request(messages, attempt, namespace, max_tokens)
            try:
                text, cached = self._ask(payload, key)
            except openai.APIError as error:  # retried by the client already: the request has failed for good
                self._count(failed=1)
                log.warning("chat request failed after retries: %s", _describe(error))
                return ChatResult(None, None, False, f"request failed: {_describe(error)}", attempt + 1)
            except ValueError as error:  # a reply that is not a chat completion
                problem = f"malformed reply: {error}"
                continue
            if parse is None:
                return ChatResult(text, text, cached, None, attempt + 1)
            try:
                return ChatResult(text, parse(text), cached, None, attempt + 1)
            except ValueError as error:
                problem = f"unparseable reply: {error}"
                if attempt + 1 < attempts:
                    self._count(parse_retries=1)
        self._count(unparseable=1)
        return ChatResult(text, None, cached, problem, attempts)

    def complete_many(
        self,
        requests: Sequence[Messages],
        *,
        parse: Callable[[str], T] | None = None,
        namespace: str = "",
        max_tokens: int | None = None,
    ) -> list[ChatResult[T]]:
        """`complete` for each request on at most `max_concurrency` threads; results in input order."""
        with ThreadPoolExecutor(max_workers=self.config.max_concurrency) as pool:
            return list(
                pool.map(
                    lambda messages: self.complete(messages, parse=parse, namespace=namespace, max_tokens=max_tokens),
                    requests,
                )
            )

    def close(self) -> None:
        self._client.close()
        if self.cache is not None:
            self.cache.close()


def _describe(error: openai.APIError) -> str:
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    return f"{type(error).__name__}: {error}"


def parse_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in a reply (a bare object or one inside a ```json fence); ValueError otherwise."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON object in the reply: {text[:80]!r}")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON in the reply ({error.msg} at {error.pos}): {text[:80]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the reply's JSON is not an object: {text[:80]!r}")
    return value
