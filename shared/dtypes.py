"""The floating-point dtypes a config may name, by name: one table for every stage (torch is imported on first use,
so that importing `shared` stays light)."""

from __future__ import annotations

from typing import Any

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def check_dtype_name(name: str, what: str = "dtype") -> str:
    """`name` if it is one of DTYPE_NAMES; else one ValueError naming `what` and the choices."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"{what} must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")
    return name


def torch_dtype(name: str, what: str = "dtype") -> Any:
    """The torch dtype of a name of DTYPE_NAMES ("bfloat16" -> torch.bfloat16)."""
    import torch

    return getattr(torch, check_dtype_name(name, what))
