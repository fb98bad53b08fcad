"""Dimensionality of latents or point clouds.

- `participation_ratio`: `(Σλ)² / Σλ²` over the covariance eigenvalues λ; equals d for
  isotropic variance in d dimensions, less when variance is uneven (linear dimension).
- `n_components_for_variance`: fewest principal components explaining a fraction of variance.
- `twonn_dimension`: intrinsic dimension of a (possibly curved) manifold from the ratio
  μ = r2 / r1 of each point's second to first nearest-neighbour distance (Facco et al. 2017,
  Sci Rep). For a locally uniform d-dimensional density, μ is Pareto: P(μ > x) = x^(-d), so
  `-log(1 - F(μ))` against `log μ` is a line through the origin of slope d. Following the
  paper, the largest `discard_fraction` of the μ are dropped (they come from regions where the
  density is not locally constant) and d is the least-squares slope through the origin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latentjax.geometry._arrays import as_points, check_fraction

__all__ = ["n_components_for_variance", "participation_ratio", "twonn_dimension"]


def _covariance_eigenvalues(points: np.ndarray) -> np.ndarray:
    centred = points - points.mean(axis=0)
    singular_values = np.linalg.svd(centred, compute_uv=False)
    return singular_values**2 / (points.shape[0] - 1)


def participation_ratio(X: Any) -> float:
    """Participation ratio of `X` (`[trials, time, dims]` or `[points, dims]`).

    Examples:
      >>> round(participation_ratio(np.random.default_rng(0).normal(size=(5000, 3))), 1)
      3.0
    """
    points, _ = as_points("X", X)
    eigenvalues = _covariance_eigenvalues(points)
    return float(np.sum(eigenvalues) ** 2 / np.sum(eigenvalues**2))


def n_components_for_variance(X: Any, fraction: float) -> int:
    """Fewest principal components of `X` whose variance reaches `fraction` (in (0, 1]) of the
    total."""
    points, _ = as_points("X", X)
    check_fraction("fraction", fraction)
    eigenvalues = _covariance_eigenvalues(points)
    cumulative = np.cumsum(eigenvalues) / np.sum(eigenvalues)
    return int(np.searchsorted(cumulative, fraction - 1e-12) + 1)


def twonn_dimension(X: Any, *, discard_fraction: float = 0.1) -> float:
    """TwoNN intrinsic dimension of `X` (`[trials, time, dims]` or `[points, dims]`).

    Duplicate points (zero nearest-neighbour distance) are dropped first.

    Examples:
      >>> round(twonn_dimension(np.random.default_rng(0).uniform(size=(2000, 2))))
      2
    """
    from sklearn.neighbors import NearestNeighbors

    points, _ = as_points("X", X, min_points=3)
    if not 0.0 <= discard_fraction < 1.0:
        raise ValueError(f"`discard_fraction` must lie in [0, 1), got {discard_fraction}")
    points = np.unique(points, axis=0)
    if points.shape[0] < 3:
        raise ValueError("`X` needs at least 3 distinct points")
    distances, _ = NearestNeighbors(n_neighbors=3).fit(points).kneighbors(points)
    ratios = np.sort(distances[:, 2] / distances[:, 1])
    num_points = ratios.size
    kept = int(np.floor(num_points * (1.0 - discard_fraction)))
    empirical_cdf = np.arange(1, num_points + 1) / num_points
    x = np.log(ratios[:kept])
    y = -np.log(1.0 - empirical_cdf[:kept])
    return float(np.dot(x, y) / np.dot(x, x))
