"""`python -m reward_model serve`: the SpatialScore critic as a batched HTTP reward service, on LitServe.

    python -m reward_model serve --checkpoint runs/reward/tiny/export            # http://127.0.0.1:8000
    curl -s 127.0.0.1:8000/health                                              # "ok" once the workers loaded

`POST /score` takes JSON, `{"prompts": [...], "images": [...]}` (one image per prompt) or one item
`{"prompt": "...", "image": "..."}`, each image a base64 PNG or JPEG (a `data:image/...;base64,` prefix is allowed),
and answers `{"mean": [...], "std": [...], "model": ..., "checkpoint_sha256": ..., "batch_sizes": [...]}`: the
Gaussian reward of each item in input order, what is serving (the hash covers every file of the checkpoint dir, so
a client can pin it), and the sizes of the forward passes that scored the request. `GET /health` and `GET /info`
(the model, the hash and the limits) come from LitServe, as does the OpenAPI page at `/docs`.

Each LitServe worker (one per device, `--devices`, `--workers-per-device`) loads the checkpoint once with
`SpatialScorer.from_pretrained`. Requests that arrive within `--batch-timeout` of each other, from any clients, are
scored together in forward passes of at most `--max-batch-size` images. LitServe counts its batches in requests, not
images, and cannot split one request across batches, so two thin pieces do it here: `ImageBatchedLoop` (LitServe's
batched loop with another collection step) closes a batch when the next request would take it past
`--max-batch-size` images, and leaves that request first in line for the next batch; `ScoreAPI.predict` flattens a
batch's images, scores them in passes of at most `--max-batch-size` (a request with more images than that forms a
batch of its own, split across passes) and hands each request its own slice back. Counting images, not requests,
matters for throughput: a batch that took every waiting request would leave the worker idle while their clients
send the next ones, whereas a batch of one pass leaves the rest queued for the next pass.

Nothing is unpickled from the wire, and every request is checked in the HTTP process (`ScoreRequest`, a pydantic
model FastAPI validates) before it reaches a worker: LitServe fails every request of a batch when one of them
raises in the worker, so a bad request must never get there. Caps, each named in its 4xx answer: the body's bytes
(413, checked from Content-Length and while reading), images per request and pixels per image (422, the pixel count
read from the image header before decoding). Malformed JSON, a missing or unknown field, a wrong type, bad base64
and a file that is not a PNG or JPEG are 422 too, with a `detail` string that names the field.

Security (as the dataset review app, `data_synthesis.review`): on loopback anyone on the machine may score, and
requests must name a loopback Host (no DNS rebinding). Any other address needs the access token, the value of
$SPATIALSCORE_SERVE_TOKEN (`--token` requires it on loopback too), sent as `Authorization: Bearer <token>` and
compared in constant time; it is read from the environment only (never the command line, which other users can
see), never printed or logged, and does not travel to the inference workers.
"""

# No `from __future__ import annotations`: LitServe hands the annotations of `decode_request` and `encode_response`
# to FastAPI as they are, and FastAPI needs the classes there, not their names.
import base64
import binascii
import hmac
import io
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from queue import Empty
from typing import Any, ClassVar, NamedTuple, Self

import litserve
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, PrivateAttr, StrictStr, model_validator
from starlette.middleware.trustedhost import TrustedHostMiddleware

from reward_model.scorer import read_checkpoint_config, to_pil
from shared.io import directory_sha256
from shared.net import is_loopback

TOKEN_ENV = "SPATIALSCORE_SERVE_TOKEN"
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
IMAGE_FORMATS = ("PNG", "JPEG")
SCORE_PATH = "/score"


class ServeError(RuntimeError):
    """A server that cannot start as asked (e.g. off loopback without a token)."""


@dataclass(frozen=True)
class ServeLimits:
    """What one request may hold. max_request_bytes: the JSON body; max_images: items per request; max_image_pixels:
    width x height of each image (read from its header, before it is decoded)."""

    max_request_bytes: int = 64 * 2**20
    max_images: int = 256
    max_image_pixels: int = 2048 * 2048

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


