"""Gaussian chains given in information form with block-tridiagonal precision, one trial.

The density is p(z) proportional to exp(-z^T J z / 2 + h^T z) over z = (z_0, ..., z_{T-1}),
z_t in R^K, with J block tridiagonal: diagonal blocks `diagonal` `[T, K, K]` (J_tt) and
upper blocks `upper` `[T-1, K, K]` (J_{t,t+1}; J_{t+1,t} is its transpose). This is the form
of any Gauss-Markov chain whose transition terms change over time, e.g. the state-weighted
dynamics of a switching LDS, and of the Newton systems of a Laplace E-step: there is no
(F, Q) pair per step to hand to a Kalman filter, so `solve` eliminates the blocks directly.

`solve` runs forward block elimination (a block Cholesky / information filter),
D~_0 = J_00, D~_t = J_tt - J_{t-1,t}^T D~_{t-1}^-1 J_{t-1,t}, h~_t = h_t - J_{t-1,t}^T
D~_{t-1}^-1 h~_{t-1}, then back substitution with z_t | z_{t+1} ~ N(D~_t^-1 (h~_t -
J_{t,t+1} z_{t+1}), D~_t^-1), giving the means, marginal covariances, lag-one
cross-covariances and log of the normaliser, all by `lax.scan`, O(T K^3).

Examples:
    >>> import jax.numpy as jnp
    >>> from latentjax.nn.block_tridiagonal import solve
    >>> diagonal = jnp.stack([2 * jnp.eye(2)] * 3)
    >>> upper = jnp.stack([-0.5 * jnp.eye(2)] * 2)
    >>> solve(diagonal, upper, jnp.ones((3, 2))).means.shape
    (3, 2)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["ChainGaussian", "quadratic_form", "solve"]

_LOG_2PI = 1.8378770664093453


class ChainGaussian(NamedTuple):
    """The moments of a block-tridiagonal Gaussian.

    Attributes:
      means: `[T, K]` J^-1 h.
      covariances: `[T, K, K]` marginal covariances.
      cross_covariances: `[T-1, K, K]` Cov(z_t, z_{t+1}).
      log_normalizer: scalar log of the integral of exp(-z^T J z / 2 + h^T z).
      log_det_precision: scalar log det J.
    """

    means: jax.Array
    covariances: jax.Array
    cross_covariances: jax.Array
    log_normalizer: jax.Array
    log_det_precision: jax.Array


def _symmetrize(matrix):
    return 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))


def solve(diagonal, upper, shift) -> ChainGaussian:
    """Moments of the Gaussian exp(-z^T J z / 2 + h^T z) (J positive definite).

    Args:
      diagonal: `[T, K, K]` blocks J_tt.
      upper: `[T-1, K, K]` blocks J_{t,t+1}.
      shift: `[T, K]` h.

    Returns:
      `ChainGaussian`.
    """
    num_latents = shift.shape[-1]
    below = jnp.concatenate([jnp.zeros_like(diagonal[:1]), upper], axis=0)  # J_{t-1,t}

    def forward(carry, inputs):
        previous_root, previous_shift = carry
        block, coupling, linear = inputs
        # J_{t-1,t}^T D~_{t-1}^-1 via the Cholesky factor of D~_{t-1}
        whitened = jax.scipy.linalg.solve_triangular(previous_root, coupling, lower=True)
        white_shift = jax.scipy.linalg.solve_triangular(previous_root, previous_shift, lower=True)
        reduced = _symmetrize(block - whitened.T @ whitened)
        reduced_shift = linear - whitened.T @ white_shift
        root = jnp.linalg.cholesky(reduced)
        return (root, reduced_shift), (root, reduced_shift)

    first_root = jnp.linalg.cholesky(_symmetrize(diagonal[0]))
    _, (roots, shifts) = lax.scan(
        forward, (first_root, shift[0]), (diagonal[1:], below[1:], shift[1:])
    )
    roots = jnp.concatenate([first_root[None], roots], axis=0)
    shifts = jnp.concatenate([shift[:1], shifts], axis=0)

    def inverse(root):
        identity = jnp.eye(num_latents, dtype=root.dtype)
        white = jax.scipy.linalg.solve_triangular(root, identity, lower=True)
        return white.T @ white

    inverses = jax.vmap(inverse)(roots)  # D~_t^-1
    last_mean = inverses[-1] @ shifts[-1]

    def backward(carry, inputs):
        next_mean, next_cov = carry
        reduced_inverse, reduced_shift, coupling = inputs
        gain = reduced_inverse @ coupling  # D~_t^-1 J_{t,t+1}
        mean = reduced_inverse @ reduced_shift - gain @ next_mean
        cross = -gain @ next_cov
        cov = _symmetrize(reduced_inverse + gain @ next_cov @ gain.T)
        return (mean, cov), (mean, cov, cross)

    _, (means, covs, crosses) = lax.scan(
        backward, (last_mean, inverses[-1]), (inverses[:-1], shifts[:-1], upper), reverse=True
    )
    means = jnp.concatenate([means, last_mean[None]], axis=0)
    covs = jnp.concatenate([covs, inverses[-1:]], axis=0)
    log_diagonals = jnp.log(jnp.diagonal(roots, axis1=-2, axis2=-1))
    log_det = 2 * jnp.sum(log_diagonals)
    white_shifts = jax.vmap(lambda root, s: jax.scipy.linalg.solve_triangular(root, s, lower=True))(
        roots, shifts
    )
    log_normalizer = 0.5 * jnp.sum(white_shifts**2) - 0.5 * log_det + 0.5 * shift.size * _LOG_2PI
    return ChainGaussian(means, covs, crosses, log_normalizer, log_det)


def quadratic_form(diagonal, upper, shift, path):
    """-z^T J z / 2 + h^T z.

    Args:
      diagonal: `[T, K, K]` blocks J_tt.
      upper: `[T-1, K, K]` blocks J_{t,t+1}.
      shift: `[T, K]` h.
      path: `[T, K]` z.

    Returns:
      scalar.
    """
    quadratic = jnp.einsum("ti,tij,tj->", path, diagonal, path) + 2 * jnp.einsum(
        "ti,tij,tj->", path[:-1], upper, path[1:]
    )
    return -0.5 * quadratic + jnp.sum(shift * path)
