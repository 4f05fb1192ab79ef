"""Filled convex hulls of pixel masks (used by the detector to read occlusion and containment, and by the
sampler to keep depth relations readable from pixels)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, QhullError


def filled_hull(mask: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie in the convex hull of the mask's pixel centres (the mask itself if degenerate)."""
    rows, cols = np.nonzero(mask)
    points = np.stack([cols, rows], 1).astype(float)  # [N, 2] pixel centres as (x, y)
    try:
        vertices = points[ConvexHull(points).vertices]  # [V, 2], counter-clockwise
    except (QhullError, ValueError):
        return mask.copy()
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    grid_y, grid_x = np.mgrid[y0:y1, x0:x1]
    inside = np.ones(grid_x.shape, dtype=bool)
    edges = np.roll(vertices, -1, axis=0) - vertices  # [V, 2]
    for (vx, vy), (ex, ey) in zip(vertices, edges, strict=True):
        inside &= ex * (grid_y - vy) - ey * (grid_x - vx) >= -1e-9
    hull = np.zeros_like(mask)
    hull[y0:y1, x0:x1] = inside
    return hull | mask