class ScoreItems(NamedTuple):
    """One validated request, as a worker receives it: the images still encoded (checked to decode), as LitServe's
    request queue goes through a manager process, where PNG moves ~20x fewer bytes than pixels."""

    prompts: list[str]  # [N]
    images: list[bytes]  # [N] PNG or JPEG files


class ScoreResult(NamedTuple):
    """One request's answer, before it becomes JSON."""

    mean: list[float]  # [N]
    std: list[float]  # [N]
    batch_sizes: list[int]  # images per forward pass of the batch that scored it


class ScoreRequest(BaseModel):
    """The body of `POST /score`: `prompts` and `images` (lists, one base64 PNG/JPEG per prompt), or `prompt` and
    `image` (one item). Validated and decoded in the HTTP process, against `ScoreRequest.limits`."""

    model_config = ConfigDict(extra="forbid")
    # Set by `build_server` before LitServe forks its HTTP processes, which inherit it; workers never validate.
    limits: ClassVar[ServeLimits] = ServeLimits()

    prompts: list[StrictStr] | None = None
    images: list[StrictStr] | None = None
    prompt: StrictStr | None = None
    image: StrictStr | None = None
    _items: ScoreItems | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _decode_images(self) -> Self:
        many, one = (self.prompts, self.images), (self.prompt, self.image)
        if all(value is None for value in many + one):
            raise ValueError("missing fields: send `prompts` and `images` (lists), or `prompt` and `image`")
        if any(value is not None for value in many) and any(value is not None for value in one):
            raise ValueError("send either `prompts` and `images` or `prompt` and `image`, not both forms")
        if one[0] is not None or one[1] is not None:
            if None in one:
                raise ValueError(f"missing field `{'prompt' if self.prompt is None else 'image'}`")
            prompts, encoded, names = [self.prompt], [self.image], ["image"]
        else:
            if None in many:
                raise ValueError(f"missing field `{'prompts' if self.prompts is None else 'images'}`")
            prompts, encoded = self.prompts, self.images
            if len(prompts) != len(encoded):
                raise ValueError(f"got {len(prompts)} prompts but {len(encoded)} images: one image per prompt")
            if not prompts:
                raise ValueError("`prompts` and `images` are empty: send at least one item")
            names = [f"images[{index}]" for index in range(len(encoded))]
        if len(prompts) > self.limits.max_images:
            raise ValueError(
                f"{len(prompts)} images in one request; the limit is {self.limits.max_images} "
                "(--max-images-per-request): split the request"
            )
        files = [
            checked_image_file(text, name, self.limits.max_image_pixels)
            for text, name in zip(encoded, names, strict=True)
        ]
        self.images, self.image = None, None  # only the decoded files travel to the worker
        self._items = ScoreItems(list(prompts), files)
        return self

    def items(self) -> ScoreItems:
        assert self._items is not None, "ScoreRequest.items() on an unvalidated request"
        return self._items


class ScoreResponse(BaseModel):
    """The answer of `POST /score`: the reward's mean and std per item, in input order."""

    mean: list[float]
    std: list[float]
    model: str
    checkpoint_sha256: str
    batch_sizes: list[int]


def checked_image_file(text: str, name: str, max_pixels: int) -> bytes:
    """The PNG/JPEG file in base64 `text`, after decoding it once; ValueError naming `name` when it is not one or has
    too many pixels (counted from the header, before the pixels are decoded)."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise ValueError(f"{name}: a data URL must be base64 (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"{name}: not valid base64 ({error})") from None
    try:
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(
                    f"{name}: {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                    "(--max-image-pixels)"
                )
            image.load()
        return raw
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not a PNG or JPEG image") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{name}: not a readable PNG or JPEG image ({error})") from None


class RequestBytesLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, from its Content-Length or, without one, while reading."""

    def __init__(self, app: Any, *, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _detail(self, size: str) -> str:
        return f"request body is {size} bytes; the limit is {self.max_bytes} (--max-request-bytes)"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self._detail(declared.decode())}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, detail=self._detail(f"over {received}"))
            return message

        await self.app(scope, limited_receive, send)


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 with one readable `detail` string (FastAPI's default echoes every input back, base64 images included)."""
    messages = []
    for problem in error.errors():
        if problem.get("type") == "json_invalid":
            messages.append(f"the body is not valid JSON ({problem.get('ctx', {}).get('error', 'cannot parse')})")
            continue
        where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem.get("loc", ())[1:])
        message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
        messages.append(f"{where.lstrip('.')}: {message}" if where else message)
    return JSONResponse({"detail": "; ".join(messages)}, status_code=422)


