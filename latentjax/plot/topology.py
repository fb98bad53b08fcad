"""Persistence diagram and barcode plots (matplotlib). Both return the Figure and never call
`show()`; pass `ax` to draw into an existing Axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_barcode", "plot_diagram"]


def _check_diagrams(diagrams: Any) -> list[np.ndarray]:
    if isinstance(diagrams, np.ndarray) or not hasattr(diagrams, "__len__") or not diagrams:
        raise ValueError("`diagrams` must be a non-empty list of [bars, 2] arrays, one per dim")
    arrays = [np.asarray(diagram, dtype=float).reshape(-1, 2) for diagram in diagrams]
    return arrays


def _infinity_level(diagrams: list[np.ndarray]) -> float:
    """Where bars that never die are drawn: 10% above the largest finite value."""
    finite = np.concatenate([d[np.isfinite(d)] for d in diagrams] + [np.zeros(1)])
    return 1.1 * float(finite.max()) if finite.max() > 0 else 1.0


def _axes(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        figure, ax = plt.subplots(figsize=(4, 4))
        return figure, ax
    return ax.figure, ax


def plot_diagram(diagrams: Any, *, ax=None, title: str = "Persistence diagram"):
    """Scatter of (birth, death) per homology dimension; infinite deaths drawn on a dashed
    line labelled ∞. `diagrams` as returned by `latentjax.geometry.persistence`.

    Returns:
      the matplotlib Figure.
    """
    diagrams = _check_diagrams(diagrams)
    figure, ax = _axes(ax)
    infinity = _infinity_level(diagrams)
    for dim, diagram in enumerate(diagrams):
        deaths = np.where(np.isinf(diagram[:, 1]), infinity, diagram[:, 1])
        ax.scatter(diagram[:, 0], deaths, s=12, label=f"H{dim}")
    ax.plot([0, infinity], [0, infinity], color="gray", linewidth=0.8)
    ax.axhline(infinity, color="gray", linestyle="--", linewidth=0.8)
    ax.text(0, infinity, "∞", va="bottom")
    ax.set(xlabel="birth", ylabel="death", title=title)
    ax.legend(loc="lower right")
    return figure


def plot_barcode(diagrams: Any, *, ax=None, title: str = "Barcode", max_bars: int = 50):
    """Horizontal bars from birth to death, grouped by homology dimension, longest first
    (at most `max_bars` per dimension); infinite bars end in an arrow.

    Returns:
      the matplotlib Figure.
    """
    diagrams = _check_diagrams(diagrams)
    if max_bars < 1:
        raise ValueError(f"`max_bars` must be positive, got {max_bars}")
    figure, ax = _axes(ax)
    infinity = _infinity_level(diagrams)
    row = 0
    for dim, diagram in enumerate(diagrams):
        lifetimes = diagram[:, 1] - diagram[:, 0]
        bars = diagram[np.argsort(-lifetimes, kind="stable")[:max_bars]]
        color = f"C{dim}"
        for birth, death in bars:
            end = infinity if np.isinf(death) else death
            ax.plot([birth, end], [row, row], color=color, linewidth=2)
            if np.isinf(death):
                ax.annotate(
                    "",
                    (infinity * 1.04, row),
                    (infinity, row),
                    arrowprops={"arrowstyle": "->", "color": color},
                )
            row += 1
        ax.text(0, row - 0.5, f"H{dim}", va="top", color=color)
        row += 1
    ax.set(xlabel="filtration scale", yticks=[], title=title)
    return figure
