"""The inferred communication graph between regions, with credible intervals and delays."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

__all__ = ["communication_graph"]


def communication_graph(posterior, *, region_names=None, show_all: bool = False) -> Figure:
    """Regions on a circle and an arrow per inferred edge source -> target.

    Each arrow's width follows the posterior mean strength; its label gives the mean, the
    credible interval `[lower, upper]` and the most probable delay in bins.

    Args:
      posterior: a Posterior with extras `coupling_mean`, `coupling_lower`, `coupling_upper`,
        `edges`, `delays` (`[R, R]`, `[s, r]` = source s -> target r), as from
        `lj.multiregion.coupled_lds`.
      region_names: labels of the R regions (default "R0", "R1", ...).
      show_all: also draw the edges not inferred (faint).

    Returns:
      The matplotlib Figure (never shown).
    """
    extras = posterior.extras
    needed = ("coupling_mean", "coupling_lower", "coupling_upper", "edges", "delays")
    missing = [name for name in needed if name not in extras]
    if missing:
        raise ValueError(f"communication_graph: `posterior` lacks extras {missing}")
    mean = np.asarray(extras["coupling_mean"])
    num_regions = mean.shape[0]
    names = [f"R{r}" for r in range(num_regions)] if region_names is None else list(region_names)
    if len(names) != num_regions:
        raise ValueError(
            f"communication_graph: `region_names` must name {num_regions} regions, got {names}"
        )
    angles = np.pi / 2 - 2 * np.pi * np.arange(num_regions) / num_regions
    points = np.c_[np.cos(angles), np.sin(angles)]
    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    scale = max(float(mean.max()), 1e-12)
    for source in range(num_regions):
        for target in range(num_regions):
            if source == target:
                continue
            inferred = bool(extras["edges"][source, target])
            if not inferred and not show_all:
                continue
            start, end = points[source], points[target]
            arrow = FancyArrowPatch(
                start,
                end,
                connectionstyle="arc3,rad=0.15",
                arrowstyle="-|>",
                mutation_scale=15,
                shrinkA=22,
                shrinkB=22,
                linewidth=0.5 + 4 * mean[source, target] / scale,
                color="C3" if inferred else "0.8",
            )
            axes.add_patch(arrow)
            middle = (start + end) / 2 + 0.15 * np.array([end - start])[0] @ [[0, -1], [1, 0]]
            lower = extras["coupling_lower"][source, target]
            upper = extras["coupling_upper"][source, target]
            digits = _decimals(upper - lower)
            label = (
                f"{mean[source, target]:.{digits}f} [{lower:.{digits}f}, {upper:.{digits}f}]\n"
                f"delay {int(extras['delays'][source, target])}"
            )
            axes.text(*middle, label, ha="center", va="center", fontsize=8)
    for name, point in zip(names, points, strict=True):
        axes.text(
            *point,
            name,
            ha="center",
            va="center",
            fontsize=12,
            bbox=dict(boxstyle="circle", facecolor="white"),
        )
    axes.set_xlim(-1.5, 1.5)
    axes.set_ylim(-1.5, 1.5)
    axes.set_aspect("equal")
    axes.axis("off")
    axes.set_title("communication graph\nstrength: mean [credible interval], delay (bins)")
    return figure


def _decimals(width: float) -> int:
    """Decimals that show a credible interval of this width as two different numbers (2 to 4;
    a well-determined edge's interval is narrower than 0.01)."""
    if not np.isfinite(width) or width <= 0:
        return 2
    return int(np.clip(np.ceil(-np.log10(width)), 2, 4))
