"""Figures of real-time decoding: decoded against true behaviour, and step latencies."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["decoded_behavior", "latency_histogram"]


def decoded_behavior(decoded, behavior, *, dt=1.0, labels=("x", "y"), title=None) -> Figure:
    """Decoded (colour) against true (black) behaviour over time, one panel per axis, and
    the 2-D trajectories they trace (the integral of a velocity).

    Args:
      decoded: `[time, dims]` decoded behaviour of one recording (e.g. hand velocity).
      behavior: `[time, dims]` the truth.
      dt: seconds per bin.
      labels: a name per axis.
      title: figure title.

    Examples:
      >>> import numpy as np
      >>> from latentjax.plot import decoded_behavior
      >>> figure = decoded_behavior(np.zeros((50, 2)), np.ones((50, 2)), dt=0.02)
      >>> len(figure.axes)
      3
    """
    decoded, behavior = np.asarray(decoded), np.asarray(behavior)
    if decoded.shape != behavior.shape or decoded.ndim != 2:
        raise ValueError(
            f"decoded_behavior: `decoded` {decoded.shape} and `behavior` {behavior.shape} "
            "must be the same [time, dims]"
        )
    num_dims = decoded.shape[1]
    time = np.arange(len(decoded)) * dt
    figure = Figure(figsize=(9, 1.8 * num_dims + 0.6), layout="constrained")
    grid = figure.add_gridspec(num_dims, 2, width_ratios=(2, 1))
    for dim in range(num_dims):
        axes = figure.add_subplot(grid[dim, 0])
        axes.plot(time, behavior[:, dim], color="black", label="true")
        axes.plot(time, decoded[:, dim], color=f"C{dim}", label="decoded")
        axes.set_ylabel(labels[dim] if dim < len(labels) else f"dim {dim}")
        if dim == 0:
            axes.legend(loc="upper right", fontsize="small")
        if dim == num_dims - 1:
            axes.set_xlabel("time (s)")
    trajectory = figure.add_subplot(grid[:, 1])
    if num_dims >= 2:
        trajectory.plot(*np.cumsum(behavior[:, :2] * dt, 0).T, color="black", label="true")
        trajectory.plot(*np.cumsum(decoded[:, :2] * dt, 0).T, color="C3", label="decoded")
        trajectory.set_title("integrated trajectory", fontsize="small")
        trajectory.set_aspect("equal", adjustable="datalim")
    if title:
        figure.suptitle(title)
    return figure


def latency_histogram(seconds, *, title="latency per bin") -> Figure:
    """Histogram of step latencies, with the median and 99th percentile marked.

    Args:
      seconds: `[steps]` wall time of each streaming step, in seconds.
      title: figure title.

    Examples:
      >>> import numpy as np
      >>> from latentjax.plot import latency_histogram
      >>> latency_histogram(np.full(100, 1e-4)).axes[0].get_xlabel()
      'milliseconds'
    """
    milliseconds = np.asarray(seconds, dtype=float).ravel() * 1000
    if milliseconds.size == 0:
        raise ValueError("latency_histogram: `seconds` is empty")
    figure = Figure(figsize=(5, 3), layout="constrained")
    axes = figure.add_subplot()
    upper = np.percentile(milliseconds, 99.9)
    axes.hist(np.minimum(milliseconds, upper), bins=60, color="C0")
    for q, style in ((50, "-"), (99, "--")):
        value = np.percentile(milliseconds, q)
        axes.axvline(value, color="black", linestyle=style, label=f"p{q} {value:.3f} ms")
    axes.set_xlabel("milliseconds")
    axes.set_ylabel("steps")
    axes.legend(fontsize="small")
    axes.set_title(title)
    return figure
