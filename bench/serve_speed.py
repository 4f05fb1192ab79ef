"""Reward-server speed on this machine: images/s of the in-process `SpatialScorer` (batched) against the same
checkpoint behind `python -m reward_model serve` with 1 and 8 concurrent clients, on loopback.

Run with `make bench` (or `python bench/serve_speed.py --help`). The checkpoint is `runs/reward/tiny/export` when it
exists, else a random-weight tiny one exported to a temporary directory (the speed does not depend on the weights).
The items are SpatialWorld renders at 128 px with prompts describing them, as the RL critic sees them. Each client
loops over its requests (`--images-per-request` items each, PNG, prepared before the clock starts, one keep-alive
connection per client) until the setting's `--images` are scored; the server forms forward passes of at most
`--max-batch-size` images across clients. Prints images/s, request latency p50/p99, the forward-pass sizes each
request was scored in (from the responses' `batch_sizes`, counted once per request), and the ratio of 8 clients to
in-process batched against the target (>= 0.8). Server and in-process runs use the same torch thread count
(OMP_NUM_THREADS, set it to 1 on a shared machine). Timings come from one run each, after a warm-up: rough numbers.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from data_synthesis import WorldConfig, describe, render, sample_scene
from reward_model.export import export_checkpoint
from reward_model.recipes import build_tiny_spatialscore
from reward_model.scorer import SpatialScorer

TARGET = 0.8  # 8 concurrent clients / in-process batched


def checkpoint_dir(requested: Path, scratch: Path) -> Path:
    if (requested / "config.json").is_file():
        return requested
    torch.manual_seed(0)
    return export_checkpoint(build_tiny_spatialscore(), scratch / "export")


def spatialworld_items(count: int, resolution: int = 128) -> tuple[list[str], list]:
    prompts, images = [], []
    for seed in range(count):
        sampled = sample_scene(random.Random(seed), WorldConfig())
        prompts.append(describe(sampled.scene, sampled.planned, seed))
        images.append(render(sampled.scene, resolution))
    return prompts, images


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode()


def start_server(checkpoint: Path, port: int, max_batch_size: int, batch_timeout: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "reward_model", "serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    command += ["--max-batch-size", str(max_batch_size), "--batch-timeout", str(batch_timeout)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            pass
        time.sleep(0.25)
    stop_server(process)
    raise RuntimeError("the server was not ready in 180 s")


def stop_server(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_clients(port: int, bodies: list[bytes], clients: int, requests_per_client: int) -> dict:
    """`clients` threads, each sending `requests_per_client` requests (cycling through `bodies`) on one keep-alive
    connection -> wall seconds, per-request latencies, forward-pass sizes per request."""
    latencies: list[float] = []
    passes: collections.Counter = collections.Counter()
    lock, barrier = threading.Lock(), threading.Barrier(clients + 1)
    errors: list[str] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        barrier.wait()
        for number in range(requests_per_client):
            body = bodies[(index * requests_per_client + number) % len(bodies)]
            started = time.perf_counter()
            connection.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            elapsed = time.perf_counter() - started
            with lock:
                if response.status != 200:
                    errors.append(f"HTTP {response.status}: {answer}")
                    return
                latencies.append(elapsed)
                passes.update(answer["batch_sizes"])
        connection.close()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"the server answered an error: {errors[0]}")
    return {"seconds": wall, "latencies": latencies, "passes": passes}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/reward/tiny/export"))
    parser.add_argument("--images", type=int, default=768, help="images scored per setting")
    parser.add_argument("--images-per-request", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=16, help="images per forward pass, both sides")
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--distinct-items", type=int, default=64, help="SpatialWorld renders cycled through")
    arguments = parser.parse_args()
    per_request = arguments.images_per_request

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = checkpoint_dir(arguments.checkpoint, Path(scratch))
        source = "runs/reward/tiny/export" if checkpoint == arguments.checkpoint else "random-weight tiny"
        print(f"checkpoint: {checkpoint} ({source}); torch threads {torch.get_num_threads()}")
        prompts, images = spatialworld_items(arguments.distinct_items)

        scorer = SpatialScorer.from_pretrained(checkpoint, batch_size=arguments.max_batch_size)
        repeats = -(-arguments.images // len(prompts))
        all_prompts, all_images = (prompts * repeats)[: arguments.images], (images * repeats)[: arguments.images]
        scorer.score(prompts=prompts, images=images)  # warm-up
        started = time.perf_counter()
        scorer.score(prompts=all_prompts, images=all_images)
        in_process = arguments.images / (time.perf_counter() - started)
        print(f"in-process batched (passes of {arguments.max_batch_size}): {in_process:7.1f} images/s")

        encoded = [png_base64(image) for image in images]
        starts = range(0, len(prompts) - per_request + 1, per_request)
        chunks = [slice(start, start + per_request) for start in starts]
        bodies = [json.dumps({"prompts": prompts[chunk], "images": encoded[chunk]}).encode() for chunk in chunks]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = start_server(checkpoint, port, arguments.max_batch_size, arguments.batch_timeout)
        results = {}
        try:
            run_clients(port, bodies, 2, 4)  # warm-up
            for clients in (1, 8):
                requests_per_client = max(1, arguments.images // (clients * per_request))
                run = run_clients(port, bodies, clients, requests_per_client)
                rate = clients * requests_per_client * per_request / run["seconds"]
                results[clients] = rate
                latency = run["latencies"]
                sizes = ", ".join(f"{size}: {count}" for size, count in sorted(run["passes"].items(), reverse=True))
                print(
                    f"server, {clients} client{'s' if clients > 1 else ' '} x {requests_per_client} requests of "
                    f"{per_request}: {rate:7.1f} images/s ({rate / in_process:.2f}x in-process), latency p50 "
                    f"{1000 * statistics.median(latency):.0f} ms, p99 {1000 * percentile(latency, 0.99):.0f} ms; "
                    f"forward-pass sizes (size: requests) {sizes}"
                )
        finally:
            stop_server(server)
    ratio = results[8] / in_process
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"8 concurrent clients / in-process batched: {ratio:.2f} (target >= {TARGET}: {verdict})")


if __name__ == "__main__":
    main()
