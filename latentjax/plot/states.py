"""Figures of discrete-state models: state rasters over trials, flow fields per state."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

__all__ = ["state_flow_fields", "state_raster"]


def _states(posterior_or_states) -> np.ndarray:
    """`[trials, time]` int states from a Posterior (`most_likely`, else the argmax of the
    state probabilities) or an array."""
    if hasattr(posterior_or_states, "extras"):
        extras = posterior_or_states.extras
        if "most_likely" in extras:
            return np.asarray(extras["most_likely"])
        probabilities = extras.get("states", posterior_or_states.latents)
        return np.asarray(probabilities).argmax(-1)
    states = np.asarray(posterior_or_states)
    if states.ndim == 3:
        states = states.argmax(-1)
    if states.ndim != 2:
        raise ValueError(
            f"state_raster: `states` must be [trials, time] or [trials, time, K], got "
            f"{states.shape}"
        )
    return states


def state_raster(states, *, dt: float = 1.0, truth=None, max_trials: int = 30) -> Figure:
    """Discrete states over time, one row per trial (optionally beside the true states).

    Args:
      states: a `Posterior` of a discrete-state family (its `most_likely` path), or
        `[trials, time]` int states, or `[trials, time, K]` state probabilities.
      dt: seconds per bin.
      truth: `[trials, time]` true states, drawn in a second panel.
      max_trials: the first trials drawn.

    Returns:
      matplotlib `Figure`.

    Examples:
      >>> import numpy as np
      >>> figure = state_raster(np.array([[0, 0, 1, 2], [1, 1, 2, 2]]))
      >>> len(figure.axes)
      2
    """
    panels = [("inferred", _states(states)[:max_trials])]
    if truth is not None:
        panels.append(("true", _states(truth)[:max_trials]))
    num_states = int(max(p.max() for _, p in panels)) + 1
    colours = ListedColormap([f"C{i % 10}" for i in range(num_states)])
    figure = Figure(figsize=(8, 1.5 + 0.12 * panels[0][1].shape[0] * len(panels)),
                    layout="constrained")  # fmt: skip
    grid = figure.add_gridspec(len(panels), 1)
    for row, (title, values) in enumerate(panels):
        axes = figure.add_subplot(grid[row])
        image = axes.imshow(
            values, aspect="auto", interpolation="nearest", cmap=colours,
            vmin=-0.5, vmax=num_states - 0.5,
            extent=(0, values.shape[1] * dt, values.shape[0] - 0.5, -0.5),
        )  # fmt: skip
        axes.set_ylabel("trial")
        axes.set_title(f"{title} states")
    axes.set_xlabel("time (s)" if dt != 1.0 else "bin")
    figure.colorbar(image, ax=figure.axes, ticks=np.arange(num_states), label="state")
    return figure


def state_flow_fields(
    dynamics, biases, *, latents=None, states=None, dims=(0, 1), grid_size: int = 15
) -> Figure:
    """The flow z_{t+1} - z_t = (A_k - I) z + b_k of every state in a 2-D latent plane, with
    each state's fixed point (and the latents that state was inferred in, when given).

    Args:
      dynamics: `[K, D, D]` per-state A_k.
      biases: `[K, D]` per-state b_k.
      latents: `[trials, time, D]` inferred latents to overlay.
      states: `[trials, time]` inferred states of those latents (colours the points).
      dims: the two latent dimensions drawn (others held at the latents' mean).
      grid_size: arrows per axis.

    Returns:
      matplotlib `Figure`, one panel per state.

    Examples:
      >>> import numpy as np
      >>> figure = state_flow_fields(np.stack([np.eye(2) * 0.9] * 2), np.zeros((2, 2)))
      >>> len(figure.axes)
      2
    """
    dynamics, biases = np.asarray(dynamics, float), np.asarray(biases, float)
    if dynamics.ndim != 3 or dynamics.shape[1] != dynamics.shape[2]:
        raise ValueError(f"state_flow_fields: `dynamics` must be [K, D, D], got {dynamics.shape}")
    num_states, num_latents = dynamics.shape[:2]
    if biases.shape != (num_states, num_latents):
        raise ValueError(
            f"state_flow_fields: `biases` must be [K, D] = {(num_states, num_latents)}, "
            f"got {biases.shape}"
        )
    if num_latents < 2:
        raise ValueError("state_flow_fields: the latents must have at least 2 dimensions")
    i, j = dims
    if latents is not None:
        points = np.asarray(latents).reshape(-1, num_latents)
        centre = points.mean(0)
        low, high = points.min(0), points.max(0)
        pad = 0.1 * (high - low)
        low, high = low - pad, high + pad
    else:
        centre = np.zeros(num_latents)
        low, high = -np.ones(num_latents) * 3, np.ones(num_latents) * 3
    xs = np.linspace(low[i], high[i], grid_size)
    ys = np.linspace(low[j], high[j], grid_size)
    mesh = np.tile(centre, (grid_size, grid_size, 1))
    mesh[..., i], mesh[..., j] = np.meshgrid(xs, ys)
    figure = Figure(figsize=(3 * num_states, 3), layout="constrained")
    for k in range(num_states):
        axes = figure.add_subplot(1, num_states, k + 1)
        flow = mesh @ (dynamics[k] - np.eye(num_latents)).T + biases[k]
        axes.quiver(mesh[..., i], mesh[..., j], flow[..., i], flow[..., j], color=f"C{k % 10}")
        if latents is not None:
            chosen = points
            if states is not None:
                chosen = points[np.asarray(states).reshape(-1) == k]
            axes.plot(chosen[:, i], chosen[:, j], ".", color="0.6", markersize=1.5)
        try:
            fixed = np.linalg.solve(np.eye(num_latents) - dynamics[k], biases[k])
            if low[i] <= fixed[i] <= high[i] and low[j] <= fixed[j] <= high[j]:
                axes.plot(fixed[i], fixed[j], "k*", markersize=10)
        except np.linalg.LinAlgError:
            pass
        axes.set_xlim(low[i], high[i])
        axes.set_ylim(low[j], high[j])
        axes.set_title(f"state {k}")
        axes.set_xlabel(f"latent {i}")
        if k == 0:
            axes.set_ylabel(f"latent {j}")
    return figure
