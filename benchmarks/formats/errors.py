"""Errors of the format loaders: a missing official file (one line naming it and where the official one lives) and
a file that exists but does not follow the official format."""

from __future__ import annotations

from pathlib import Path


class MissingBenchmarkFile(FileNotFoundError):
    """An official benchmark file or directory is not where the loader was told to look."""


class BenchmarkFormatError(ValueError):
    """A benchmark file that exists but cannot be read in its official format (missing columns, bad JSON, ...)."""


def require_path(path: str | Path, expected: str, repo: str, official_path: str, *, directory: bool = False) -> Path:
    """`path` as a Path if it exists (as a directory when `directory`), else raise MissingBenchmarkFile naming the
    expected file (`expected`) and where the official one lives (`official_path` in the repository at URL `repo`)."""
    path = Path(path)
    found = path.is_dir() if directory else path.is_file()
    if not found:
        kind = "directory" if directory else "file"
        raise MissingBenchmarkFile(
            f"{path}: no such {kind}; expected {expected}; the official one is {official_path} in {repo}"
        )
    return path
