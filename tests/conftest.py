"""Shared fixtures: small SpatialWorld datasets built once per test session (real builds, small sizes)."""

from __future__ import annotations

import pytest

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
