"""Kalman filtering and RTS smoothing in information form, for one trial.

The latent prior is linear Gaussian,

    z_0 ~ N(m_0, P_0),    z_t = F z_{t-1} + b_t + eps_t,   eps_t ~ N(0, Q),

and the observations enter only through Gaussian *potentials* on each latent,

    phi_t(z) = c_t + h_t^T z - z^T J_t z / 2,

with `J_t` `[K, K]` (information), `h_t` `[K]` (shift) and `c_t` a constant. A linear
Gaussian emission y_t = C z_t + d_t + N(0, diag(r)) with a per-entry observation mask m_t gives
J_t = C^T diag(m_t / r) C and h_t = C^T (m_t / r * (y_t - d_t)): with diagonal noise a filter
step never touches an N x N matrix, costs O(K^3) once J_t is known, and J_t = C^T R^-1 C is
shared by every fully observed bin (an unobserved bin has J_t = 0, h_t = 0: a pure prediction).
The Laplace E-step of the Poisson LDS calls the same smoother with the Newton potentials.

With M_t = I + L^T J_t L (L the Cholesky factor of the predicted covariance P_t) the update is
P_t|t = L M_t^-1 L^T, m_t|t = m_t + L M_t^-1 L^T (h_t - J_t m_t), and the log-likelihood of
the observed entries is c_t + h_t^T m_t - m_t^T J_t m_t / 2 + |M_t^-1/2 g_t|^2 / 2
- log det M_t / 2 with g_t = L^T (h_t - J_t m_t) (matrix determinant lemma and Woodbury).

The parallel option evaluates the same filter and smoother with `jax.lax.associative_scan`
(Särkkä and García-Fernández 2021, "Temporal parallelization of Bayesian smoothers"), with the
filtering elements written in information form so that they also avoid N x N inverses.

All functions here work on one trial; callers vmap over trials.

Batched LAPACK calls are sequenced with `_after`: on jax/jaxlib 0.10.2 (XLA:CPU) two
independent batched LAPACK custom calls that run at the same time can deadlock. Each splits
its batch over the intra-op thread pool (`jax::ParallelBatchMap`) and blocks a pool thread
waiting for its chunks; with two such calls on a 2-thread pool every thread waits and no
chunk runs (issue #27: the parallel smoother's log-likelihood Cholesky against its RTS gains'
LU). XLA:CPU runs the thunks of a program concurrently wherever their buffers do not
conflict, and `lax.optimization_barrier` does not order them (its output aliases its input),
so `_after` adds a real data dependency. Reduced reproducer, hangs within a few calls on
2 cores (and finishes with the second input passed through `_after(a, c)`):

    a = jnp.eye(16) * 2 + 0.1 * jax.random.normal(jax.random.PRNGKey(0), (10000, 16, 16))
    def f(s, a):
        c = jnp.linalg.cholesky(s)
        return c, jnp.linalg.solve(a, a)
    for i in range(20):
        jax.block_until_ready(jax.jit(f)(a @ jnp.swapaxes(a, -1, -2) + i, a + i))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "FilterResult",
    "LatentPrior",
    "Potentials",
    "SmootherResult",
    "filter_potentials",
    "filter_step",
    "smooth_potentials",
]

_LOG_2PI = 1.8378770664093453


class LatentPrior(NamedTuple):
    """The Gauss-Markov prior of one trial.

    Attributes:
      initial_mean: `[K]`; initial_cov: `[K, K]`.
      dynamics: `[K, K]` (F); offsets: `[T, K]` (b_t: bias plus input drive; entry 0 unused);
      dynamics_cov: `[K, K]` (Q).
    """

    initial_mean: jax.Array
    initial_cov: jax.Array
    dynamics: jax.Array
    offsets: jax.Array
    dynamics_cov: jax.Array


class Potentials(NamedTuple):
    """Gaussian observation potentials of one trial.

    Attributes:
      precision: `[K, K]` shared by all bins (then scaled by `weight`) or `[T, K, K]`.
      weight: `[T]` multiplies a shared `precision` (1 observed, 0 missing); ignored otherwise.
      shift: `[T, K]` (h_t).
      constant: `[T]` (c_t).
    """

    precision: jax.Array
    weight: jax.Array
    shift: jax.Array
    constant: jax.Array

    def per_step(self) -> jax.Array:
        """`[T, K, K]` information of every bin."""
        if self.precision.ndim == 3:
            return self.precision
        return self.weight[:, None, None] * self.precision


class FilterResult(NamedTuple):
    """Filtered marginals of one trial: `means` `[T, K]`, `covariances` `[T, K, K]`,
    `predicted_means` `[T, K]` and `predicted_covariances` `[T, K, K]` (of z_t given y_<t),
    `log_likelihood` (scalar, observed entries only)."""

    means: jax.Array
    covariances: jax.Array
    predicted_means: jax.Array
    predicted_covariances: jax.Array
    log_likelihood: jax.Array


class SmootherResult(NamedTuple):
    """Smoothed marginals of one trial: `means` `[T, K]`, `covariances` `[T, K, K]`,
    `cross_covariances` `[T-1, K, K]` (Cov(z_t, z_{t+1} | y)), `log_likelihood` (scalar),
    `filtered` (the `FilterResult`)."""

    means: jax.Array
    covariances: jax.Array
    cross_covariances: jax.Array
    log_likelihood: jax.Array
    filtered: FilterResult


def _after(value, *dependencies):
    """`value`, computed from only once `dependencies` are: orders two batched LAPACK calls
    that would otherwise run concurrently (see the module docstring).

    Each leaf of `value` gets an exact zero that reads one entry of each dependency (0 * an
    is-NaN flag: never NaN, and XLA does not fold a floating-point multiply by zero)."""
    firsts = [jnp.ravel(leaf)[0] for leaf in jax.tree.leaves(dependencies)]
    flag = sum(jnp.isnan(first).astype(jnp.float32) for first in firsts)
    return jax.tree.map(lambda leaf: leaf + (0 * flag).astype(leaf.dtype), value)


def _symmetrize(matrix):
    return 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))


def _condition(mean, cov, information, shift, constant):
    """Condition N(mean, cov) on one potential; return the posterior and the log-normaliser."""
    num_latents = mean.shape[-1]
    root = jnp.linalg.cholesky(cov)
    residual = shift - information @ mean
    gram = jnp.eye(num_latents) + root.T @ information @ root
    gram_root = jnp.linalg.cholesky(_symmetrize(gram))
    whitened = jax.scipy.linalg.solve_triangular(gram_root, root.T, lower=True)  # M^-1/2 L^T
    new_cov = whitened.T @ whitened
    new_mean = mean + new_cov @ residual
    projected = whitened @ residual
    log_normaliser = (
        constant
        + shift @ mean
        - 0.5 * mean @ information @ mean
        + 0.5 * projected @ projected
        - jnp.sum(jnp.log(jnp.diagonal(gram_root)))
    )
    return new_mean, _symmetrize(new_cov), log_normaliser


def _predict(mean, cov, prior: LatentPrior, offset):
    new_mean = prior.dynamics @ mean + offset
    new_cov = prior.dynamics @ cov @ prior.dynamics.T + prior.dynamics_cov
    return new_mean, _symmetrize(new_cov)


def filter_step(mean, cov, information, shift, dynamics, offset, dynamics_cov):
    """One bin of the Kalman filter, for streaming: condition, then predict the next bin.

    The same recursion as `filter_potentials` (which runs it over a whole trial), written
    for one bin so that a real-time decoder can carry `(mean, cov)` from bin to bin.

    Args:
      mean: `[K]` predicted mean of z_t given the bins before t.
      cov: `[K, K]` its covariance.
      information: `[K, K]` J_t of bin t's potential (zero for a missing bin).
      shift: `[K]` h_t of bin t's potential.
      dynamics: `[K, K]` (F); offset: `[K]` (b_{t+1}); dynamics_cov: `[K, K]` (Q).

    Returns:
      `(filtered_mean [K], filtered_cov [K, K], next_mean [K], next_cov [K, K])`: z_t given
      bins up to t, and the prediction of z_{t+1}.

    Examples:
      >>> import jax.numpy as jnp
      >>> from latentjax.nn.kalman import filter_step
      >>> eye = jnp.eye(2)
      >>> m, P, m_next, P_next = filter_step(jnp.zeros(2), eye, eye, jnp.ones(2),
      ...                                    0.5 * eye, jnp.zeros(2), eye)
      >>> m.round(4).tolist(), P_next[0, 0].round(4).item()  # N(0, I) given y = 1
      ([0.5, 0.5], 1.125)
    """
    filtered_mean, filtered_cov, _ = _condition(mean, cov, information, shift, 0.0)
    next_mean = dynamics @ filtered_mean + offset
    next_cov = _symmetrize(dynamics @ filtered_cov @ dynamics.T + dynamics_cov)
    return filtered_mean, filtered_cov, next_mean, next_cov


def _sequential_filter(prior: LatentPrior, potentials: Potentials) -> FilterResult:
    shared = potentials.precision.ndim == 2

    def step(carry, inputs):
        mean, cov = carry
        offset, information, shift, constant = inputs
        if shared:
            information = information * potentials.precision
        filtered_mean, filtered_cov, log_normaliser = _condition(
            mean, cov, information, shift, constant
        )
        next_mean, next_cov = _predict(filtered_mean, filtered_cov, prior, offset)
        return (next_mean, next_cov), (
            filtered_mean,
            filtered_cov,
            mean,
            cov,
            log_normaliser,
        )

    # the offset used after step t is b_{t+1}; the last prediction is discarded.
    next_offsets = jnp.concatenate([prior.offsets[1:], prior.offsets[-1:]], axis=0)
    informations = potentials.weight if shared else potentials.precision
    _, (means, covs, predicted_means, predicted_covs, log_normalisers) = lax.scan(
        step,
        (prior.initial_mean, prior.initial_cov),
        (next_offsets, informations, potentials.shift, potentials.constant),
    )
    return FilterResult(means, covs, predicted_means, predicted_covs, jnp.sum(log_normalisers))


def _filter_elements(prior: LatentPrior, potentials: Potentials):
    """The associative-scan elements (A, b, C, eta, J) of every bin, in information form."""
    num_latents = prior.initial_mean.shape[0]
    identity = jnp.eye(num_latents)
    informations = potentials.per_step()
    dynamics, noise = prior.dynamics, prior.dynamics_cov

    def element(information, shift, offset):
        # one solve with M = I + Q J; M^-T = I - J M^-1 Q (push-through) gives the rest
        solved = jnp.linalg.solve(
            identity + noise @ information,
            jnp.concatenate([dynamics, noise, (offset + noise @ shift)[:, None]], axis=1),
        )
        transition = solved[:, :num_latents]
        cov = _symmetrize(solved[:, num_latents:-1])
        mean = solved[:, -1]
        residual = shift - information @ offset
        eta = dynamics.T @ (residual - information @ (cov @ residual))
        info = _symmetrize(dynamics.T @ information @ transition)
        return transition, mean, cov, eta, info

    first_mean, first_cov, _ = _condition(
        prior.initial_mean, prior.initial_cov, informations[0], potentials.shift[0], 0.0
    )
    # the elements' batched LU waits for the first bin's Cholesky (batched under vmap)
    elements = jax.vmap(element)(
        *_after((informations[1:], potentials.shift[1:], prior.offsets[1:]), first_cov)
    )
    first = (
        jnp.zeros_like(dynamics),
        first_mean,
        first_cov,
        jnp.zeros_like(first_mean),
        jnp.zeros_like(first_cov),
    )
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b], axis=0), first, elements)


def _matvec(matrix, vector):
    return jnp.einsum("...ij,...j->...i", matrix, vector)


def _combine_filter_elements(earlier, later):
    transition_i, mean_i, cov_i, eta_i, info_i = earlier
    transition_j, mean_j, cov_j, eta_j, info_j = later
    identity = jnp.eye(mean_i.shape[-1])
    transition_j_t = jnp.swapaxes(transition_j, -1, -2)
    transition_i_t = jnp.swapaxes(transition_i, -1, -2)
    # one solve with (I + J_j C_i) for A_j (I + C_i J_j)^-1 (through its transpose),
    # (I + J_j C_i)^-1 J_j A_i and (I + J_j C_i)^-1 (eta_j - J_j b_i)
    num_latents = mean_i.shape[-1]
    solved = jnp.linalg.solve(
        identity + info_j @ cov_i,
        jnp.concatenate(
            [
                transition_j_t,
                info_j @ transition_i,
                (eta_j - _matvec(info_j, mean_i))[..., None],
            ],
            -1,
        ),
    )
    forward = jnp.swapaxes(solved[..., :num_latents], -1, -2)
    backward = solved[..., num_latents:]
    transition = forward @ transition_i
    mean = _matvec(forward, mean_i + _matvec(cov_i, eta_j)) + mean_j
    cov = _symmetrize(forward @ cov_i @ transition_j_t + cov_j)
    eta = _matvec(transition_i_t, backward[..., -1]) + eta_i
    info = _symmetrize(transition_i_t @ backward[..., :-1] + info_i)
    return transition, mean, cov, eta, info


def _parallel_filter(prior: LatentPrior, potentials: Potentials) -> FilterResult:
    elements = _filter_elements(prior, potentials)
    _, means, covs, _, _ = lax.associative_scan(_combine_filter_elements, elements)
    predicted_means = jnp.concatenate(
        [prior.initial_mean[None], means[:-1] @ prior.dynamics.T + prior.offsets[1:]], axis=0
    )
    predicted_covs = jnp.concatenate(
        [
            prior.initial_cov[None],
            _symmetrize(prior.dynamics @ covs[:-1] @ prior.dynamics.T + prior.dynamics_cov),
        ],
        axis=0,
    )
    _, _, log_normalisers = jax.vmap(_condition)(
        predicted_means,
        predicted_covs,
        potentials.per_step(),
        potentials.shift,
        potentials.constant,
    )
    return FilterResult(means, covs, predicted_means, predicted_covs, jnp.sum(log_normalisers))


def filter_potentials(
    prior: LatentPrior, potentials: Potentials, *, parallel: bool = False
) -> FilterResult:
    """Kalman filter of one trial (sequential `lax.scan`, or `associative_scan` if parallel)."""
    if parallel:
        return _parallel_filter(prior, potentials)
    return _sequential_filter(prior, potentials)


def _smoother_gains(prior: LatentPrior, filtered: FilterResult):
    """RTS gains G_t = P_t|t F^T P_t+1|t^-1 `[T-1, K, K]`."""
    cross = filtered.covariances[:-1] @ prior.dynamics.T
    gains = jnp.linalg.solve(filtered.predicted_covariances[1:], jnp.swapaxes(cross, -1, -2))
    return jnp.swapaxes(gains, -1, -2)


def _sequential_smoother(prior: LatentPrior, filtered: FilterResult, gains):
    def step(carry, inputs):
        next_mean, next_cov = carry
        gain, mean, cov, predicted_mean, predicted_cov = inputs
        smoothed_mean = mean + gain @ (next_mean - predicted_mean)
        smoothed_cov = _symmetrize(cov + gain @ (next_cov - predicted_cov) @ gain.T)
        return (smoothed_mean, smoothed_cov), (smoothed_mean, smoothed_cov)

    last = (filtered.means[-1], filtered.covariances[-1])
    _, (means, covs) = lax.scan(
        step,
        last,
        (
            gains,
            filtered.means[:-1],
            filtered.covariances[:-1],
            filtered.predicted_means[1:],
            filtered.predicted_covariances[1:],
        ),
        reverse=True,
    )
    means = jnp.concatenate([means, last[0][None]], axis=0)
    covs = jnp.concatenate([covs, last[1][None]], axis=0)
    return means, covs


def _combine_smoother_elements(later, earlier):
    gain_j, mean_j, cov_j = later
    gain_i, mean_i, cov_i = earlier
    gain = gain_i @ gain_j
    mean = jnp.einsum("...ij,...j->...i", gain_i, mean_j) + mean_i
    cov = _symmetrize(gain_i @ cov_j @ jnp.swapaxes(gain_i, -1, -2) + cov_i)
    return gain, mean, cov


def _parallel_smoother(prior: LatentPrior, filtered: FilterResult, gains):
    means = filtered.means[:-1] - jnp.einsum("tij,tj->ti", gains, filtered.predicted_means[1:])
    covs = _symmetrize(
        filtered.covariances[:-1]
        - gains @ filtered.predicted_covariances[1:] @ jnp.swapaxes(gains, -1, -2)
    )
    elements = (
        jnp.concatenate([gains, jnp.zeros_like(gains[:1])], axis=0),
        jnp.concatenate([means, filtered.means[-1:]], axis=0),
        jnp.concatenate([covs, filtered.covariances[-1:]], axis=0),
    )
    _, means, covs = lax.associative_scan(_combine_smoother_elements, elements, reverse=True)
    return means, covs


def smooth_potentials(
    prior: LatentPrior, potentials: Potentials, *, parallel: bool = False
) -> SmootherResult:
    """RTS smoother of one trial, with the lag-one cross-covariances for EM."""
    filtered = filter_potentials(prior, potentials, parallel=parallel)
    if filtered.means.shape[0] == 1:
        num_latents = filtered.means.shape[-1]
        empty = jnp.zeros((0, num_latents, num_latents), filtered.means.dtype)
        return SmootherResult(
            filtered.means, filtered.covariances, empty, filtered.log_likelihood, filtered
        )
    # The gains' batched LU waits for the parallel filter's batched log-likelihood Cholesky.
    # Not after the sequential filter (its Choleskys ran inside its loop): there `_after` would
    # make the covariances depend on the data, and trials that share parameters and masks
    # would no longer share their covariances under vmap (12x slower for 100 trials).
    gains = _smoother_gains(
        prior, _after(filtered, filtered.log_likelihood) if parallel else filtered
    )
    smooth = _parallel_smoother if parallel else _sequential_smoother
    means, covs = smooth(prior, filtered, gains)
    cross_covs = gains @ covs[1:]
    return SmootherResult(means, covs, cross_covs, filtered.log_likelihood, filtered)
