"""Flow-field geometry (MARBLE-style): compare the local dynamics of latent trajectories of
several conditions or systems, not only where their states lie.

For each condition, states `x_i` `[K]` and velocities `v_i` (finite differences along each
trajectory, divided by `dt`) are sampled from its trajectories. A k-nearest-neighbour
proximity graph on the states gives each point a neighbourhood; local PCA of the offsets
`x_j - x_i` gives a tangent frame `U_i` `[K, d]` (`manifold_dim = d`), and a ridge fit of the
velocity differences on the offsets in that frame gives the local linear flow
`J_i` `[d, d]`:  `U_i^T (v_j - v_i) ~ J_i U_i^T (x_j - x_i)`. Each point's features are
invariant to rotations and reflections of the frame (a fixed feature map, no training):

    speed |v_i|,  divergence tr J_i,  vorticity |A_i|_F / sqrt(2),  strain |S_i|_F / sqrt(2)

with `A_i = (J_i - J_i^T) / 2` and `S_i = (J_i + J_i^T) / 2 - tr(J_i) I / d` (a unit-rate
rotation in a plane has vorticity 1, the saddle `diag(1, -1)` strain 1).

A rotation (vorticity, no strain) and a saddle (strain, no vorticity) on the same plane, over
the same states, thus differ in their features while the states alone do not. Features are
standardised by their pooled spread over all conditions; the distance between two conditions
is the energy distance between their feature distributions, and the embedding of the
conditions is the classical multidimensional scaling of that distance matrix.

    >>> import numpy as np
    >>> t = np.linspace(0, 1, 30)[None, :, None]
    >>> start = np.random.default_rng(0).normal(size=(20, 1, 2))
    >>> rotation = np.concatenate([np.cos(t) * start[..., :1] - np.sin(t) * start[..., 1:],
    ...                            np.sin(t) * start[..., :1] + np.cos(t) * start[..., 1:]], -1)
    >>> saddle = np.concatenate([np.exp(t) * start[..., :1], np.exp(-t) * start[..., 1:]], -1)
    >>> result = flowfield([rotation, saddle], dt=1 / 29)
    >>> result.distances.shape
    (2, 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from latentjax.geometry._arrays import as_trajectories, check_positive_int

__all__ = ["FlowField", "flow_features", "flowfield"]

FEATURES = ("speed", "divergence", "vorticity", "strain")


class FlowField(NamedTuple):
    """`features`: per condition `[points, 4]` (speed, divergence, vorticity, strain;
    standardised); `distances` `[C, C]` energy distances between the conditions' feature
    distributions; `embedding` `[C, C - 1]` (at most) classical MDS of `distances`."""

    features: list
    distances: np.ndarray
    embedding: np.ndarray


def _states_and_velocities(trajectories: np.ndarray, dt: float, mask) -> tuple:
    """Midpoint states and finite-difference velocities `[points, K]` of observed pairs."""
    states = 0.5 * (trajectories[:, 1:] + trajectories[:, :-1])
    velocities = (trajectories[:, 1:] - trajectories[:, :-1]) / dt
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != trajectories.shape[:2]:
            raise ValueError(
                f"`masks` entries must have shape {trajectories.shape[:2]}, got {mask.shape}"
            )
        keep = mask[:, 1:] & mask[:, :-1]
        return states[keep], velocities[keep]
    dim = trajectories.shape[-1]
    return states.reshape(-1, dim), velocities.reshape(-1, dim)


def flow_features(
    states: Any, velocities: Any, *, n_neighbors: int = 15, manifold_dim: int | None = None,
    ridge: float = 1e-6,
) -> np.ndarray:  # fmt: skip
    """Per-point local-flow features `[points, 4]` (speed, divergence, vorticity, strain;
    see the module docstring) of velocities `[points, K]` at states `[points, K]`."""
    states = np.asarray(states, np.float64)
    velocities = np.asarray(velocities, np.float64)
    if states.ndim != 2 or states.shape != velocities.shape:
        raise ValueError(
            f"`states` and `velocities` must both be [points, K], got {states.shape} and "
            f"{velocities.shape}"
        )
    num_points, dim = states.shape
    check_positive_int("n_neighbors", n_neighbors, maximum=num_points - 1)
    d = dim if manifold_dim is None else manifold_dim
    check_positive_int("manifold_dim", d, maximum=dim)
    if n_neighbors < d + 1:
        raise ValueError(f"`n_neighbors` must be > manifold_dim ({d}), got {n_neighbors}")
    from sklearn.neighbors import NearestNeighbors

    _, index = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(states).kneighbors(states)
    offsets = states[index[:, 1:]] - states[:, None, :]  # [points, k, K]
    changes = velocities[index[:, 1:]] - velocities[:, None, :]
    _, _, vt = np.linalg.svd(offsets, full_matrices=False)  # frames: rows of vt
    frame = np.swapaxes(vt[:, :d], 1, 2)  # [points, K, d]
    a, b = offsets @ frame, changes @ frame  # [points, k, d]
    gram = np.swapaxes(a, 1, 2) @ a
    scale = np.trace(gram, axis1=1, axis2=2)[:, None, None] / d
    jac_t = np.linalg.solve(gram + ridge * scale * np.eye(d), np.swapaxes(a, 1, 2) @ b)
    jac = np.swapaxes(jac_t, 1, 2)  # [points, d, d]: b ~ a J^T
    divergence = np.trace(jac, axis1=1, axis2=2)
    vorticity = np.linalg.norm(jac - np.swapaxes(jac, 1, 2), axis=(1, 2)) / (2 * np.sqrt(2))
    symmetric = (jac + np.swapaxes(jac, 1, 2)) / 2 - divergence[:, None, None] * np.eye(d) / d
    strain = np.linalg.norm(symmetric, axis=(1, 2)) / np.sqrt(2)
    speed = np.linalg.norm(velocities, axis=1)
    return np.stack([speed, divergence, vorticity, strain], axis=1)


def _energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    def mean_distance(a, b):
        return np.mean(np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1))

    value = 2 * mean_distance(x, y) - mean_distance(x, x) - mean_distance(y, y)
    return float(np.sqrt(max(value, 0.0)))


def _mds(distances: np.ndarray) -> np.ndarray:
    count = distances.shape[0]
    centring = np.eye(count) - 1.0 / count
    gram = -0.5 * centring @ (distances**2) @ centring
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1][: max(count - 1, 1)]
    return vectors[:, order] * np.sqrt(np.maximum(values[order], 0.0))


def flowfield(
    conditions: Sequence[Any],
    *,
    dt: float = 1.0,
    n_neighbors: int = 15,
    manifold_dim: int | None = None,
    max_points: int = 500,
    masks: Sequence[Any] | None = None,
    seed: int = 0,
) -> FlowField:
    """Flow-field features, distances and embedding of `conditions` (module docstring).

    Args:
      conditions: C >= 2 latent trajectories, each `[trials, time, K]` (same K), e.g. the
        `Posterior.latents` of each condition or of each fitted system.
      dt: time between bins (velocities are differences over `dt`).
      n_neighbors: neighbours of each point in its condition's proximity graph.
      manifold_dim: dimension d of the tangent frames (None: K).
      max_points: points per condition drawn (with `seed`) for the energy distance.
      masks: one `[trials, time]` bool array (or None) per condition.
    """
    if isinstance(conditions, np.ndarray) or not isinstance(conditions, Sequence):
        raise ValueError("`conditions` must be a sequence of [trials, time, K] arrays")
    if len(conditions) < 2:
        raise ValueError(f"`conditions` needs at least 2 entries, got {len(conditions)}")
    if not (isinstance(dt, (int, float)) and dt > 0):
        raise ValueError(f"`dt` must be > 0, got {dt!r}")
    if masks is not None and len(masks) != len(conditions):
        raise ValueError(f"`masks` must hold {len(conditions)} entries, got {len(masks)}")
    check_positive_int("max_points", max_points)
    trajectories = [as_trajectories(f"conditions[{i}]", c) for i, c in enumerate(conditions)]
    if len({t.shape[-1] for t in trajectories}) > 1:
        raise ValueError("`conditions` must share one latent dimension K")
    features = []
    for i, t in enumerate(trajectories):
        states, velocities = _states_and_velocities(t, dt, None if masks is None else masks[i])
        features.append(flow_features(states, velocities, n_neighbors=n_neighbors,
                                      manifold_dim=manifold_dim))  # fmt: skip
    pooled = np.concatenate(features)
    centre, spread = pooled.mean(axis=0), pooled.std(axis=0)
    features = [(f - centre) / np.where(spread > 0, spread, 1.0) for f in features]
    rng = np.random.default_rng(seed)
    samples = [f[rng.choice(len(f), min(max_points, len(f)), replace=False)] for f in features]
    count = len(features)
    distances = np.zeros((count, count))
    for i in range(count):
        for j in range(i + 1, count):
            distances[i, j] = distances[j, i] = _energy_distance(samples[i], samples[j])
    return FlowField(features=features, distances=distances, embedding=_mds(distances))