class ImageBatchedLoop(BatchedLoop):
    """LitServe's batched loop with batches counted in images: it takes requests from the queue until the next one
    would take the batch past `images_per_batch` images (that one is held, first of the next batch), the batch is
    full, or `batch_timeout` has passed since its first request. Replaces LitServe's `collate_requests` (same queue
    items, same START and timeout handling) and nothing else; litserve is pinned below 0.3 for these internals."""

    def __init__(self, images_per_batch: int) -> None:
        super().__init__()
        self.images_per_batch = images_per_batch
        self._held: tuple | None = None  # a request taken from the queue that did not fit the last batch

    def _next(self, request_queue: Any, timeout: float) -> tuple | None:
        if self._held is not None:
            request, self._held = self._held, None
            return request
        try:
            request = request_queue.get(timeout=max(timeout, 1e-4))
        except Empty:
            return None
        if request == _SENTINEL_VALUE:
            raise _StopLoopError()
        return request

    def get_batch_requests(self, lit_api: litserve.LitAPI, request_queue: Any, transport: Any) -> tuple[list, list]:
        payloads, timed_out, images = [], [], 0
        deadline = None
        apply_timeout = lit_api.request_timeout not in (-1, False, None)
        while images < self.images_per_batch:
            wait = 1.0 if deadline is None else deadline - time.monotonic()
            if deadline is not None and wait <= 0:
                break
            request = self._next(request_queue, wait)
            if request is None:
                break
            response_queue_id, uid, timestamp, payload = request
            count = len(payload.items().prompts)
            if payloads and images + count > self.images_per_batch:
                self._held = request
                break
            self.put_response(transport, response_queue_id, uid, (), LitAPIStatus.START, LoopResponseType.REGULAR)
            if apply_timeout and time.monotonic() - timestamp > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
                continue
            payloads.append((response_queue_id, uid, payload))
            images += count
            deadline = deadline or time.monotonic() + lit_api.batch_timeout
        return payloads, timed_out


