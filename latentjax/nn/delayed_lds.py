"""Linear Gaussian dynamics with delayed terms, as a first-order chain on stacked lags.

The latents `x_t` `[M]` follow a vector autoregression of order D (the largest delay),

    x_t = sum_{d=1..D} A_d x_{t-d} + w_t,    w_t ~ N(0, diag(q)),

which is the first-order Gauss-Markov chain `s_t = F s_{t-1} + (w_t, 0, ..., 0)` on the
stacked state `s_t = (x_t, x_{t-1}, ..., x_{t-D+1})` `[D*M]`, with F the companion matrix
of `A_1..A_D`. The initial state `s_0 = (x_0, x_{-1}, ..., x_{-D+1})` (the latents before
the first bin included) is N(0, I). Observations that read `x_t` only enter as Gaussian
potentials on the first block of `s_t` (`lift`), so the Kalman smoother of `nn.kalman`
gives the exact posterior (Gaussian observations) or each Newton step of a Laplace
approximation (Poisson), and its lag-one cross-covariances give every lagged second
moment `E[x_t x_{t-d}^T]` for d = 0..D (`lagged_gram`): the sufficient statistics of a
regression of `x_t` on its delayed past that accounts for the latents' uncertainty.

`regression_evidence` is the closed-form Bayesian linear regression with those expected
statistics: for one output with noise variance `sigma^2`, regressors z and prior
`w ~ N(0, diag(1 / prior_precision))`, the posterior `N(mu, Lambda^-1)` with
`Lambda = diag(prior_precision) + E[z z^T] / sigma^2`, `mu = Lambda^-1 E[z y] / sigma^2`, and
the log evidence `-n/2 log(2 pi sigma^2) - E[y^2] / (2 sigma^2) + mu^T Lambda mu / 2
- log det Lambda / 2 + log det diag(prior_precision) / 2`. With expected statistics it is the
evidence lower bound's structure-dependent part (the latents' entropy does not depend on
the regression), so comparing it across regressor sets compares model structures.

All functions work on one trial; callers vmap over trials.

Examples:
    >>> import jax.numpy as jnp
    >>> from latentjax.nn.delayed_lds import companion
    >>> companion(jnp.stack([0.5 * jnp.eye(1), 0.25 * jnp.eye(1)])).tolist()
    [[0.5, 0.25], [1.0, 0.0]]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from latentjax.nn.kalman import LatentPrior, Potentials

__all__ = [
    "RegressionPosterior",
    "companion",
    "extended_path",
    "lagged_gram",
    "lift",
    "path_log_prior",
    "prior",
    "regression_evidence",
    "stacked_path",
]

_LOG_2PI = 1.8378770664093453


def companion(lag_matrices) -> jax.Array:
    """`[D*M, D*M]` companion matrix of `lag_matrices` `[D, M, M]` (`A_d = lag_matrices[d-1]`)."""
    num_lags, size, _ = lag_matrices.shape
    top = jnp.concatenate(list(lag_matrices), axis=1)
    if num_lags == 1:
        return top
    shift = jnp.eye((num_lags - 1) * size, num_lags * size, dtype=lag_matrices.dtype)
    return jnp.concatenate([top, shift], axis=0)


def prior(lag_matrices, noise_variance, num_bins: int) -> LatentPrior:
    """The stacked chain's `LatentPrior` (zero mean, `s_0 ~ N(0, I)`).

    Args:
      lag_matrices: `[D, M, M]`; noise_variance: `[M]` (q).
      num_bins: T.
    """
    num_lags, size, _ = lag_matrices.shape
    state = num_lags * size
    dtype = lag_matrices.dtype
    noise = jnp.zeros((state, state), dtype).at[:size, :size].set(jnp.diag(noise_variance))
    return LatentPrior(
        jnp.zeros(state, dtype),
        jnp.eye(state, dtype=dtype),
        companion(lag_matrices),
        jnp.zeros((num_bins, state), dtype),
        noise,
    )


def lift(potentials: Potentials, num_lags: int) -> Potentials:
    """Potentials on `x_t` `[M]` as potentials on the stacked state `[D*M]` (first block)."""
    size = potentials.shift.shape[-1]
    pad = (num_lags - 1) * size
    widths = [(0, 0)] * (potentials.precision.ndim - 2) + [(0, pad), (0, pad)]
    return Potentials(
        jnp.pad(potentials.precision, widths),
        potentials.weight,
        jnp.pad(potentials.shift, [(0, 0), (0, pad)]),
        potentials.constant,
    )


def stacked_path(extended, num_lags: int) -> jax.Array:
    """`[T, D*M]` stacked states from the path `extended` `[T + D - 1, M]` (x_{-D+1}..x_{T-1})."""
    num_bins = extended.shape[0] - num_lags + 1
    return jnp.concatenate(
        [extended[num_lags - 1 - lag : num_lags - 1 - lag + num_bins] for lag in range(num_lags)],
        axis=-1,
    )


def extended_path(stacked, num_lags: int) -> jax.Array:
    """Inverse of `stacked_path`: `[T + D - 1, M]` from `[T, D*M]` (the first bin's lag blocks
    give the latents before the trial)."""
    size = stacked.shape[-1] // num_lags
    before = stacked[0].reshape(num_lags, size)[1:][::-1]  # x_{-D+1}, ..., x_{-1}
    return jnp.concatenate([before, stacked[:, :size]], axis=0)


def path_log_prior(lag_matrices, noise_variance, extended) -> jax.Array:
    """log density of a latent path `extended` `[T + D - 1, M]` under `prior`."""
    num_lags = lag_matrices.shape[0]
    num_bins = extended.shape[0] - num_lags + 1
    stacked = stacked_path(extended, num_lags)
    initial = -0.5 * jnp.sum(stacked[0] ** 2) - 0.5 * stacked.shape[-1] * _LOG_2PI
    predicted = jnp.einsum("tj,ij->ti", stacked[:-1], jnp.concatenate(list(lag_matrices), 1))
    residual = extended[num_lags:] - predicted  # x_1..x_{T-1}
    transitions = -0.5 * jnp.sum(residual**2 / noise_variance) - 0.5 * (num_bins - 1) * (
        jnp.sum(jnp.log(noise_variance)) + noise_variance.shape[0] * _LOG_2PI
    )
    return initial + transitions


def lagged_gram(means, covariances, cross_covariances, bin_mask, num_lags: int) -> jax.Array:
    """Expected lagged second moments of one trial, summed over its bins t = 1..T-1.

    Args:
      means: `[T, D*M]` smoothed stacked states; covariances: `[T, D*M, D*M]`;
      cross_covariances: `[T-1, D*M, D*M]` Cov(s_t, s_{t+1}); bin_mask: `[T]` (rows kept);
      num_lags: D.

    Returns:
      `[(D+1)*M, (D+1)*M]` sum over rows of E[v_t v_t^T], v_t = (x_t, x_{t-1}, ..., x_{t-D})
      (lag l in block l): s_t and the last block of s_{t-1}.
    """
    state = means.shape[-1]
    last = slice(state - state // num_lags, state)
    weight = bin_mask[1:].astype(means.dtype)
    vector = jnp.concatenate([means[1:], means[:-1, last]], axis=-1)
    cross = jnp.swapaxes(cross_covariances, -1, -2)[:, :, last]  # Cov(s_t, x_{t-D})
    top = jnp.concatenate([covariances[1:], cross], axis=-1)
    bottom = jnp.concatenate(
        [jnp.swapaxes(cross, -1, -2), covariances[:-1][:, last, last]], axis=-1
    )
    second = jnp.concatenate([top, bottom], axis=-2) + vector[:, :, None] * vector[:, None, :]
    return jnp.einsum("t,tpq->pq", weight, second)


class RegressionPosterior(NamedTuple):
    """Bayesian linear regression of one output on expected statistics.

    Attributes:
      log_evidence: scalar; mean: `[P]`; covariance: `[P, P]`;
      residual: scalar, E[sum of squared residuals] under the posterior.
    """

    log_evidence: jax.Array
    mean: jax.Array
    covariance: jax.Array
    residual: jax.Array


def regression_evidence(gram, cross, square, rows, prior_precision, noise_variance):
    """Posterior and log evidence of `y = w^T z + N(0, noise_variance)`, `w ~ N(0, diag(1 /
    prior_precision))`, from expected statistics (see the module docstring).

    Args:
      gram: `[P, P]` sum of E[z z^T]; cross: `[P]` sum of E[z y]; square: scalar sum of E[y^2];
      rows: number of rows n; prior_precision: `[P]`; noise_variance: scalar sigma^2.

    Returns:
      `RegressionPosterior`.
    """
    precision = jnp.diag(prior_precision) + gram / noise_variance
    root = jnp.linalg.cholesky(0.5 * (precision + precision.T))
    shift = cross / noise_variance
    white = jax.scipy.linalg.solve_triangular(root, shift, lower=True)
    inverse_root = jax.scipy.linalg.solve_triangular(
        root, jnp.eye(shift.shape[0], dtype=shift.dtype), lower=True
    )
    covariance = inverse_root.T @ inverse_root
    mean = covariance @ shift
    log_evidence = (
        -0.5 * rows * (_LOG_2PI + jnp.log(noise_variance))
        - 0.5 * square / noise_variance
        + 0.5 * jnp.sum(white**2)
        - jnp.sum(jnp.log(jnp.diagonal(root)))
        + 0.5 * jnp.sum(jnp.log(prior_precision))
    )
    residual = square - 2 * mean @ cross + mean @ gram @ mean + jnp.sum(gram * covariance)
    return RegressionPosterior(log_evidence, mean, covariance, residual)
