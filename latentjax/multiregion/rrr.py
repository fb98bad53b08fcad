"""Reduced-rank regression: the communication subspace between two regions (Semedo et al. 2019).

The target activity `Y` `[samples, target_neurons]` is predicted from the source activity `X`
`[samples, source_neurons]` by a ridge regression whose coefficient matrix is constrained to
rank m:

    B_ridge = (X^T X + alpha I)^-1 X^T Y,     B_m = B_ridge V_m V_m^T

with `V_m` the top m right singular vectors of the ridge prediction `X B_ridge` (the rank-m
solution of the ridge-regularised problem, Mukherjee & Zhu 2011). The *predictive
dimensionality* is the smallest rank whose cross-validated R^2 is within one standard error
of the best rank's (Semedo's rule). `X` and `Y` are centred with the training folds' means.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((500, 10))
    >>> y = x @ rng.standard_normal((10, 2)) @ rng.standard_normal((2, 8))
    >>> rrr(x, y + 0.5 * rng.standard_normal((500, 8))).dimensionality
    2
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.model_selection import KFold

__all__ = ["RRRResult", "fit_rrr", "rrr"]


class RRRResult(NamedTuple):
    """ranks `[M]`; cv_r2 `[M]` mean cross-validated R^2 per rank (pooled over target neurons);
    cv_sem `[M]` its standard error over folds; dimensionality: the predictive dimensionality;
    coefficients `[source_neurons, target_neurons]` of the full-data fit at that rank;
    source_mean, target_mean: the centring; full_r2: cross-validated R^2 of full-rank ridge."""

    ranks: np.ndarray
    cv_r2: np.ndarray
    cv_sem: np.ndarray
    dimensionality: int
    coefficients: np.ndarray
    source_mean: np.ndarray
    target_mean: np.ndarray
    full_r2: float


def _as_samples(name: str, value) -> np.ndarray:
    array = np.asarray(value, np.float64)
    if array.ndim == 3:  # [trials, time, neurons]
        array = array.reshape(-1, array.shape[-1])
    if array.ndim != 2 or not np.all(np.isfinite(array)):
        raise ValueError(
            f"rrr: `{name}` must be a finite [samples, neurons] or [trials, time, neurons] "
            f"array, got shape {array.shape}"
        )
    return array


def fit_rrr(source, target, rank: int, *, alpha: float = 0.0) -> np.ndarray:
    """`[source_neurons, target_neurons]` rank-`rank` ridge regression coefficients of centred
    `target` `[samples, target_neurons]` on centred `source` `[samples, source_neurons]`."""
    gram = source.T @ source + alpha * np.eye(source.shape[1])
    ridge = np.linalg.solve(gram, source.T @ target)
    _, _, right = np.linalg.svd(source @ ridge, full_matrices=False)
    basis = right[:rank].T
    return ridge @ basis @ basis.T


def _r2(prediction, target) -> float:
    residual = np.sum((target - prediction) ** 2)
    return 1.0 - residual / np.sum((target - target.mean(0)) ** 2)


def rrr(source, target, *, max_rank=None, alpha: float = 0.0, folds: int = 10, seed: int = 0):
    """Communication subspace from `source` to `target` with a cross-validated rank.

    Args:
      source: `[samples, source_neurons]` or `[trials, time, source_neurons]`.
      target: the same samples of the target region.
      max_rank: largest rank tried (default: min of the neuron counts).
      alpha: ridge penalty.
      folds: cross-validation folds (contiguous blocks after a seeded shuffle of samples).
      seed: seeds the fold assignment.

    Returns:
      `RRRResult`.
    """
    x, y = _as_samples("source", source), _as_samples("target", target)
    if len(x) != len(y):
        raise ValueError(
            f"rrr: `source` and `target` must share samples, got {len(x)} and {len(y)}"
        )
    limit = min(x.shape[1], y.shape[1])
    max_rank = limit if max_rank is None else max_rank
    if not isinstance(max_rank, (int, np.integer)) or not 1 <= max_rank <= limit:
        raise ValueError(f"rrr: `max_rank` must be an int in 1..{limit}, got {max_rank!r}")
    if not isinstance(folds, (int, np.integer)) or not 2 <= folds <= len(x):
        raise ValueError(f"rrr: `folds` must be an int in 2..{len(x)}, got {folds!r}")
    if alpha < 0:
        raise ValueError(f"rrr: `alpha` must be >= 0, got {alpha!r}")
    ranks = np.arange(1, max_rank + 1)
    scores = np.zeros((folds, max_rank))
    full = np.zeros(folds)
    for fold, (train, test) in enumerate(KFold(folds, shuffle=True, random_state=seed).split(x)):
        x_mean, y_mean = x[train].mean(0), y[train].mean(0)
        xt, yt = x[train] - x_mean, y[train] - y_mean
        xs, ys = x[test] - x_mean, y[test] - y_mean
        for index, rank in enumerate(ranks):
            scores[fold, index] = _r2(xs @ fit_rrr(xt, yt, rank, alpha=alpha), ys)
        full[fold] = _r2(xs @ fit_rrr(xt, yt, limit, alpha=alpha), ys)
    mean, sem = scores.mean(0), scores.std(0, ddof=1) / np.sqrt(folds)
    best = int(np.argmax(mean))
    dimensionality = int(ranks[np.flatnonzero(mean >= mean[best] - sem[best])[0]])
    x_mean, y_mean = x.mean(0), y.mean(0)
    coefficients = fit_rrr(x - x_mean, y - y_mean, dimensionality, alpha=alpha)
    return RRRResult(
        ranks, mean, sem, dimensionality, coefficients, x_mean, y_mean, float(full.mean())
    )
