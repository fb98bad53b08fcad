"""Embedding plots (matplotlib): a 3-D embedding coloured by behaviour, and a consistency
matrix. Both return the Figure and never call `show()`; pass `ax` to draw into existing Axes
(a 3-D Axes for `embedding_3d`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["consistency_matrix", "embedding_3d"]


def embedding_3d(
    embedding: Any,
    color: Any,
    *,
    ax=None,
    max_points: int = 5000,
    cmap: str = "hsv",
    title: str = "Embedding",
    seed: int = 0,
):
    """Scatter of the first three embedding dimensions coloured by `color` (e.g. the head
    angle; "hsv" suits angles).

    Args:
      embedding: `[points, K >= 3]` or `[trials, time, K]`.
      color: one value per point (`[points]` or `[trials, time]`).
      max_points: points drawn (a random subset, from `seed`).
    """
    import mpl_toolkits.mplot3d  # noqa: F401  (registers the 3-D projection)

    points = np.asarray(embedding, dtype=float)
    points = points.reshape(-1, points.shape[-1])
    values = np.asarray(color, dtype=float).reshape(-1)
    if points.shape[-1] < 3:
        raise ValueError(f"`embedding` needs at least 3 dimensions, got {points.shape[-1]}")
    if values.shape[0] != points.shape[0]:
        raise ValueError(
            f"`color` must have one value per point ({points.shape[0]}), got {values.shape[0]}"
        )
    if max_points < points.shape[0]:
        keep = np.random.default_rng(seed).choice(points.shape[0], max_points, replace=False)
        points, values = points[keep], values[keep]
    if ax is None:
        ax = Figure(figsize=(5, 5), layout="constrained").add_subplot(projection="3d")
    figure = ax.figure
    scatter = ax.scatter(points[:, 0], points[:, 1], points[:, 2], c=values, cmap=cmap, s=2)
    figure.colorbar(scatter, ax=ax, shrink=0.6)
    ax.set(title=title, xlabel="z1", ylabel="z2", zlabel="z3")
    return figure


def consistency_matrix(matrix: Any, *, labels: Any = None, ax=None, title: str = "Consistency"):
    """Heat map of a consistency matrix `[R, R]` (`lj.metrics.consistency(...).matrix`: R² of
    predicting column from row), values written in the cells; NaN diagonal left blank."""
    values = np.asarray(matrix, dtype=float)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"`matrix` must be square [R, R], got shape {values.shape}")
    count = values.shape[0]
    labels = [str(i) for i in range(count)] if labels is None else [str(x) for x in labels]
    if len(labels) != count:
        raise ValueError(f"`labels` must have {count} entries, got {len(labels)}")
    if ax is None:
        size = (1.5 + 0.8 * count, 1.0 + 0.8 * count)
        ax = Figure(figsize=size, layout="constrained").add_subplot()
    figure = ax.figure
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(count):
        for j in range(count):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color="w")
    ax.set_xticks(range(count), labels)
    ax.set_yticks(range(count), labels)
    ax.set(xlabel="predicted embedding", ylabel="from embedding", title=title)
    figure.colorbar(image, ax=ax, shrink=0.8)
    return figure
