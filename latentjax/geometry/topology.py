"""Persistent homology of point clouds (Vietoris-Rips, computed by ripser).

Many points are first thinned to `n_points` landmarks by a greedy permutation (farthest-point
sampling): each new landmark is the point farthest from those already chosen, so the landmarks
cover the cloud within the smallest radius such a greedy rule reaches (at most twice the
optimum). A memory estimate refuses, before calling ripser, the inputs that would not fit.

Long bars and noise (`betti`): bar lifetimes (death - birth) are split at the largest *ratio*
between consecutive sorted lifetimes, looked for among the `max_features` longest bars:
- dimensions >= 1 are pooled (so a dimension with one long bar and no noise, like H2 of a
  sphere, is still separated from the short bars of the others);
- H0 is treated on its own: its finite bars (merging of clusters) live on the scale of the
  sampling distance, not of the loops;
- when the largest ratio is below `min_gap`, the sorted lifetimes fall off smoothly and no bar
  counts as long. The infinite H0 bar always counts, so `betti()[0] >= 1`.
An isolated outlier far from the rest is a component at the sampling scale and may count in
H0 (greedy landmarks pick outliers first): remove outliers before calling `betti`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from latentjax.geometry._arrays import as_points, check_positive_int

__all__ = ["betti", "greedy_landmarks", "long_bars", "persistence", "persistence_memory_bytes"]

_BYTES_PER_ENTRY = 24  # ripser: a (diameter, index) pair per simplex entry in its hash maps


def greedy_landmarks(X: Any, n_points: int, *, seed: int = 0) -> np.ndarray:
    """Indices `[n_points]` of a greedy permutation of `X` (`[..., dims]` read as points).

    The first landmark is drawn at random (`seed`); each next one is the point farthest from
    all landmarks so far. O(points x n_points) time, O(points) memory.
    """
    points, _ = as_points("X", X, min_points=1)
    check_positive_int("n_points", n_points, maximum=points.shape[0])
    first = int(np.random.default_rng(seed).integers(points.shape[0]))
    chosen = np.empty(n_points, dtype=np.int64)
    chosen[0] = first
    distance = np.linalg.norm(points - points[first], axis=1)
    for position in range(1, n_points):
        chosen[position] = int(np.argmax(distance))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[position]], axis=1))
    return chosen


def persistence_memory_bytes(n_points: int, maxdim: int) -> int:
    """Rough estimate of ripser's memory for `n_points` points up to `maxdim`.

    The dense distance matrix (8 bytes per pair) plus one stored entry per simplex of
    dimension `maxdim` (the columns ripser reduces in the top dimension, the largest set it
    keeps; apparent pairs usually spare most of them). Meant to refuse inputs that cannot fit,
    not to predict usage: 300 points up to H2 give ~0.1 GiB, 3000 points ~100 GiB.
    """
    return 8 * n_points**2 + _BYTES_PER_ENTRY * math.comb(n_points, maxdim + 1)


def persistence(
    X: Any,
    *,
    maxdim: int = 1,
    n_points: int | None = None,
    seed: int = 0,
    max_memory_gb: float = 8.0,
) -> list[np.ndarray]:
    """Vietoris-Rips persistence diagrams of `X` (`[trials, time, dims]` or `[points, dims]`).

    Args:
      maxdim: highest homology dimension.
      n_points: number of greedy-permutation landmarks to keep; None keeps every point.
      seed: chooses the first landmark.
      max_memory_gb: refuse (ValueError) when `persistence_memory_bytes` exceeds this.

    Returns:
      `maxdim + 1` diagrams, `[bars, 2]` arrays of (birth, death) per dimension; the bar of
      the whole cloud in H0 dies at `inf`.

    Example:
      >>> angle = np.linspace(0, 2 * np.pi, 100, endpoint=False)
      >>> diagrams = persistence(np.c_[np.cos(angle), np.sin(angle)])
      >>> len(diagrams), int(np.argmax(np.diff(diagrams[1], axis=1)))
      (2, 0)
    """
    from ripser import ripser

    points, _ = as_points("X", X)
    if isinstance(maxdim, bool) or not isinstance(maxdim, int | np.integer) or maxdim < 0:
        raise ValueError(f"`maxdim` must be a non-negative integer, got {maxdim!r}")
    if n_points is not None:
        check_positive_int("n_points", n_points)
        if n_points < points.shape[0]:
            points = points[greedy_landmarks(points, n_points, seed=seed)]
    needed = persistence_memory_bytes(points.shape[0], maxdim)
    if needed > max_memory_gb * 2**30:
        raise ValueError(
            f"persistence of {points.shape[0]} points up to maxdim={maxdim} may need "
            f"{needed / 2**30:.1f} GiB (> max_memory_gb={max_memory_gb}); pass a smaller "
            "`n_points` (landmarks) or lower `maxdim`"
        )
    return [np.asarray(diagram) for diagram in ripser(points, maxdim=maxdim)["dgms"]]


def _count_above_largest_gap(lifetimes: np.ndarray, min_gap: float, max_features: int) -> int:
    """How many of `lifetimes` lie above the largest ratio gap (0 when it is below
    `min_gap`)."""
    ordered = np.sort(lifetimes)[::-1][: max_features + 1]
    ordered = ordered[ordered > 0]
    if ordered.size < 2:  # nothing to compare with: a lone bar counts as long
        return ordered.size
    ratios = ordered[:-1] / ordered[1:]
    best = int(np.argmax(ratios))
    return best + 1 if ratios[best] >= min_gap else 0


def long_bars(
    diagrams: list[np.ndarray], *, min_gap: float = 1.5, max_features: int = 10
) -> list[np.ndarray]:
    """Per dimension, a bool mask `[bars]` of the bars `betti` counts as long (see module
    docstring for the rule)."""
    if min_gap <= 1:
        raise ValueError(f"`min_gap` must be > 1, got {min_gap}")
    check_positive_int("max_features", max_features)
    lifetimes = [np.asarray(d)[:, 1] - np.asarray(d)[:, 0] for d in diagrams]
    masks = [np.isinf(life) for life in lifetimes]

    def mark_longest(dims: list[int]) -> None:
        pooled = np.concatenate([np.where(masks[k], 0.0, lifetimes[k]) for k in dims])
        count = _count_above_largest_gap(pooled, min_gap, max_features)
        if count:
            threshold = np.sort(pooled)[::-1][count - 1]
            for k in dims:
                masks[k] |= lifetimes[k] >= threshold

    mark_longest([0])
    if len(diagrams) > 1:
        mark_longest(list(range(1, len(diagrams))))
    return masks


def betti(
    X: Any,
    *,
    maxdim: int = 1,
    n_points: int | None = 300,
    seed: int = 0,
    min_gap: float = 1.5,
    max_features: int = 10,
    max_memory_gb: float = 8.0,
) -> tuple[int, ...]:
    """Betti numbers `(b0, ..., b_maxdim)` of the manifold sampled by `X`: the number of long
    bars per dimension in the persistence diagrams (rule in the module docstring).

    Args:
      X: `[trials, time, dims]` or `[points, dims]`.
      n_points: landmarks for `persistence` (default 300; None keeps every point).
      min_gap: smallest ratio between the shortest long and the longest short lifetime.
      max_features: the gap is looked for among this many longest bars.

    Example:
      >>> angle = np.random.default_rng(0).uniform(0, 2 * np.pi, 200)
      >>> betti(np.c_[np.cos(angle), np.sin(angle)])
      (1, 1)
    """
    diagrams = persistence(
        X, maxdim=maxdim, n_points=n_points, seed=seed, max_memory_gb=max_memory_gb
    )
    masks = long_bars(diagrams, min_gap=min_gap, max_features=max_features)
    return tuple(int(mask.sum()) for mask in masks)
