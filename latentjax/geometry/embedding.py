"""Low-dimensional embeddings of latents or points, all returning one `Embedding` type.

`pca`, `isomap` and `lle` (scikit-learn) and `umap` (umap-learn) can place new points with
`Embedding.transform`; `tsne` cannot (its `transform` is None). Every method is deterministic
for a given `seed`. Inputs are `[trials, time, dims]` latents or `[points, dims]` points, and
coordinates come back in the same layout: `[trials, time, n_components]` or
`[points, n_components]`. `jpca` (in `latentjax.geometry.jpca`) returns the same type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from latentjax.geometry._arrays import as_points, check_positive_int

__all__ = ["Embedding", "isomap", "lle", "pca", "tsne", "umap"]


@dataclasses.dataclass(frozen=True)
class Embedding:
    """Result of an embedding.

    Attributes:
      coordinates: `[trials, time, n_components]` or `[points, n_components]`, the layout of
        the input.
      explained_variance_ratio: `[n_components]` fraction of the input's variance each
        component explains (linear methods), else None.
      transform: maps new inputs (either layout, same `dims`) to coordinates, or None when the
        method cannot place new points (t-SNE).
      method: the method's name.
      info: method-specific results (for jPCA: `r2_skew`, `r2_linear`, `skew_matrix`, ...).
    """

    coordinates: np.ndarray
    explained_variance_ratio: np.ndarray | None
    transform: Callable[[Any], np.ndarray] | None
    method: str
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def layout_preserving(map_points: Callable[[np.ndarray], np.ndarray], num_dims: int):
    """Wrap a `[points, dims] -> [points, n]` map so it validates input and keeps its layout."""

    def transform(X: Any) -> np.ndarray:
        points, leading = as_points("X", X, min_points=1)
        if points.shape[1] != num_dims:
            raise ValueError(f"`X` must have {num_dims} dims (last axis), got {points.shape[1]}")
        coordinates = np.asarray(map_points(points))
        return coordinates.reshape(*leading, coordinates.shape[-1])

    return transform


def _fit_estimator(
    method: str, estimator: Any, X: Any, n_components: int, *, can_transform: bool
) -> Embedding:
    points, leading = as_points("X", X)
    check_positive_int("n_components", n_components, maximum=points.shape[1])
    if points.shape[0] <= n_components:
        raise ValueError(
            f"`X` needs more points ({points.shape[0]}) than `n_components` ({n_components})"
        )
    coordinates = estimator.fit_transform(points)
    ratio = getattr(estimator, "explained_variance_ratio_", None)
    transform = layout_preserving(estimator.transform, points.shape[1]) if can_transform else None
    return Embedding(
        coordinates=coordinates.reshape(*leading, n_components),
        explained_variance_ratio=None if ratio is None else np.asarray(ratio),
        transform=transform,
        method=method,
        info={"estimator": estimator},
    )


def pca(X: Any, n_components: int) -> Embedding:
    """Principal components of `X` (`[trials, time, dims]` or `[points, dims]`).

    Examples:
      >>> emb = pca(np.random.default_rng(0).normal(size=(4, 50, 10)), 3)
      >>> emb.coordinates.shape, emb.explained_variance_ratio.shape
      ((4, 50, 3), (3,))
    """
    from sklearn.decomposition import PCA

    estimator = PCA(n_components=n_components, svd_solver="full")
    return _fit_estimator("pca", estimator, X, n_components, can_transform=True)


def isomap(X: Any, n_components: int = 2, *, n_neighbors: int = 10) -> Embedding:
    """Isomap (geodesic distances on a k-nearest-neighbour graph, then classical MDS)."""
    from sklearn.manifold import Isomap

    estimator = Isomap(n_components=n_components, n_neighbors=n_neighbors)
    return _fit_estimator("isomap", estimator, X, n_components, can_transform=True)


def lle(X: Any, n_components: int = 2, *, n_neighbors: int = 10, seed: int = 0) -> Embedding:
    """Locally linear embedding (standard LLE, dense eigensolver)."""
    from sklearn.manifold import LocallyLinearEmbedding

    estimator = LocallyLinearEmbedding(
        n_components=n_components, n_neighbors=n_neighbors, eigen_solver="dense", random_state=seed
    )
    return _fit_estimator("lle", estimator, X, n_components, can_transform=True)


def tsne(
    X: Any,
    n_components: int = 2,
    *,
    perplexity: float = 30.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> Embedding:
    """t-SNE (scikit-learn, PCA initialisation, `max_iter` gradient steps). It cannot embed
    new points: `transform` is None."""
    from sklearn.manifold import TSNE

    points, _ = as_points("X", X)
    if not 0 < perplexity < points.shape[0]:
        raise ValueError(
            f"`perplexity` must lie in (0, number of points = {points.shape[0]}), got {perplexity}"
        )
    check_positive_int("max_iter", max_iter)
    estimator = TSNE(
        n_components=n_components,
        perplexity=perplexity,
        max_iter=max_iter,
        init="pca",
        random_state=seed,
    )
    return _fit_estimator("tsne", estimator, X, n_components, can_transform=False)


def umap(
    X: Any, n_components: int = 2, *, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0
) -> Embedding:
    """UMAP (umap-learn, imported on first use: it compiles with numba). Seeded runs are
    deterministic (single-threaded)."""
    import umap as umap_learn

    estimator = umap_learn.UMAP(
        n_components=n_components,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        random_state=seed,
        n_jobs=1,
    )
    return _fit_estimator("umap", estimator, X, n_components, can_transform=True)
