"""Figures of latent states: trajectories, and true against inferred latents."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["latent_trajectories", "true_vs_inferred"]


def latent_trajectories(latents, *, color_by=None, dims=(0, 1), max_trials=30) -> Figure:
    """Latent trajectories in 2-D or 3-D (`dims` of length 2 or 3).

    Args:
      latents: `[trials, time, latents]`.
      color_by: `[trials]` condition labels (one colour per condition) or None to colour each
        trajectory by time.
      dims: which latent dimensions to draw.
      max_trials: draw at most this many trials.
    """
    latents = np.asarray(latents)[:max_trials]
    if latents.ndim != 3:
        raise ValueError(
            f"latent_trajectories: `latents` must be [trials, time, latents], "
            f"got shape {latents.shape}"
        )
    if len(dims) not in (2, 3) or max(dims) >= latents.shape[2]:
        raise ValueError(
            f"latent_trajectories: `dims` must name 2 or 3 of the "
            f"{latents.shape[2]} latent dimensions, got {dims}"
        )
    three_d = len(dims) == 3
    figure = Figure(figsize=(5, 4.5), layout="constrained")
    axes = figure.add_subplot(projection="3d" if three_d else None)
    labels = None if color_by is None else np.asarray(color_by)[: len(latents)]
    codes = None if labels is None else np.unique(labels, return_inverse=True)[1]
    for index, trajectory in enumerate(latents):
        points = trajectory[:, list(dims)].T
        if codes is None:
            colour = [0.2, 0.3, 0.7, 0.5]
            axes.plot(*points, color=colour, linewidth=0.8)
            axes.scatter(*points[:, :1], color="black", s=6)
        else:
            axes.plot(*points, color=f"C{codes[index] % 10}", linewidth=0.8, alpha=0.8)
    axes.set_xlabel(f"latent {dims[0]}")
    axes.set_ylabel(f"latent {dims[1]}")
    if three_d:
        axes.set_zlabel(f"latent {dims[2]}")
    axes.set_title("latent trajectories" + (" (dots: start)" if codes is None else ""))
    return figure


def true_vs_inferred(true_latents, mapped_latents, *, dt=1.0, trials=(0, 1, 2), title=None):
    """True latents (black) against inferred latents mapped into the true frame (colour).

    Args:
      true_latents: `[trials, time, K]` ground truth.
      mapped_latents: `[trials, time, K]` inferred latents after the affine map of
        `lj.metrics.latent_r2(...).affine_map`.
      dt: seconds per bin.
      trials: which trials to draw (one column each).
    """
    true_latents = np.asarray(true_latents)
    mapped_latents = np.asarray(mapped_latents)
    if true_latents.shape != mapped_latents.shape:
        raise ValueError(
            f"true_vs_inferred: `true_latents` {true_latents.shape} and `mapped_latents` "
            f"{mapped_latents.shape} must have the same shape"
        )
    trials = [t for t in trials if t < len(true_latents)]
    num_dims = true_latents.shape[2]
    time = np.arange(true_latents.shape[1]) * dt
    figure = Figure(figsize=(3.2 * len(trials), 1.6 * num_dims + 0.6), layout="constrained")
    grid = figure.subplots(num_dims, len(trials), squeeze=False, sharex=True)
    for column, trial in enumerate(trials):
        for dim in range(num_dims):
            axes = grid[dim, column]
            axes.plot(time, true_latents[trial, :, dim], color="black", label="true")
            axes.plot(time, mapped_latents[trial, :, dim], color=f"C{dim}", label="inferred")
            if column == 0:
                axes.set_ylabel(f"latent {dim}")
            if dim == 0:
                axes.set_title(f"trial {trial}")
        grid[-1, column].set_xlabel("time (s)")
    grid[0, 0].legend(loc="upper right", fontsize="small")
    if title:
        figure.suptitle(title)
    return figure
