"""Consistency of embeddings across seeds, runs or sessions (CEBRA's score).

For embeddings `Z_1 .. Z_R` of the same samples (runs with different seeds), the score of the
ordered pair `(i, j)` is the R² (averaged over output dimensions) of the least-squares affine
map from `Z_i` to `Z_j`, fitted and scored on all samples:

    C[i, j] = R²(Z_j, A Z_i + b),   (A, b) = argmin |Z_j - A Z_i - b|²

For embeddings of different samples (sessions, animals), pass `labels` (a behaviour variable
per sample, e.g. the head angle): each embedding is first reduced to its mean in each of
`num_bins` equal-width bins of the label, and the bins all embeddings visit are compared.
The matrix has NaN on its diagonal; `mean` averages the off-diagonal entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from latentjax.metrics._checks import as_array, observed_bins

__all__ = ["Consistency", "consistency"]

_WHERE = "consistency"


class Consistency(NamedTuple):
    """`matrix` `[R, R]`: R² of predicting embedding j (column) from embedding i (row), NaN
    on the diagonal; `mean`: mean of the off-diagonal entries."""

    matrix: np.ndarray
    mean: float


def _points(index: int, embedding: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    array = as_array(_WHERE, f"embeddings[{index}]", embedding)
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{_WHERE}: `embeddings[{index}]` must be [trials, time, K] or [points, K], got "
            f"shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{_WHERE}: `embeddings[{index}]` holds NaN or Inf")
    observed = observed_bins(_WHERE, mask, array.shape[:-1])
    return array.reshape(-1, array.shape[-1]), observed.reshape(-1)


def _r2_affine(x: np.ndarray, y: np.ndarray) -> float:
    design = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = np.sum((y - design @ coefficients) ** 2, axis=0)
    total = np.sum((y - y.mean(axis=0)) ** 2, axis=0)
    return float(np.mean(1.0 - residual / np.maximum(total, 1e-300)))


def _binned(points, observed, labels, edges):
    index = np.clip(np.digitize(labels, edges[1:-1]), 0, len(edges) - 2)
    means = np.full((len(edges) - 1, points.shape[1]), np.nan)
    for b in np.unique(index[observed]):
        means[b] = points[observed & (index == b)].mean(axis=0)
    return means


def consistency(
    embeddings: Sequence[Any],
    *,
    labels: Sequence[Any] | None = None,
    num_bins: int = 100,
    masks: Sequence[Any] | None = None,
) -> Consistency:
    """CEBRA's consistency: affine-map R² between every ordered pair of embeddings.

    Args:
      embeddings: R >= 2 arrays `[trials, time, K]` or `[points, K]` (K may differ). Without
        `labels` they must hold the same samples (same leading shape).
      labels: one array per embedding, of its leading shape: a scalar behaviour variable per
        sample; embeddings are compared through their means in `num_bins` label bins.
      num_bins: bins of the labels' common range (with `labels`).
      masks: one `[trials, time]` bool array (or None) per embedding: observed samples.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> z = rng.normal(size=(500, 3))
      >>> round(consistency([z, z @ rng.normal(size=(3, 3)) + 1.0]).mean, 6)
      1.0
    """
    if isinstance(embeddings, np.ndarray) or not isinstance(embeddings, Sequence):
        raise ValueError(f"{_WHERE}: `embeddings` must be a sequence of arrays (one per run)")
    if len(embeddings) < 2:
        raise ValueError(f"{_WHERE}: `embeddings` needs at least 2 arrays, got {len(embeddings)}")
    count = len(embeddings)
    if masks is not None and len(masks) != count:
        raise ValueError(f"{_WHERE}: `masks` must hold {count} entries, got {len(masks)}")
    pairs = [_points(i, z, None if masks is None else masks[i]) for i, z in enumerate(embeddings)]
    if labels is None:
        shapes = {np.shape(z)[:-1] for z in embeddings}
        if len(shapes) > 1:
            raise ValueError(
                f"{_WHERE}: `embeddings` of different samples (leading shapes {sorted(shapes)}) "
                "need `labels` to be compared"
            )
        observed = np.logical_and.reduce([o for _, o in pairs])
        reduced = [p[observed] for p, _ in pairs]
    else:
        if len(labels) != count:
            raise ValueError(f"{_WHERE}: `labels` must hold {count} arrays, got {len(labels)}")
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
            raise ValueError(f"{_WHERE}: `num_bins` must be an int >= 2, got {num_bins!r}")
        flat = []
        for i, (label, (points, _)) in enumerate(zip(labels, pairs, strict=True)):
            label = as_array(_WHERE, f"labels[{i}]", label).reshape(-1)
            if label.shape[0] != points.shape[0]:
                raise ValueError(
                    f"{_WHERE}: `labels[{i}]` must have one value per sample of "
                    f"`embeddings[{i}]` ({points.shape[0]}), got {label.shape[0]}"
                )
            flat.append(label)
        lo = min(label.min() for label in flat)
        hi = max(label.max() for label in flat)
        edges = np.linspace(lo, hi, num_bins + 1)
        means = [_binned(p, o, lab, edges) for (p, o), lab in zip(pairs, flat, strict=True)]
        visited = np.logical_and.reduce([np.all(np.isfinite(m), axis=1) for m in means])
        reduced = [m[visited] for m in means]
    if reduced[0].shape[0] < 3:
        raise ValueError(f"{_WHERE}: fewer than 3 samples (or label bins) shared by all")
    matrix = np.full((count, count), np.nan)
    for i in range(count):
        for j in range(count):
            if i != j:
                matrix[i, j] = _r2_affine(reduced[i], reduced[j])
    return Consistency(matrix=matrix, mean=float(np.nanmean(matrix)))
