"""Persistent homology of point clouds (Vietoris-Rips, computed by ripser).

Many points are first thinned to `n_points` landmarks by a greedy permutation (farthest-point
sampling): each new landmark is the point farthest from those already chosen, so the landmarks
cover the cloud within the smallest radius such a greedy rule reaches (at most twice the
optimum). A memory estimate refuses, before calling ripser, the inputs that would not fit.

Long bars and noise (`betti`, `long_bars`). Each dimension is decided on its own bars, by a
test of its largest gap against a noise model (noise bars of one dimension are not compared
with the bars of another, whose noise may be longer: the H1 noise of a sampled torus outlasts
its void).

- H0 (clusters) keeps a gap rule: its finite bars (merges) are split at the largest *ratio*
  between consecutive sorted lifetimes among the `max_features` longest, when that ratio is at
  least `min_gap`. The infinite bar always counts, so `betti()[0] >= 1`. The other finite H0
  bars are merges within clusters; their mean lifetime `s` is the sampling scale (the mean
  distance at which a point joins its neighbours).
- Dimension k >= 1. Noise model: the lifetimes of noise bars are independent with an
  exponential tail of an unknown scale sigma_k, of this dimension only. Sorted descending,
  L_1 >= ... >= L_m (L_{m+1} = 0), the normalised spacings S_i = i (L_i - L_{i+1}) of
  exponential order statistics are then independent Exp(sigma_k) (Renyi's representation, the
  basis of the Hill and Dixon-type outlier tests). The split after the j longest bars is
  tested by T_j = S_j / mean(S_{j+1}, ..., S_m): the noise scale is estimated from the bars
  below the split only, so the long bars above do not inflate it, and under the null (bar j
  is noise) T_j follows an F(2, 2 (m - j)) law, p_j = (1 + T_j / (m - j))^-(m - j). With no
  bar below (j = m; a lone bar, as in H2 of a sphere sampled without noise) the reference is
  the sampling scale `s`, estimated from the within-cluster H0 bars. Candidates are the
  splits after bars above a resolution floor, at most `max_features` of them: the floor is
  `s` (a loop or void shorter than the typical spacing of the sample cannot be told from a
  gap between samples), or, when lower, 4 times the mean lifetime of the dimension (exceeded
  by ~2% of exponential noise: in high-dimensional data, noise inflates the spacing `s` but
  not the lifetime of loops). The split with the smallest p counts when
  p < alpha / candidates (Bonferroni), else the dimension has no long bar. A bar dying at
  infinity (a truncated filtration) always counts.

Validated (tests/test_geometry_topology.py) on circles, two circles, a figure-eight, a sphere,
a torus and uniform noise blobs, several noise levels and seeds, with and without landmarks.
The rule needs a sample dense enough for the features to stand out of the sampling noise: a
torus sampled by a few hundred points is at the limit, and a noise of ~10% of its tube radius
is beyond it (its loops then merge with the H1 noise). An isolated outlier far from the rest is
a component at the sampling scale and may count in H0 (greedy landmarks pick outliers first):
remove outliers before calling `betti`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from latentjax.geometry._arrays import as_points, check_positive_int

__all__ = ["betti", "greedy_landmarks", "long_bars", "persistence", "persistence_memory_bytes"]

_BYTES_PER_ENTRY = 24  # ripser: a (diameter, index) pair per simplex entry in its hash maps
_RARE_MULTIPLE = 4.0  # exponential noise exceeds 4 times its mean with probability e^-4 ~ 2%


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

    Examples:
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


def _count_above_significant_gap(
    lifetimes: np.ndarray, scale: float, scale_count: int, alpha: float, max_features: int
) -> int:
    """How many of the finite `lifetimes` of one dimension lie above its most significant
    gap (module docstring); `scale` is the sampling scale, the mean of `scale_count` bars."""
    ordered = np.sort(lifetimes)[::-1]
    count = ordered.size
    if not count:
        return 0
    floor = min(scale, _RARE_MULTIPLE * ordered.mean())
    candidates = min(max_features, int(np.sum(ordered > floor)))
    if candidates == 0:
        return 0
    spacings = np.arange(1, count + 1) * -np.diff(ordered, append=0.0)
    best_p, best_split = 1.0, 0
    for split in range(1, candidates + 1):
        below = count - split
        reference, dof = (spacings[split:].mean(), below) if below else (scale, scale_count)
        if not dof:  # no bar below and no sampling scale to compare with
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            statistic = spacings[split - 1] / reference
        if np.isnan(statistic):  # no spacing over a zero scale: nothing stands out
            continue
        p_value = float(np.exp(-dof * np.log1p(statistic / dof)))
        if p_value < best_p:
            best_p, best_split = p_value, split
    return best_split if best_p < alpha / candidates else 0


def long_bars(
    diagrams: list[np.ndarray],
    *,
    min_gap: float = 1.5,
    max_features: int = 10,
    alpha: float = 0.05,
) -> list[np.ndarray]:
    """Per dimension, a bool mask `[bars]` of the bars `betti` counts as long (rule in the
    module docstring).

    Args:
      diagrams: `[bars, 2]` arrays of (birth, death) per dimension, H0 first (as returned by
        `persistence`).
      min_gap: H0 only: smallest ratio between the shortest long and the longest short merge.
      max_features: H0: the gap is looked for among this many longest bars; dimensions >= 1:
        at most this many candidate splits are tested.
      alpha: dimensions >= 1: level of each dimension's test (Bonferroni over its candidate
        splits).
    """
    if min_gap <= 1:
        raise ValueError(f"`min_gap` must be > 1, got {min_gap}")
    check_positive_int("max_features", max_features)
    if not 0 < alpha < 1:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha}")
    lifetimes = [np.asarray(d)[:, 1] - np.asarray(d)[:, 0] for d in diagrams]
    masks = [np.isinf(life) for life in lifetimes]

    merges = np.where(masks[0], 0.0, lifetimes[0])
    count = _count_above_largest_gap(merges, min_gap, max_features)
    if count:
        masks[0] |= merges >= np.sort(merges)[::-1][count - 1]
    within = merges[~masks[0]]
    scale, scale_count = (float(within.mean()), within.size) if within.size else (0.0, 0)

    for mask, life in zip(masks[1:], lifetimes[1:], strict=True):
        finite = np.flatnonzero(~mask)
        count = _count_above_significant_gap(life[finite], scale, scale_count, alpha, max_features)
        mask[finite[np.argsort(-life[finite], kind="stable")[:count]]] = True
    return masks


def betti(
    X: Any,
    *,
    maxdim: int = 1,
    n_points: int | None = 300,
    seed: int = 0,
    min_gap: float = 1.5,
    max_features: int = 10,
    alpha: float = 0.05,
    max_memory_gb: float = 8.0,
) -> tuple[int, ...]:
    """Betti numbers `(b0, ..., b_maxdim)` of the manifold sampled by `X`: the number of long
    bars per dimension in the persistence diagrams, each dimension decided on its own bars
    (rule and its noise model in the module docstring).

    Args:
      X: `[trials, time, dims]` or `[points, dims]`.
      maxdim: highest homology dimension (the tuple has `maxdim + 1` entries).
      n_points: landmarks for `persistence` (default 300; None keeps every point).
      seed: chooses the first landmark.
      min_gap: H0 only: smallest ratio between the shortest long and the longest short merge.
      max_features: H0: the gap is looked for among this many longest bars; dimensions >= 1:
        at most this many candidate splits are tested.
      alpha: level of the test of each dimension >= 1 (Bonferroni over its candidate splits):
        the chance that a dimension with noise only reports a long bar is at most ~alpha
        under the noise model.
      max_memory_gb: passed to `persistence`.

    Examples:
      >>> angle = np.random.default_rng(0).uniform(0, 2 * np.pi, 200)
      >>> betti(np.c_[np.cos(angle), np.sin(angle)])
      (1, 1)
    """
    diagrams = persistence(
        X, maxdim=maxdim, n_points=n_points, seed=seed, max_memory_gb=max_memory_gb
    )
    masks = long_bars(diagrams, min_gap=min_gap, max_features=max_features, alpha=alpha)
    return tuple(int(mask.sum()) for mask in masks)
