"""Launching a test file once per rank as a separate process with an external launcher's environment (torchrun /
SLURM style: MASTER_ADDR, MASTER_PORT, WORLD_SIZE, NODE_RANK, LOCAL_RANK, RANK), so nothing is pickled and pytest
is not re-run by Lightning's own launcher. Each rank writes `summary_<rank>.json` into the output dir, and its
trainable weights before and after training as `initial_<rank>.safetensors` and `final_<rank>.safetensors`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_ranks(
    script: str | Path, arguments: list[str], out_dir: Path, world_size: int, timeout: float
) -> list[dict]:
    """Run `python script *arguments` as `world_size` ranks; -> each rank's summary. Fails the test on a crash or a
    hang (`timeout` seconds), with the failing rank's output."""
    environment = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world_size),
        "NODE_RANK": "0",
        "OMP_NUM_THREADS": "1",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), *arguments],
            env={**environment, "LOCAL_RANK": str(rank), "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world_size)
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=timeout)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output[-3000:]}"
    return [json.loads((out_dir / f"summary_{rank}.json").read_text()) for rank in range(world_size)]


def weights_in_step(out_dir: Path, world_size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Asserts that every rank started from and ended with the same trainable weights; -> rank 0's (initial, final)."""
    initial = [load_file(str(out_dir / f"initial_{rank}.safetensors")) for rank in range(world_size)]
    final = [load_file(str(out_dir / f"final_{rank}.safetensors")) for rank in range(world_size)]
    assert all(weights.keys() == initial[0].keys() for weights in initial + final)
    for name in final[0]:
        for rank in range(1, world_size):
            assert torch.equal(initial[0][name], initial[rank][name]), name
            assert torch.equal(final[0][name], final[rank][name]), f"{name} differs between the ranks"
    return initial[0], final[0]
