"""Small utilities shared by the stages: atomic file writes, stable hashing and seeding."""

from shared.io import atomic_write_bytes, atomic_write_json, atomic_write_text, stable_seed

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_text", "stable_seed"]
