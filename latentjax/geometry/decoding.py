"""Decoding behaviour from latents or embedding coordinates: cross-validated ridge regression
(`decode_behavior`) and k-nearest-neighbour decoding, circular for angles (`knn_decode`).

Folds split whole trials (scikit-learn `KFold`, shuffled with `seed`), so no time bin of a test
trial is seen in training; each fold fits `Ridge` (with intercept) on the training trials' bins
and predicts the test trials. R² is computed once on all out-of-fold predictions.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from latentjax.geometry._arrays import as_points, check_positive_int

__all__ = ["DecodingResult", "decode_behavior", "knn_decode"]


class DecodingResult(NamedTuple):
    """`r2`: mean over behaviour dims of `r2_per_dim` `[D]`; `predictions`: out-of-fold
    predictions in the behaviour's layout (`[trials, time, D]` or `[points, D]`), zero in
    masked bins."""

    r2: float
    r2_per_dim: np.ndarray
    predictions: np.ndarray


def decode_behavior(
    coords: Any,
    behavior: Any,
    *,
    mask: Any = None,
    n_folds: int = 5,
    alpha: float = 1.0,
    seed: int = 0,
) -> DecodingResult:
    """Cross-validated ridge decoding of `behavior` from `coords`.

    Args:
      coords: `[trials, time, K]` (or `[points, K]`, each point its own trial).
      behavior: `[trials, time, D]` (or `[points, D]`), the same leading shape.
      mask: `[trials, time]` bool, True where a bin is observed (others are ignored).
      n_folds: folds over trials (at most the number of trials).
      alpha: ridge penalty.

    Examples:
      >>> rng = np.random.default_rng(0)
      >>> latents = rng.normal(size=(10, 20, 3))
      >>> decode_behavior(latents, latents @ rng.normal(size=(3, 2))).r2 > 0.99
      True
    """
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import KFold

    coords_points, leading = as_points("coords", coords, min_points=1)
    behavior_points, behavior_leading = as_points("behavior", behavior, min_points=1)
    if behavior_leading != leading:
        raise ValueError(
            f"`behavior` leading shape {behavior_leading} must match `coords` {leading}"
        )
    num_trials = leading[0]
    check_positive_int("n_folds", n_folds, maximum=num_trials)
    if n_folds < 2:
        raise ValueError(f"`n_folds` must be at least 2, got {n_folds}")
    if alpha < 0:
        raise ValueError(f"`alpha` must be >= 0, got {alpha}")
    observed = np.ones(leading, bool) if mask is None else np.asarray(mask, bool)
    if observed.shape != leading:
        raise ValueError(f"`mask` must have shape {leading}, got {observed.shape}")

    coords_trials = coords_points.reshape(num_trials, -1, coords_points.shape[-1])
    behavior_trials = behavior_points.reshape(num_trials, -1, behavior_points.shape[-1])
    observed_trials = observed.reshape(num_trials, -1)
    predictions = np.zeros_like(behavior_trials)
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.arange(num_trials))
    for train, test in folds:
        train_bins = observed_trials[train]
        model = Ridge(alpha=alpha).fit(
            coords_trials[train][train_bins], behavior_trials[train][train_bins]
        )
        test_coords = coords_trials[test].reshape(-1, coords_trials.shape[-1])
        predictions[test] = model.predict(test_coords).reshape(predictions[test].shape)

    targets, estimates = behavior_trials[observed_trials], predictions[observed_trials]
    residual = np.sum((targets - estimates) ** 2, axis=0)
    total = np.sum((targets - targets.mean(axis=0)) ** 2, axis=0)
    r2_per_dim = 1.0 - residual / total
    predictions[~observed_trials] = 0.0
    return DecodingResult(
        r2=float(np.mean(r2_per_dim)),
        r2_per_dim=r2_per_dim,
        predictions=predictions.reshape(*leading, -1),
    )


def knn_decode(
    train_coords: Any,
    train_targets: Any,
    test_coords: Any,
    *,
    n_neighbors: int = 32,
    circular: bool = False,
    metric: str = "euclidean",
) -> np.ndarray:
    """k-nearest-neighbour decoding: each test point's prediction is the mean target of its
    `n_neighbors` nearest training points (circular mean for angles).

    Args:
      train_coords: `[points, K]` (or `[trials, time, K]`, flattened) training coordinates.
      train_targets: `[points, D]` or `[points]` targets (same leading shape); with
        `circular=True`, angles in radians `[points]`.
      test_coords: `[test_points, K]` (or `[trials, time, K]`).
      n_neighbors: neighbours averaged (at most the number of training points).
      circular: targets are angles: predictions are the angle of the mean unit vector.
      metric: "euclidean" or "cosine" (for embeddings on a sphere).

    Returns:
      predictions `[test_points, D]` (or `[test_points]` for 1-D targets and angles).

    Example:
      >>> angle = np.linspace(0, 2 * np.pi, 200, endpoint=False)
      >>> ring = np.stack([np.cos(angle), np.sin(angle)], axis=1)
      >>> got = knn_decode(ring, angle, ring[:3], n_neighbors=3, circular=True)
      >>> bool(np.allclose(np.cos(got), np.cos(angle[:3])))
      True
    """
    from sklearn.neighbors import NearestNeighbors

    train, _ = as_points("train_coords", train_coords, min_points=1)
    test, _ = as_points("test_coords", test_coords, min_points=1)
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"`test_coords` must have {train.shape[1]} dims like `train_coords`, got "
            f"{test.shape[1]}"
        )
    targets = np.asarray(train_targets, dtype=np.float64)
    scalar = targets.ndim == np.ndim(train_coords) - 1
    targets = targets.reshape(train.shape[0], -1) if targets.size % train.shape[0] == 0 else None
    if targets is None or (np.shape(train_targets)[: np.ndim(train_coords) - 1]
                           != np.shape(train_coords)[:-1]):  # fmt: skip
        raise ValueError(
            f"`train_targets` must have the leading shape of `train_coords` "
            f"{np.shape(train_coords)[:-1]}, got {np.shape(train_targets)}"
        )
    if not np.all(np.isfinite(targets)):
        raise ValueError("`train_targets` holds NaN or Inf values")
    check_positive_int("n_neighbors", n_neighbors, maximum=train.shape[0])
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"`metric` must be 'euclidean' or 'cosine', got {metric!r}")
    if circular and targets.shape[1] != 1:
        raise ValueError(f"`train_targets` must be angles `[points]` with circular=True, got "
                         f"{np.shape(train_targets)}")  # fmt: skip
    index = NearestNeighbors(n_neighbors=n_neighbors, metric=metric).fit(train)
    _, neighbours = index.kneighbors(test)
    if circular:
        angles = targets[:, 0][neighbours]
        prediction = np.arctan2(np.sin(angles).mean(axis=1), np.cos(angles).mean(axis=1))
        return prediction
    prediction = targets[neighbours].mean(axis=1)
    return prediction[:, 0] if scalar else prediction
