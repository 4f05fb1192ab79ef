"""The learned absolute position embedding that stage A adds to the tiny backbone's vision patches, and its file.

The tiny Qwen2.5-VL's 2-D rotary frequencies carry little absolute position over a 5 x 5 image-token grid; measured
in the first stage A (grounded captions): positions were learnt only once this embedding was there. It starts from
MAE's 2-D sine-cosine table, so every patch is told apart from step 0, and is trained from there. It is attached by
forward hooks, so the backbone's state dict keys stay those of Qwen2.5-VL; stage A saves it beside the backbone
(`POSITION_EMBEDDING_FILE`), and stage B's builder, the export and the scorer put it back
(`attach_pretrained_position_embedding`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

POSITION_EMBEDDING_FILE = "patch_position_embedding.safetensors"


def patch_grid_positions(grid_thw: torch.Tensor, merge_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column (in patches) of every patch, in the order the Qwen2-VL image processor emits patches (frames,
    then merge blocks in raster order, then the merge_size x merge_size patches of a block).
    grid_thw: [N, 3] -> rows [P], cols [P], P = sum of t * h * w."""
    rows, cols = [], []
    for frames, height, width in grid_thw.tolist():
        grid_rows, grid_cols = torch.meshgrid(
            torch.arange(height, device=grid_thw.device), torch.arange(width, device=grid_thw.device), indexing="ij"
        )  # [h, w] each
        blocks = (height // merge_size, merge_size, width // merge_size, merge_size)
        rows.append(grid_rows.reshape(blocks).transpose(1, 2).flatten().repeat(frames))
        cols.append(grid_cols.reshape(blocks).transpose(1, 2).flatten().repeat(frames))
    return torch.cat(rows), torch.cat(cols)


def sincos_table(grid_size: int, dim: int) -> torch.Tensor:
    """MAE's 2-D sine-cosine table: half the channels encode the row, half the column.  -> [grid_size^2, dim]"""
    assert dim % 4 == 0, dim
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # [dim / 4]
    steps = torch.arange(grid_size, dtype=torch.float64)
    angles = steps[:, None] * frequencies[None]  # [grid, dim / 4]
    encoding = torch.cat([angles.sin(), angles.cos()], dim=1)  # [grid, dim / 2]
    rows = encoding[:, None, :].expand(grid_size, grid_size, dim // 2)
    cols = encoding[None, :, :].expand(grid_size, grid_size, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, dim).float()


class PatchPositionEmbedding(nn.Module):
    """A learned absolute position embedding added to the vision tower's patch embeddings.

    `weight` [grid_size^2, hidden] holds one row per (row, col) patch of images up to grid_size x grid_size patches.
    `attach` registers it as `visual.patch_position_embedding` (so it moves, trains, freezes and is saved with the
    vision tower) and adds two forward hooks: one on the tower, reading `grid_thw`, one on `patch_embed`, adding the
    rows of each patch to its embedding.
    """

    def __init__(self, grid_size: int, hidden_size: int, merge_size: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.grid_size, self.merge_size = grid_size, merge_size
        self.weight = nn.Parameter(init_scale * sincos_table(grid_size, hidden_size))  # [grid^2, hidden]
        self._grid_thw: torch.Tensor | None = None

    def forward(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """grid_thw: [N, 3] -> the embedding of every patch [P, hidden], in the processor's patch order."""
        if int(grid_thw[:, 1:].max()) > self.grid_size:
            raise ValueError(
                f"an image of {grid_thw[:, 1:].max().item()} patches per side exceeds the position embedding's "
                f"{self.grid_size}: resize images to at most {self.grid_size} patches per side"
            )
        rows, cols = patch_grid_positions(grid_thw, self.merge_size)  # [P], [P]
        return self.weight[rows * self.grid_size + cols]

    def attach(self, visual: nn.Module) -> None:
        """Put this embedding on a Qwen2.5-VL vision tower (`model.visual`); once per tower."""
        if hasattr(visual, "patch_position_embedding"):
            raise ValueError("this vision tower already has a patch position embedding")
        visual.add_module("patch_position_embedding", self)
        visual.register_forward_pre_hook(self._read_grid, with_kwargs=True)
        visual.patch_embed.register_forward_hook(self._add_positions)

    def _read_grid(self, visual: nn.Module, args: tuple, kwargs: dict) -> None:
        self._grid_thw = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]

    def _add_positions(self, patch_embed: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        assert self._grid_thw is not None, "the patch embedding ran outside the vision tower's forward"
        return output + self(self._grid_thw).to(output.dtype)  # [P, hidden]


def save_position_embedding(embedding: PatchPositionEmbedding, path: str | os.PathLike) -> None:
    """`embedding` in the stage-A file format (weight, with grid and merge sizes in the metadata), which
    `attach_pretrained_position_embedding` reads back."""
    save_file(
        {"weight": embedding.weight.detach().contiguous().cpu()},
        str(path),
        metadata={"grid_size": str(embedding.grid_size), "merge_size": str(embedding.merge_size)},
    )


def attach_pretrained_position_embedding(visual: nn.Module, directory: str | os.PathLike) -> bool:
    """Load `POSITION_EMBEDDING_FILE` from a stage-A directory onto a vision tower (`model.visual` of a
    `Qwen2_5_VLModel`, or `model.model.visual` with the LM head); False if the directory has none."""
    path = Path(directory) / POSITION_EMBEDDING_FILE
    if not path.is_file():
        return False
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "grid_size" not in metadata or "merge_size" not in metadata:
        raise ValueError(f"{path} lacks the grid_size / merge_size metadata of a patch position embedding")
    weight = load_file(str(path))["weight"]  # [grid^2, hidden]
    grid_size, merge_size = int(metadata["grid_size"]), int(metadata["merge_size"])
    if weight.shape != (grid_size * grid_size, visual.patch_embed.embed_dim):
        raise ValueError(
            f"{path} holds a {list(weight.shape)} embedding; the vision tower needs "
            f"[{grid_size * grid_size}, {visual.patch_embed.embed_dim}]"
        )
    embedding = PatchPositionEmbedding(grid_size, weight.shape[1], merge_size)
    embedding.weight.data.copy_(weight)
    embedding.to(device=visual.patch_embed.proj.weight.device, dtype=visual.patch_embed.proj.weight.dtype)
    embedding.attach(visual)
    return True