class ScoreAPI(litserve.LitAPI):
    """The LitServe API of `POST /score`: one `SpatialScorer` per worker, requests batched by image count."""

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike,
        *,
        max_batch_size: int = 16,
        batch_timeout: float = 0.01,
        dtype: str | None = None,
        model_name: str,
        checkpoint_sha256: str,
        token: str | None = None,
    ) -> None:
        # ImageBatchedLoop forms the batches; LitServe's own count (requests) only has to say "batched" (> 1).
        super().__init__(
            max_batch_size=max(2, max_batch_size),
            batch_timeout=batch_timeout,
            api_path=SCORE_PATH,
            loop=ImageBatchedLoop(max_batch_size),
        )
        self.checkpoint_dir = Path(checkpoint_dir)
        self.images_per_pass = max_batch_size
        self.dtype = dtype
        self.model_name, self.checkpoint_sha256 = model_name, checkpoint_sha256
        self._token = token

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_token"] = None  # workers are spawned with a pickle of this object; they never check the token
        return state

    def authorize(self, request: Request) -> None:
        """FastAPI dependency of every LitServe route (/score, /health, /info): the bearer token, when one is set."""
        if self._token is None:
            return
        header = request.headers.get("authorization", "")
        supplied = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(supplied.encode(), self._token.encode()):
            raise HTTPException(
                401, detail=f"access token required: send 'Authorization: Bearer <the value of ${TOKEN_ENV}>'"
            )

    def setup(self, device: str) -> None:
        from reward_model.scorer import SpatialScorer

        self.scorer = SpatialScorer.from_pretrained(
            self.checkpoint_dir, device=device, dtype=self.dtype, batch_size=self.images_per_pass
        )

    def decode_request(self, request: ScoreRequest) -> ScoreItems:
        return request.items()

    def _open(self, file: bytes) -> Image.Image:
        with Image.open(io.BytesIO(file), formats=IMAGE_FORMATS) as image:
            return to_pil(image)

    def batch(self, inputs: list[ScoreItems]) -> list[ScoreItems]:
        return inputs

    def predict(self, requests: list[ScoreItems]) -> list[ScoreResult]:
        prompts = [prompt for request in requests for prompt in request.prompts]
        images = [self._open(file) for request in requests for file in request.images]
        mean, std = self.scorer.score(prompts=prompts, images=images, batch_size=self.images_per_pass)  # [N], [N]
        mean, std = mean.cpu().tolist(), std.cpu().tolist()
        passes = [
            min(self.images_per_pass, len(prompts) - start) for start in range(0, len(prompts), self.images_per_pass)
        ]
        results, start = [], 0
        for request in requests:
            end = start + len(request.prompts)
            results.append(ScoreResult(mean[start:end], std[start:end], passes))
            start = end
        return results

    def unbatch(self, output: list[ScoreResult]) -> list[ScoreResult]:
        return output

    def encode_response(self, output: ScoreResult) -> ScoreResponse:
        return ScoreResponse(
            mean=output.mean,
            std=output.std,
            model=self.model_name,
            checkpoint_sha256=self.checkpoint_sha256,
            batch_sizes=output.batch_sizes,
        )


def model_name(config: Mapping[str, Any]) -> str:
    """A short name of what a reward checkpoint is: its backbone, and whether a LoRA sits on it."""
    backbone = config["backbone"]
    if backbone["source"] == "embedded":
        name = f"embedded {backbone.get('config', {}).get('model_type', 'backbone')}"
    else:
        name = Path(backbone["path"]).name
    return f"SpatialScore ({name}{' + LoRA' if config.get('lora') else ''})"


def access_token(host: str, environ: Mapping[str, str], *, require: bool = False) -> str | None:
    """The token the server at `host` requires: $SPATIALSCORE_SERVE_TOKEN when set; else none on loopback (unless
    `require`), and a `ServeError` anywhere else."""
    token = environ.get(TOKEN_ENV) or None
    if token is None and (require or not is_loopback(host)):
        where = "with --token" if is_loopback(host) else f"on {host} (not loopback)"
        raise ServeError(f"serving {where} needs an access token: set ${TOKEN_ENV} in the server's environment")
    return token


def build_server(
    checkpoint_dir: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    workers_per_device: int = 1,
    max_batch_size: int = 16,
    batch_timeout: float = 0.01,
    limits: ServeLimits = ServeLimits(),
    dtype: str | None = None,
    request_timeout: float = 120.0,
) -> litserve.LitServer:
    """The LitServer of `POST /score` over a reward checkpoint dir (checked here, loaded by each worker).

    token: required on every route when given (`access_token` says when it must be); host: where it will listen
    (without a token, only loopback Host names are accepted); max_batch_size: images per forward pass;
    batch_timeout: seconds a batch waits for more requests; request_timeout: seconds a request may wait in the
    queue (then 504).
    """
    if max_batch_size < 1:
        raise ValueError(f"--max-batch-size must be positive, got {max_batch_size}")
    if batch_timeout < 0:
        raise ValueError(f"--batch-timeout must be >= 0, got {batch_timeout}")
    if token is None and not is_loopback(host):
        raise ServeError(f"serving on {host} (not loopback) needs an access token (${TOKEN_ENV})")
    config = read_checkpoint_config(checkpoint_dir)
    ScoreRequest.limits = limits
    api = ScoreAPI(
        checkpoint_dir,
        max_batch_size=max_batch_size,
        batch_timeout=batch_timeout,
        dtype=dtype,
        model_name=model_name(config),
        checkpoint_sha256=directory_sha256(checkpoint_dir),
        token=token,
    )
    middlewares: list[Any] = [(RequestBytesLimit, {"max_bytes": limits.max_request_bytes})]
    if token is None:  # loopback without a token: a web page must not reach it through a rebound DNS name
        middlewares.append((TrustedHostMiddleware, {"allowed_hosts": list(LOOPBACK_NAMES)}))
    server = litserve.LitServer(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=workers_per_device,
        timeout=request_timeout,
        middlewares=middlewares,
        model_metadata={
            "model": api.model_name,
            "checkpoint_sha256": api.checkpoint_sha256,
            "max_batch_size": max_batch_size,
            "batch_timeout": batch_timeout,
            **asdict(limits),
        },
    )
    server.app.add_exception_handler(RequestValidationError, validation_error)
    return server


