"""Shared fixtures: small SpatialWorld datasets built once per test session (real builds, small sizes)."""

from __future__ import annotations

import pytest
import torch

from data_synthesis.build import BuildConfig, build


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """60 pairs at 128 px, built with 2 workers."""
    out = tmp_path_factory.mktemp("datasets") / "small"
    build(
        BuildConfig(num_pairs=60, seed=3, resolution=128, split_fractions=(0.6, 0.2, 0.2)),
        out,
        workers=2,
        progress=False,
    )
    return out


@pytest.fixture
def one_thread():
    """Tiny model steps gain nothing from intra-op threads, and with another process busy on the CPU two threads
    spin-wait and make each step tens of times slower. Tests of the tiny models use this fixture."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def processor():
    """The offline SpatialWorld tokenizer + image processor of the tiny reward model."""
    from reward_model.tokenizer import build_spatialworld_processor

    return build_spatialworld_processor()
