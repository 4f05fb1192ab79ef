"""The reward server (`python -m reward_model serve`, on LitServe) and `RemoteSpatialScore`, on loopback with a
random-weight tiny checkpoint: the server's scores equal the in-process `SpatialScorer`, concurrent clients get their
own answers (a bad request in the same batch included), every bad input gets its 4xx and the server keeps serving,
the remote reward fails with one clear error when the server is down, and a 2-step GRPO run with the remote reward
makes the same LoRA update as with the in-process critic.

One server process serves the whole module (it starts in 10-25 s: LitServe spawns its worker, which imports torch and
loads the checkpoint); it requires a token, so the token path is the one exercised."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reward_model import RemoteRewardError, RemoteSpatialScore, SpatialScorer
from reward_model.export import export_checkpoint
from reward_model.recipes import build_tiny_spatialscore
from reward_model.serve import TOKEN_ENV, access_token, serve_command
from rl_policy.data import PromptDataModule
from rl_policy.policy import trainable_parameters
from rl_policy.reward import reward_and_std
from shared.io import directory_sha256
from tests.test_rl_configs import CONFIG_DIR, parse
from tests.test_rl_grpo_module import make_module
from tests.test_rl_grpo_module import trainer as grpo_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN = "test-token-not-secret"
MAX_BATCH = 4  # images per forward pass
MAX_IMAGES = 8  # per request
MAX_PIXELS = 128 * 128
MAX_BYTES = 300_000
PROMPTS = [
    "a red circle is left of a blue square.",
    "a green triangle is above a yellow circle.",
    "a small blue square is right of a large red triangle.",
    "a purple circle is below a green square.",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def png_image(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def encoded(image: Image.Image, image_format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return base64.b64encode(buffer.getvalue()).decode()


def post(url: str, body: dict | bytes, token: str | None = TOKEN) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    request = urllib.request.Request(url + "/score", data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-weight tiny SpatialScore, exported as a reward checkpoint dir."""
    torch.manual_seed(0)
    return export_checkpoint(build_tiny_spatialscore(), tmp_path_factory.mktemp("serve") / "export")


