"""`RemoteSpatialScore`: the SpatialScore critic behind `python -m reward_model serve`, as an RL `Reward`.

    reward = RemoteSpatialScore("http://127.0.0.1:8000")
    rewards = reward(prompts=prompts, images=images, metadata=None)  # [N] means, as `SpatialScorer` gives

Images (PIL, paths, uint8 or [0, 1] float tensors/arrays: whatever `SpatialScorer` takes) are converted exactly as the
in-process scorer converts them and sent as PNG, which is lossless, so the server scores the same pixels. Each call
sends its items in requests of at most `images_per_request` (the server batches them with other clients' requests).
A request that fails to connect, times out or gets a 5xx/429 answer is retried `retries` times with growing waits;
a server that stays down raises one `RemoteRewardError` that says where and why, never a NaN or made-up reward. A
4xx answer (the request itself is wrong) raises at once with the server's message. The checkpoint hash of the first
answer is pinned: a server that starts serving another checkpoint mid-run is an error, as is one that differs from
`checkpoint_sha256` when given.

The access token comes from $SPATIALSCORE_SERVE_TOKEN unless passed as `token`; do not write it into a config,
which is saved beside every checkpoint. Connections go straight to `url`, ignoring http_proxy settings (the reward
server is on the training cluster's own network). Only the standard library speaks HTTP here.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import torch

from reward_model.scorer import ImageInput, to_pil

TOKEN_ENV = "SPATIALSCORE_SERVE_TOKEN"  # the same name as reward_model.serve's, which this module does not import
RETRYABLE_STATUS = (408, 429, 500, 502, 503, 504)


class RemoteRewardError(RuntimeError):
    """The reward server could not score a request: down past the retries, or it refused the request."""


def encode_png(image: ImageInput) -> str:
    """Base64 PNG of `image` after the in-process scorer's own conversion (`scorer.to_pil`)."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class RemoteSpatialScore:
    """The RL `Reward` protocol over HTTP: `__call__(*, prompts, images, metadata) -> mean [N]`; `score` adds std.

    url: the server, `http://host:port` (or its `/score` address). timeout: seconds for one request. retries: extra
    attempts after a failed one, waiting retry_wait, 2 retry_wait, 4 retry_wait, ... seconds. images_per_request:
    items per request (the server's default cap is 256). token: the server's access token (default:
    $SPATIALSCORE_SERVE_TOKEN). checkpoint_sha256: the checkpoint the server must serve (None: whatever the first
    answer says, then that one).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 120.0,
        retries: int = 3,
        retry_wait: float = 2.0,
        images_per_request: int = 64,
        token: str | None = None,
        checkpoint_sha256: str | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if timeout <= 0 or retries < 0 or retry_wait < 0 or images_per_request < 1:
            raise ValueError(
                "RemoteSpatialScore needs timeout > 0, retries >= 0, retry_wait >= 0 and images_per_request >= 1, "
                f"got {timeout}, {retries}, {retry_wait}, {images_per_request}"
            )
        base = url.rstrip("/").removesuffix("/score")
        self.url, self.score_url = base, base + "/score"
        self.timeout, self.retries, self.retry_wait = timeout, retries, retry_wait
        self.images_per_request = images_per_request
        self._token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self.checkpoint_sha256 = checkpoint_sha256
        self.model: str | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __repr__(self) -> str:  # no token in logs
        return f"RemoteSpatialScore({self.url!r}, checkpoint_sha256={self.checkpoint_sha256!r})"

    def score(self, *, prompts: Sequence[str], images: Sequence[ImageInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian reward of each (prompt, image) from the server: mean [N], std [N] (fp32, CPU), input order."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        if len(prompts) != len(images):
            raise ValueError(f"got {len(prompts)} prompts but {len(images)} images: one image per prompt")
        means: list[float] = []
        stds: list[float] = []
        for start in range(0, len(prompts), self.images_per_request):
            chunk = slice(start, start + self.images_per_request)
            body = {"prompts": list(prompts[chunk]), "images": [encode_png(image) for image in images[chunk]]}
            answer = self._post(json.dumps(body).encode())
            mean, std = self._check(answer, len(body["prompts"]))
            means += mean
            stds += std
        return torch.tensor(means, dtype=torch.float32), torch.tensor(stds, dtype=torch.float32)

    def __call__(
        self, *, prompts: Sequence[str], images: Sequence[ImageInput], metadata: Sequence[Any] | None = None
    ) -> torch.Tensor:
        """The `Reward` protocol: mean reward [N] of each (prompt, image); `metadata` is not used."""
        mean, _ = self.score(prompts=prompts, images=images)
        return mean

    def mean_and_std(
        self, *, prompts: Sequence[str], images: Sequence[ImageInput]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian reward rl_policy asks for (`rl_policy.reward.reward_and_std`): `score`'s mean and std [N]."""
        return self.score(prompts=prompts, images=images)

    def _check(self, answer: Any, count: int) -> tuple[list[float], list[float]]:
        if not isinstance(answer, dict) or not all(key in answer for key in ("mean", "std", "checkpoint_sha256")):
            raise RemoteRewardError(f"{self.score_url} answered something that is not a score: {str(answer)[:200]}")
        mean, std = answer["mean"], answer["std"]
        if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == count):
            raise RemoteRewardError(f"{self.score_url} answered {len(mean)} scores for {count} images")
        served = answer["checkpoint_sha256"]
        if self.checkpoint_sha256 is None:
            self.checkpoint_sha256 = served
        elif served != self.checkpoint_sha256:
            raise RemoteRewardError(
                f"{self.score_url} serves checkpoint sha256 {served}, expected {self.checkpoint_sha256} (pinned "
                "from the first answer, or given): the server was restarted with another checkpoint"
            )
        self.model = answer.get("model")
        if not all(isinstance(value, int | float) for value in mean + std):
            raise RemoteRewardError(f"{self.score_url} answered non-numeric scores")
        return [float(value) for value in mean], [float(value) for value in std]

    def _post(self, body: bytes) -> Any:
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        started, failure = time.monotonic(), ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_wait * 2 ** (attempt - 1))
            request = urllib.request.Request(self.score_url, data=body, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                detail = _detail(error)
                if error.code not in RETRYABLE_STATUS:
                    raise RemoteRewardError(
                        f"{self.score_url} refused the request (HTTP {error.code}): {detail}"
                    ) from None
                failure = f"HTTP {error.code}: {detail}"
            except (urllib.error.URLError, http.client.HTTPException, OSError, json.JSONDecodeError) as error:
                failure = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
        raise RemoteRewardError(
            f"the reward server {self.score_url} did not answer after {self.retries + 1} attempts in "
            f"{math.ceil(time.monotonic() - started)} s (last: {failure}); is `python -m reward_model serve` "
            "running there?"
        )


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(error.read() or b"{}")
    except (json.JSONDecodeError, OSError):
        return str(error.reason)
    return str(payload.get("detail", payload)) if isinstance(payload, dict) else str(payload)