def serve(
    checkpoint_dir: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    require_token: bool = False,
    environ: Mapping[str, str] | None = None,
    log_level: str = "warning",
    **settings: Any,
) -> None:
    """Serve `checkpoint_dir` until interrupted (`build_server` for the settings)."""
    host = "127.0.0.1" if host == "localhost" else host
    token = access_token(host, os.environ if environ is None else environ, require=require_token)
    server = build_server(checkpoint_dir, host=host, token=token, **settings)
    metadata = server.model_metadata
    shown_host = f"[{host}]" if ":" in host else host
    print(
        f"serving {checkpoint_dir}: {metadata['model']}, sha256 {metadata['checkpoint_sha256'][:16]}...\n"
        f"POST http://{shown_host}:{port}{SCORE_PATH}  GET /health  (Ctrl-C stops)"
        + (f"\naccess token required: the value of ${TOKEN_ENV}" if token is not None else ""),
        flush=True,
    )
    server.run(host=host, port=port, log_level=log_level, generate_client_file=False, num_api_servers=1)


def parse_devices(value: str) -> int | str:
    return value if value == "auto" else int(value)


def serve_command(argv: Sequence[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m reward_model serve",
        description="Serve a reward checkpoint over HTTP: POST /score, GET /health (reward_model/serve.py).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a reward checkpoint dir (e.g. runs/reward/tiny/export)")
    parser.add_argument("--host", default="127.0.0.1", help=f"listen address; any but loopback needs ${TOKEN_ENV}")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", action="store_true", help=f"require the access token (${TOKEN_ENV}) on loopback too")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--devices", type=parse_devices, default="auto", help="number of devices, or auto")
    parser.add_argument("--workers-per-device", type=int, default=1, help="model copies per device")
    parser.add_argument("--max-batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="seconds a batch waits for more requests")
    parser.add_argument("--dtype", default=None, help="backbone dtype: float32, bfloat16, float16 (default: as saved)")
    defaults = ServeLimits()
    parser.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes)
    parser.add_argument("--max-images-per-request", type=int, default=defaults.max_images)
    parser.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels)
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds a request may wait (then 504)")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    arguments = parser.parse_args(argv)
    try:
        limits = ServeLimits(arguments.max_request_bytes, arguments.max_images_per_request, arguments.max_image_pixels)
        serve(
            arguments.checkpoint,
            host=arguments.host,
            port=arguments.port,
            require_token=arguments.token,
            log_level=arguments.log_level,
            accelerator=arguments.accelerator,
            devices=arguments.devices,
            workers_per_device=arguments.workers_per_device,
            max_batch_size=arguments.max_batch_size,
            batch_timeout=arguments.batch_timeout,
            limits=limits,
            dtype=arguments.dtype,
            request_timeout=arguments.request_timeout,
        )
    except (ServeError, ValueError, FileNotFoundError) as error:
        parser.exit(2, f"python -m reward_model serve: error: {error}\n")