@pytest.fixture(scope="module")
def scorer(checkpoint) -> SpatialScorer:
    return SpatialScorer.from_pretrained(checkpoint, batch_size=MAX_BATCH)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """The server in its own process group (ended by SIGTERM to that group) -> its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    command = [sys.executable, "-m", "reward_model", "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    command += ["--token", "--max-batch-size", str(MAX_BATCH), "--batch-timeout", "0.05", "--accelerator", "cpu"]
    command += ["--max-images-per-request", str(MAX_IMAGES), "--max-image-pixels", str(MAX_PIXELS)]
    command += ["--max-request-bytes", str(MAX_BYTES)]
    env = os.environ | {TOKEN_ENV: TOKEN, "OMP_NUM_THREADS": "1"}
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    health = urllib.request.Request(url + "/health", headers={"Authorization": f"Bearer {TOKEN}"})
    deadline = time.monotonic() + 120
    try:
        while True:
            assert process.poll() is None, f"the server exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"the server was not ready in 120 s: {log.read_text()}"
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert TOKEN not in log.read_text()  # the token is never printed or logged


def test_scores_equal_the_in_process_scorer_and_a_long_request_is_split(server, checkpoint, scorer):
    images = [png_image(seed) for seed in range(6)]
    jpeg = encoded(png_image(6), "JPEG")
    images.append(Image.open(io.BytesIO(base64.b64decode(jpeg))))  # the server decodes the same JPEG bytes
    rgba = Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 80, 4), dtype=np.uint8), mode="RGBA")
    images.append(rgba)  # composited on white on both sides
    prompts = [PROMPTS[index % len(PROMPTS)] for index in range(len(images))]
    bodies = [encoded(image) for image in images[:6]] + [jpeg, encoded(rgba)]
    status, answer = post(server, {"prompts": prompts, "images": bodies})
    assert status == 200, answer
    mean, std = scorer.score(prompts=prompts, images=images)
    np.testing.assert_allclose(answer["mean"], mean.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(answer["std"], std.numpy(), atol=1e-5, rtol=0)
    assert answer["checkpoint_sha256"] == directory_sha256(checkpoint) and answer["model"].startswith("SpatialScore")
    assert answer["batch_sizes"] == [MAX_BATCH, MAX_BATCH]  # 8 images: two forward passes of 4
    status, one = post(server, {"prompt": prompts[0], "image": bodies[0]})
    assert status == 200 and abs(one["mean"][0] - float(mean[0])) < 1e-5 and one["batch_sizes"] == [1]


def test_concurrent_clients_get_their_own_answers(server, scorer):
    """8 clients at once, each with its own prompts and images (1-3 items), one of them sending a bad image: the
    good ones get their own scores, whichever batch they shared."""
    requests = []
    for client in range(8):
        count = 1 + client % 3
        seeds = [100 + 10 * client + item for item in range(count)]
        prompts = [PROMPTS[(client + item) % len(PROMPTS)] for item in range(count)]
        requests.append((prompts, [png_image(seed) for seed in seeds]))
    answers: dict[int, tuple[int, dict]] = {}
    barrier = threading.Barrier(9)

    def client(index: int) -> None:
        prompts, images = requests[index]
        body = {"prompts": prompts, "images": [encoded(image) for image in images]}
        barrier.wait()
        for _ in range(3):
            answers[index] = post(server, body)

    def bad_client() -> None:
        barrier.wait()
        answers[-1] = post(server, {"prompts": PROMPTS[:1], "images": ["bm90IGFuIGltYWdl"]})

    threads = [threading.Thread(target=client, args=(index,)) for index in range(8)]
    threads.append(threading.Thread(target=bad_client))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers[-1][0] == 422
    shared = False
    for index, (prompts, images) in enumerate(requests):
        status, answer = answers[index]
        assert status == 200, answer
        expected, _ = scorer.score(prompts=prompts, images=images)
        np.testing.assert_allclose(answer["mean"], expected.numpy(), atol=1e-5, rtol=0)
        shared |= sum(answer["batch_sizes"]) > len(prompts)
    assert shared  # at least one batch held the images of several clients


def test_bad_inputs_get_their_4xx_and_the_server_keeps_serving(server):
    good = encoded(png_image(0))
    truncated = base64.b64encode(base64.b64decode(good)[:200]).decode()
    gif = encoded(png_image(1), "GIF")
    large = encoded(png_image(2, size=129))  # 129 x 129 > 128 x 128 pixels
    cases = [
        ({"prompts": PROMPTS[:1]}, 422, "missing field `images`"),
        ({}, 422, "missing fields"),
        ({"prompt": PROMPTS[0], "images": [good]}, 422, "not both forms"),
        ({"prompts": PROMPTS[0], "images": good}, 422, "prompts: Input should be a valid list"),
        ({"prompts": [1], "images": [good]}, 422, "prompts[0]: Input should be a valid string"),
        ({"prompts": PROMPTS[:1], "images": [3]}, 422, "images[0]: Input should be a valid string"),
        ({"prompts": PROMPTS[:2], "images": [good]}, 422, "got 2 prompts but 1 images"),
        ({"prompts": PROMPTS[:1], "images": [good], "seed": 1}, 422, "seed: Extra inputs are not permitted"),
        ({"prompts": [], "images": []}, 422, "empty"),
        ({"prompts": PROMPTS[:1], "images": ["not base64!"]}, 422, "images[0]: not valid base64"),
        ({"prompt": PROMPTS[0], "image": base64.b64encode(b"plain text").decode()}, 422, "image: not a PNG or JPEG"),
        ({"prompts": PROMPTS[:1], "images": [gif]}, 422, "images[0]: not a PNG or JPEG"),
        ({"prompts": PROMPTS[:1], "images": [truncated]}, 422, "images[0]: not a readable PNG or JPEG"),
        ({"prompts": PROMPTS[:1], "images": [large]}, 422, f"the limit is {MAX_PIXELS} (--max-image-pixels)"),
        ({"prompts": PROMPTS[:1] * 9, "images": [good] * 9}, 422, "the limit is 8 (--max-images-per-request)"),
        (b'{"prompts": ["a"], "images": [', 422, "not valid JSON"),
        (b"[1, 2]", 422, "valid dictionary"),
        (json.dumps({"prompt": "x" * MAX_BYTES, "image": good}).encode(), 413, f"limit is {MAX_BYTES}"),
    ]
    for body, status, fragment in cases:
        answer_status, answer = post(server, body)
        assert (answer_status, fragment in answer.get("detail", "")) == (status, True), (body, answer)
    for token in (None, "wrong-token"):
        answer_status, answer = post(server, {"prompt": PROMPTS[0], "image": good}, token=token)
        assert answer_status == 401 and TOKEN_ENV in answer["detail"]
    status, answer = post(server, {"prompt": PROMPTS[0], "image": good})
    assert status == 200 and len(answer["mean"]) == 1


def test_remote_reward_equals_the_critic_and_fails_clearly(server, scorer, checkpoint):
    torch.manual_seed(1)
    images = list(torch.rand(5, 3, 32, 32))  # what GRPOModule hands a reward: floats in [0, 1]
    prompts = [PROMPTS[index % len(PROMPTS)] for index in range(5)]
    remote = RemoteSpatialScore(server, token=TOKEN, images_per_request=2)  # 3 requests
    rewards = remote(prompts=prompts, images=images, metadata=None)
    torch.testing.assert_close(rewards, scorer(prompts=prompts, images=images, metadata=None), atol=1e-5, rtol=0)
    # the Gaussian reward GRPO's uncertainty gate reads (rl_policy.reward.reward_and_std): mean and std, both sides
    remote_mean, remote_std = reward_and_std(remote, prompts=prompts, images=images, metadata=None)
    local_mean, local_std = reward_and_std(scorer, prompts=prompts, images=images, metadata=None)
    torch.testing.assert_close((remote_mean, remote_std), (local_mean, local_std), atol=1e-5, rtol=0)
    torch.testing.assert_close(local_mean, scorer(prompts=prompts, images=images, metadata=None), atol=0, rtol=0)
    assert local_std.shape == (5,) and bool((local_std > 0).all())
    assert remote.checkpoint_sha256 == directory_sha256(checkpoint) and TOKEN not in repr(remote)
    assert remote(prompts=[], images=[], metadata=None).shape == (0,)

    with pytest.raises(RemoteRewardError, match="HTTP 401"):  # a 4xx is not retried
        RemoteSpatialScore(server, token="wrong-token", retries=5, retry_wait=10)(prompts=prompts, images=images)
    with pytest.raises(RemoteRewardError, match="serves checkpoint sha256"):
        RemoteSpatialScore(server, token=TOKEN, checkpoint_sha256="0" * 64)(prompts=prompts, images=images)
    down = RemoteSpatialScore(f"http://127.0.0.1:{free_port()}", timeout=2, retries=2, retry_wait=0.01)
    started = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r"did not answer after 3 attempts .*reward_model serve"):
        down(prompts=prompts, images=images, metadata=None)
    assert time.monotonic() - started < 10


def test_serving_off_loopback_needs_a_token(checkpoint, monkeypatch, capsys):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        serve_command(["--checkpoint", str(checkpoint), "--host", "0.0.0.0"])
    assert exit_info.value.code == 2 and TOKEN_ENV in capsys.readouterr().err
    assert access_token("127.0.0.1", {}) is None and access_token("0.0.0.0", {TOKEN_ENV: "t"}) == "t"
    assert access_token("127.0.0.1", {TOKEN_ENV: "t"}) == "t"  # set: required on loopback too


def grpo_lora(reward, dataset, tmp_path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """LoRA weights before and after 2 GRPO steps of the tiny generator with `reward` (test_rl_grpo_module's module
    and trainer, so this follows that file's settings)."""
    module = make_module(reward=reward)
    before = {name: value.detach().clone() for name, value in trainable_parameters(module.transformer).items()}
    grpo_trainer(tmp_path, 2, enable_checkpointing=False).fit(
        module, PromptDataModule(dataset, prompts_per_step=2, num_eval_prompts=2)
    )
    return before, {name: value.detach().clone() for name, value in trainable_parameters(module.transformer).items()}


def test_grpo_with_the_remote_reward_makes_the_same_lora_update(server, scorer, small_dataset, tmp_path):
    """The in-process critic scores in passes of the server's size (`scorer`): passes of another size pad
    differently and move the rewards by ~4e-8, which AdamW's first steps amplify to ~1e-5 in the LoRA weights."""
    initial, in_process = grpo_lora(scorer, small_dataset, tmp_path / "critic")
    _, remote = grpo_lora(RemoteSpatialScore(server, token=TOKEN), small_dataset, tmp_path / "remote")
    assert any(not torch.equal(in_process[name], initial[name]) for name in initial)  # the critic did train it
    for name, value in in_process.items():
        torch.testing.assert_close(remote[name], value, atol=1e-6, rtol=0, msg=name)


def test_remote_reward_config_overlays_tiny():
    config = parse(CONFIG_DIR / "tiny.yaml", CONFIG_DIR / "reward_remote.yaml")
    reward = config.model.reward
    assert reward.class_path == "reward_model.RemoteSpatialScore" and "checkpoint_dir" not in reward.init_args
    assert RemoteSpatialScore(**reward.init_args).score_url == "http://127.0.0.1:8000/score"
    assert config.trainer.default_root_dir == "runs/rl/tiny-remote"
