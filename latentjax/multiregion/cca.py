"""Canonical correlation analysis between two regions, with cross-validation.

Canonical directions `a_i`, `b_i` maximise corr(X a_i, Y b_i) subject to being uncorrelated with
the earlier pairs. Computed by whitening: with C_xx = L_x L_x^T (Cholesky, plus `ridge` times
the mean variance on the diagonal) and the SVD L_x^-1 C_xy L_y^-T = U diag(rho) V^T, the
correlations are `rho` and the directions a = L_x^-T U, b = L_y^-T V. Cross-validation fits the
directions on the training folds and reports the correlation of the held-out projections.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> shared = rng.standard_normal((1000, 1))
    >>> x = np.c_[shared, rng.standard_normal((1000, 3))]
    >>> y = np.c_[shared + rng.standard_normal((1000, 1)), rng.standard_normal((1000, 2))]
    >>> round(float(cca(x, y).correlations[0]), 2)
    0.7
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.model_selection import KFold

__all__ = ["CCAResult", "cca"]


class CCAResult(NamedTuple):
    """correlations `[M]` canonical correlations on all samples (descending);
    source_weights `[source_neurons, M]` and target_weights `[target_neurons, M]` the canonical
    directions (unit-variance projections); source_mean, target_mean: the centring;
    cv_correlations `[M]` held-out correlations averaged over folds (None without `folds`)."""

    correlations: np.ndarray
    source_weights: np.ndarray
    target_weights: np.ndarray
    source_mean: np.ndarray
    target_mean: np.ndarray
    cv_correlations: np.ndarray | None


def _as_samples(name: str, value) -> np.ndarray:
    array = np.asarray(value, np.float64)
    if array.ndim == 3:
        array = array.reshape(-1, array.shape[-1])
    if array.ndim != 2 or not np.all(np.isfinite(array)):
        raise ValueError(
            f"cca: `{name}` must be a finite [samples, neurons] or [trials, time, neurons] "
            f"array, got shape {array.shape}"
        )
    return array


def _whitener(centred, ridge):
    cov = centred.T @ centred / len(centred)
    cov += ridge * np.mean(np.diag(cov)) * np.eye(len(cov))
    return np.linalg.cholesky(cov)


def _fit(x, y, num_components, ridge):
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    lx, ly = _whitener(xc, ridge), _whitener(yc, ridge)
    cross = xc.T @ yc / len(xc)
    whitened = np.linalg.solve(lx, np.linalg.solve(ly, cross.T).T)
    left, rho, right_t = np.linalg.svd(whitened)
    a = np.linalg.solve(lx.T, left[:, :num_components])
    b = np.linalg.solve(ly.T, right_t.T[:, :num_components])
    return rho[:num_components], a, b, x_mean, y_mean


def cca(source, target, *, num_components=None, ridge: float = 0.0, folds=None, seed: int = 0):
    """Canonical correlations between `source` and `target`.

    Args:
      source: `[samples, source_neurons]` or `[trials, time, source_neurons]`.
      target: the same samples of the target region.
      num_components: number of canonical pairs (default: min of the neuron counts).
      ridge: diagonal loading of each covariance, as a fraction of its mean variance.
      folds: if given, the number of cross-validation folds for `cv_correlations`.
      seed: seeds the fold assignment.

    Returns:
      `CCAResult`.
    """
    x, y = _as_samples("source", source), _as_samples("target", target)
    if len(x) != len(y):
        raise ValueError(
            f"cca: `source` and `target` must share samples, got {len(x)} and {len(y)}"
        )
    limit = min(x.shape[1], y.shape[1])
    num_components = limit if num_components is None else num_components
    if not isinstance(num_components, (int, np.integer)) or not 1 <= num_components <= limit:
        raise ValueError(
            f"cca: `num_components` must be an int in 1..{limit}, got {num_components!r}"
        )
    if ridge < 0:
        raise ValueError(f"cca: `ridge` must be >= 0, got {ridge!r}")
    rho, a, b, x_mean, y_mean = _fit(x, y, num_components, ridge)
    cv = None
    if folds is not None:
        if not isinstance(folds, (int, np.integer)) or not 2 <= folds <= len(x):
            raise ValueError(f"cca: `folds` must be None or an int in 2..{len(x)}, got {folds!r}")
        scores = np.zeros((folds, num_components))
        splits = KFold(folds, shuffle=True, random_state=seed).split(x)
        for fold, (train, test) in enumerate(splits):
            _, fa, fb, fx, fy = _fit(x[train], y[train], num_components, ridge)
            u, v = (x[test] - fx) @ fa, (y[test] - fy) @ fb
            scores[fold] = [np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(num_components)]
        cv = scores.mean(0)
    return CCAResult(rho, a, b, x_mean, y_mean, cv)
