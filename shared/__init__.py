"""Small utilities shared by the stages: atomic file writes, stable hashing (of values and of checkpoint dirs) and
seeding (`shared.io`), and the cached client for OpenAI-compatible chat endpoints (`shared.chat`, imported on its own:
it loads the `openai` package)."""

from shared.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    canonical_sha256,
    directory_sha256,
    stable_seed,
)

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "canonical_sha256",
    "directory_sha256",
    "stable_seed",
]
