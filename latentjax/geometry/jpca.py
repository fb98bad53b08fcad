"""jPCA: rotational planes of population dynamics (Churchland et al. 2012, Nature).

For condition-averaged activity `X` `[conditions, time, neurons]`:
1. subtract the cross-condition mean at each time (optional, as in the paper) and project on
   the top `n_components` principal components: states `s` `[conditions, time, k]`;
2. fit the dynamics `ds/dt ≈ s M` by least squares over all conditions and times, once with an
   unconstrained `M` (`r2_linear`) and once with a skew-symmetric `M = -Mᵀ` (`r2_skew`), where
   `ds/dt` is the forward difference divided by `dt` and `s` the state before each step;
3. the eigenvalues of the skew matrix are ±iω pairs; each pair's eigenvector `v` spans a plane
   (`Re v`, `Im v`) in which the fitted flow is a pure rotation at angular speed ω. Planes are
   ordered by ω, fastest first, and oriented so that the rotation is counter-clockwise.

R² is `1 - Σ‖ds - s M‖² / Σ‖ds - mean(ds)‖²`. Inputs are not soft-normalised here: pass rates
already normalised (the paper divides each neuron by its range + 5 spikes/s).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latentjax.geometry._arrays import as_trajectories, check_positive_int
from latentjax.geometry.embedding import Embedding, layout_preserving

__all__ = ["jpca"]


def _skew_basis(size: int) -> np.ndarray:
    """`[size * (size - 1) / 2, size, size]` basis of skew-symmetric matrices."""
    rows, cols = np.triu_indices(size, k=1)
    basis = np.zeros((rows.size, size, size))
    basis[np.arange(rows.size), rows, cols] = 1.0
    basis[np.arange(rows.size), cols, rows] = -1.0
    return basis


def _r2(targets: np.ndarray, predictions: np.ndarray) -> float:
    residual = np.sum((targets - predictions) ** 2)
    total = np.sum((targets - targets.mean(axis=0)) ** 2)
    return float(1.0 - residual / total)


def fit_skew_symmetric(states: np.ndarray, derivatives: np.ndarray) -> np.ndarray:
    """Least-squares skew-symmetric `M` `[k, k]` with `derivatives ≈ states @ M` (both
    `[samples, k]`)."""
    basis = _skew_basis(states.shape[1])
    design = np.einsum("nk,bkj->njb", states, basis).reshape(-1, basis.shape[0])
    weights, *_ = np.linalg.lstsq(design, derivatives.reshape(-1), rcond=None)
    return np.einsum("b,bkj->kj", weights, basis)


def _rotation_planes(skew: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal plane bases `[k, 2 * planes]` (fastest first) and frequencies `[planes]`."""
    eigenvalues, eigenvectors = np.linalg.eig(skew)
    positive = np.flatnonzero(eigenvalues.imag > 0)
    positive = positive[np.argsort(-eigenvalues.imag[positive])]
    columns = []
    for index in positive:
        vector = eigenvectors[:, index]
        first, second = vector.real, vector.imag
        first = first / np.linalg.norm(first)
        second = second - first * (first @ second)
        second = second / np.linalg.norm(second)
        plane = np.stack([first, second], axis=1)
        # Column-vector flow is ds/dt = Mᵀ s; make the in-plane rotation counter-clockwise.
        if (plane.T @ skew.T @ plane)[1, 0] < 0:
            plane[:, 1] *= -1
        columns.append(plane)
    return np.concatenate(columns, axis=1), eigenvalues.imag[positive]


def jpca(
    X: Any, n_components: int = 6, *, dt: float = 1.0, subtract_condition_mean: bool = True
) -> Embedding:
    """jPCA projection of condition-averaged activity.

    Args:
      X: `[conditions, time, neurons]` (e.g. PSTHs).
      n_components: even number of principal components to fit dynamics in (the paper uses 6).
      dt: time per bin; frequencies are in radians per unit of `dt`.
      subtract_condition_mean: subtract the mean over conditions at each time first.

    Returns:
      `Embedding` with coordinates `[conditions, time, n_components]` (plane by plane, fastest
      first), `explained_variance_ratio` of each jPC, a linear `transform` for new activity
      (centred with the fitted mean only), and `info`: `r2_skew`, `r2_linear`, `skew_matrix`
      and `linear_matrix` `[k, k]` (in PC space, `ds ≈ s M`), `frequencies` `[planes]`,
      `axes` `[neurons, n_components]` (the jPCs in neuron space), `pca_ratio` (variance the
      PCs keep).

    Examples:
      >>> emb = jpca(np.random.default_rng(0).normal(size=(8, 30, 12)), 4)
      >>> emb.coordinates.shape, sorted(emb.info)[:2]
      ((8, 30, 4), ['axes', 'frequencies'])
    """
    data = as_trajectories("X", X)
    num_conditions, _, num_neurons = data.shape
    check_positive_int("n_components", n_components, maximum=num_neurons)
    if n_components % 2 or n_components < 2:
        raise ValueError(f"`n_components` must be even and >= 2, got {n_components}")
    if dt <= 0:
        raise ValueError(f"`dt` must be positive, got {dt}")
    if subtract_condition_mean:
        if num_conditions < 2:
            raise ValueError("`X` needs at least 2 conditions to subtract the condition mean")
        data = data - data.mean(axis=0, keepdims=True)

    points = data.reshape(-1, num_neurons)
    center = points.mean(axis=0)
    _, singular_values, right = np.linalg.svd(points - center, full_matrices=False)
    pcs = right[:n_components].T
    states = (data - center) @ pcs
    before = states[:, :-1].reshape(-1, n_components)
    derivatives = (np.diff(states, axis=1) / dt).reshape(-1, n_components)

    linear, *_ = np.linalg.lstsq(before, derivatives, rcond=None)
    skew = fit_skew_symmetric(before, derivatives)
    planes, frequencies = _rotation_planes(skew)
    axes = pcs @ planes
    coordinates = states @ planes
    total_variance = np.sum((points - center) ** 2)
    return Embedding(
        coordinates=coordinates,
        explained_variance_ratio=np.sum(coordinates**2, axis=(0, 1)) / total_variance,
        transform=layout_preserving(lambda new: (new - center) @ axes, num_neurons),
        method="jpca",
        info={
            "r2_skew": _r2(derivatives, before @ skew),
            "r2_linear": _r2(derivatives, before @ linear),
            "skew_matrix": skew,
            "linear_matrix": linear,
            "frequencies": frequencies,
            "axes": axes,
            "pca_ratio": float(np.sum(singular_values[:n_components] ** 2) / total_variance),
        },
    )
