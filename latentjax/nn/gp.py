"""Gaussian-process latents: the exact posterior, its moments and the M-step updates shared
by GPFA and DLAG (latent trajectories with squared-exponential GP priors, linear-Gaussian
observations `y_t = C x_t + d + N(0, diag(R))`).

- `grouped_posterior`: the exact posterior of latent trajectories whose GP prior is
  independent across groups of latents (GPFA: groups of one; DLAG: delayed copies of one
  latent across regions), with `log p(y)`; `posterior_moments` its sufficient statistics.
- `kernel_factors`: the squared-exponential kernels and their Cholesky factors.
- `update_timescales`: damped Newton ascent on the log timescales; `observation_update`:
  closed-form `C`, `d`, `R`; `ppca_init`: probabilistic-PCA starting values.
- `expected_clipped`: posterior predictive rates of (square-root) counts.
- `over_trials`, `pooled_over_trials`: per-trial work done once when every trial has the
  same bin times (and observed bins): the prior and posterior covariances then do not
  depend on the trial, and the timescale objectives are linear in the summed moments.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax.scipy.stats import norm

__all__ = [
    "LINE_SEARCH",
    "Moments",
    "TrialPosterior",
    "check_em_knobs",
    "expected_clipped",
    "grouped_posterior",
    "held_out_score",
    "kernel_factors",
    "log_det",
    "moments_of_trials",
    "observation_update",
    "observations",
    "over_trials",
    "pooled_over_trials",
    "posterior_moments",
    "ppca_init",
    "time_covariances",
    "timescale_terms",
    "update_timescales",
]


def check_em_knobs(owner: str, gp_noise_variance, min_variance_fraction) -> None:
    """The GP noise variance must lie in (0, 1) and the variance floor in [0, 1); knobs may be
    traced scalars inside a population, so only concrete numbers are checked."""
    if isinstance(gp_noise_variance, numbers.Real) and not 0 < gp_noise_variance < 1:
        raise ValueError(
            f"{owner}: `gp_noise_variance` must lie in (0, 1), got {gp_noise_variance!r}"
        )
    if isinstance(min_variance_fraction, numbers.Real) and not 0 <= min_variance_fraction < 1:
        raise ValueError(
            f"{owner}: `min_variance_fraction` must lie in [0, 1), got {min_variance_fraction!r}"
        )


class TrialPosterior(NamedTuple):
    """Exact posterior of one trial's latent trajectories.

    Attributes:
      mean: `[time, latents]` posterior mean.
      covariance: `[latents * time, latents * time]` joint posterior covariance, ordered
        latent-major (index `k * time + t`).
      log_likelihood: scalar `log p(y_observed)` under the model (on the transformed scale).
    """

    mean: jax.Array
    covariance: jax.Array
    log_likelihood: jax.Array


def observations(spikes: jax.Array, sqrt_transform: bool) -> jax.Array:
    spikes = jnp.asarray(spikes, dtype=jnp.result_type(float))
    return jnp.sqrt(spikes) if sqrt_transform else spikes


def grouped_posterior(loadings, offset, noise_variance, chol_prior, y, mask) -> TrialPosterior:
    """Exact posterior of latent trajectories whose GP prior is independent across groups.

    The `P = G * C` latents come in `G` groups of `C` (GPFA: `C = 1`); latent `p = g * C + c`.
    Latents of one group may be correlated (DLAG's delayed copies of one latent), different
    groups are independent.

    Args:
      loadings: `[neurons, P]`; offset, noise_variance: `[neurons]`.
      chol_prior: `[G, C * time, C * time]` Cholesky factor of each group's prior covariance,
        ordered `c * time + t` within the group.
      y: `[time, neurons]`; mask: `[time]` bool, True where observed.

    Returns:
      `TrialPosterior` with mean `[time, P]` and covariance `[P * time, P * time]` latent-major.
    """
    num_groups, group_size, _ = chol_prior.shape
    num_bins = y.shape[0]
    num_copies = group_size // num_bins
    num_latents = num_groups * num_copies
    observed = mask.astype(y.dtype)
    precision = 1.0 / noise_variance

    residual = (y - offset) * observed[:, None]  # [T, N]
    projected = (residual * precision) @ loadings  # [T, P]: C' R^-1 (y_t - d)
    gain = (loadings.T * precision) @ loadings  # [P, P]: C' R^-1 C
    # I + L' J L with J = gain kron diag(mask), group blocks (g, h)
    chol_by_copy = chol_prior.reshape(num_groups, num_copies, num_bins, group_size)
    blocks = jnp.einsum(
        "gcta,gchd,t,hdtb->gahb",
        chol_by_copy,
        gain.reshape(num_groups, num_copies, num_groups, num_copies),
        observed,
        chol_by_copy,
    )
    size = num_latents * num_bins
    inner = jnp.eye(size, dtype=y.dtype) + blocks.reshape(size, size)
    chol_inner = jnp.linalg.cholesky(inner)

    chol_prior_full = jsl.block_diag(*chol_prior)  # [PT, PT], latent-major
    whitened = jsl.solve_triangular(chol_inner, chol_prior_full.T, lower=True)
    covariance = whitened.T @ whitened
    data_term = projected.T.reshape(size)
    mean = covariance @ data_term

    # log N(y_obs; d, A K A' + R) by the matrix determinant lemma and Woodbury identity.
    quad_reduced = jsl.solve_triangular(chol_inner, chol_prior_full.T @ data_term, lower=True)
    num_observed = observed.sum()
    log_likelihood = -0.5 * (
        num_observed * y.shape[1] * jnp.log(2.0 * jnp.pi)
        + num_observed * jnp.sum(jnp.log(noise_variance))
        + jnp.sum(residual**2 * precision)
        + log_det(chol_inner)
        - jnp.sum(quad_reduced**2)
    )
    return TrialPosterior(mean.reshape(num_latents, num_bins).T, covariance, log_likelihood)


class Moments(NamedTuple):
    """Per-trial expected sufficient statistics of the E-step."""

    num_observed: jax.Array  # scalar: observed bins
    sum_y: jax.Array  # [N]
    sum_y2: jax.Array  # [N]
    sum_yx: jax.Array  # [N, K+1]: sum_t y_t E[x_t; 1]'
    sum_xx: jax.Array  # [K+1, K+1]: sum_t E[(x_t; 1)(x_t; 1)']
    latent_second_moment: jax.Array  # [G, CT, CT]: E[z_g z_g'] per latent group (GPFA: [K, T, T])
    log_likelihood: jax.Array  # scalar


def time_covariances(covariance: jax.Array, num_latents: int) -> jax.Array:
    """`[time, K, K]` posterior covariance of `x_t` from the `[KT, KT]` joint covariance."""
    num_bins = covariance.shape[0] // num_latents
    blocks = covariance.reshape(num_latents, num_bins, num_latents, num_bins)
    bins = jnp.arange(num_bins)
    return blocks.transpose(1, 3, 0, 2)[bins, bins]


def posterior_moments(post: TrialPosterior, y, mask, num_groups: int) -> Moments:
    """Sufficient statistics of one trial's posterior; `latent_second_moment` per group
    `[G, C * time, C * time]` for latents in `num_groups` groups (see `grouped_posterior`)."""
    num_bins, num_latents = post.mean.shape
    group_size = num_latents * num_bins // num_groups
    observed = mask.astype(y.dtype)
    augmented = jnp.concatenate([post.mean, jnp.ones((num_bins, 1), y.dtype)], axis=1)
    time_cov = jnp.pad(time_covariances(post.covariance, num_latents), ((0, 0), (0, 1), (0, 1)))
    sum_xx = jnp.einsum("t,tk,tj->kj", observed, augmented, augmented) + jnp.einsum(
        "t,tkj->kj", observed, time_cov
    )
    blocks = post.covariance.reshape(num_groups, group_size, num_groups, group_size)
    groups = jnp.arange(num_groups)
    group_means = post.mean.T.reshape(num_groups, group_size)
    second_moment = blocks[groups, :, groups, :] + jnp.einsum(
        "ga,gb->gab", group_means, group_means
    )
    return Moments(
        num_observed=observed.sum(),
        sum_y=observed @ y,
        sum_y2=observed @ y**2,
        sum_yx=jnp.einsum("t,tn,tk->nk", observed, y, augmented),
        sum_xx=sum_xx,
        latent_second_moment=second_moment,
        log_likelihood=post.log_likelihood,
    )


def kernel_factors(log_timescales, times, gp_noise_variance):
    """`(lag^2 / tau^2, smooth part of the kernels, Cholesky factors)`, each `[K, T, T]`."""
    scaled = (times[:, None] - times[None, :]) ** 2 * jnp.exp(-2.0 * log_timescales)[:, None, None]
    smooth = (1.0 - gp_noise_variance) * jnp.exp(-0.5 * scaled)
    eye = jnp.eye(times.shape[0], dtype=smooth.dtype)
    return scaled, smooth, jnp.linalg.cholesky(smooth + gp_noise_variance * eye)


def log_det(chol):
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


def _timescale_value(log_timescales, times, second_moments, gp_noise_variance, counts=None):
    """`[K]` expected GP log-prior of each latent, summed over trials (see `timescale_terms`)."""
    if counts is None:
        counts = jnp.ones(times.shape[:1], second_moments.dtype)

    def per_trial(trial_times, moment, count):
        chol = kernel_factors(log_timescales, trial_times, gp_noise_variance)[2]
        solved = jax.vmap(lambda c, m: jsl.cho_solve((c, True), m))(chol, moment)
        return -0.5 * (count * log_det(chol) + jnp.trace(solved, axis1=1, axis2=2))

    return jax.vmap(per_trial)(times, second_moments, counts).sum(0)


def timescale_terms(log_timescales, times, second_moments, gp_noise_variance, counts=None):
    """Each latent's expected GP log-prior, summed over trials, and its first two derivatives.

    With `A = K^-1` and `S = E[x_k x_k']` of one trial, `f = -(log|K| + tr(A S)) / 2`,
    `f' = -tr((A - A S A) K') / 2` and
    `f'' = -(2 tr(A K' A S A K') - tr(A K' A K') + tr((A - A S A) K'')) / 2`, derivatives in
    `log(tau)`. Written out rather than by autodiff: XLA:CPU can deadlock on the gradient of a
    Cholesky factorisation inside the engine's compiled loop.

    Args:
      log_timescales: `[K]`.
      times: `[trials, time]` seconds.
      second_moments: `[trials, K, time, time]`.
      gp_noise_variance: `s2`.
      counts: `[trials]` how many trials each entry stands for (`pooled_over_trials`);
        default one each.

    Returns:
      `(value, first, second)`, each `[K]`.
    """
    if counts is None:
        counts = jnp.ones(times.shape[:1], second_moments.dtype)

    def per_trial(trial_times, moment, count):
        scaled, smooth, chol = kernel_factors(log_timescales, trial_times, gp_noise_variance)
        eye = jnp.eye(trial_times.shape[0], dtype=smooth.dtype)
        inverse = jax.vmap(lambda c: jsl.cho_solve((c, True), eye))(chol)
        projected = inverse @ moment @ inverse  # A S A
        first_kernel = smooth * scaled  # K'
        second_kernel = smooth * (scaled**2 - 2.0 * scaled)  # K''
        residual = count * inverse - projected
        inverse_first = inverse @ first_kernel  # A K'
        value = -0.5 * (count * log_det(chol) + jnp.sum(inverse * moment, axis=(1, 2)))
        first = -0.5 * jnp.sum(residual * first_kernel, axis=(1, 2))
        second = -0.5 * (
            2.0 * jnp.sum(inverse_first * jnp.swapaxes(projected @ first_kernel, 1, 2), (1, 2))
            - count * jnp.sum(inverse_first * jnp.swapaxes(inverse_first, 1, 2), axis=(1, 2))
            + jnp.sum(residual * second_kernel, axis=(1, 2))
        )
        return value, first, second

    return jax.tree.map(lambda x: x.sum(0), jax.vmap(per_trial)(times, second_moments, counts))


LINE_SEARCH = (1.0, 0.5, 0.25, 0.125, 0.0)
_MAX_LOG_STEP = 1.0


def update_timescales(log_timescales, times, second_moments, gp_noise_variance, newton_steps):
    """Damped Newton ascent on each latent's log timescale (the objective is separable).

    `times` `[trials, T]`, `second_moments` `[trials, K, T, T]`; trials sharing their times
    are pooled (`pooled_over_trials`)."""
    factors = jnp.asarray(LINE_SEARCH, log_timescales.dtype)

    def ascend(times, second_moments, counts):
        def value(theta):
            return _timescale_value(theta, times, second_moments, gp_noise_variance, counts)

        def newton_step(theta, _):
            _, grad, curvature = timescale_terms(
                theta, times, second_moments, gp_noise_variance, counts
            )
            ascent = jnp.where(curvature < 0, -grad / curvature, jnp.sign(grad) * _MAX_LOG_STEP)
            ascent = jnp.clip(ascent, -_MAX_LOG_STEP, _MAX_LOG_STEP)
            candidates = theta + factors[:, None] * ascent  # [candidates, K]
            values = jax.vmap(value)(candidates)
            values = jnp.where(jnp.isfinite(values), values, -jnp.inf)
            best = jnp.argmax(values, axis=0)  # ties go to the longest step
            return candidates[best, jnp.arange(theta.shape[0])], None

        return jax.lax.scan(newton_step, log_timescales, None, length=newton_steps)[0]

    return pooled_over_trials(ascend, times, second_moments)


def observation_update(total: Moments, min_variance_fraction, support=None):
    """Closed-form `(C, d, R)` from moments summed over trials.

    `support` `[neurons, K]` bool marks the loadings allowed to be non-zero (default: all);
    each neuron's regression then uses only its allowed latents. `R` is floored at
    `min_variance_fraction` times each neuron's variance.
    """
    if support is None:
        loadings_offset = jnp.linalg.solve(total.sum_xx, total.sum_yx.T).T  # [N, K+1]
    else:
        allowed = jnp.concatenate([support, jnp.ones((support.shape[0], 1), bool)], axis=1)
        allowed = allowed.astype(total.sum_xx.dtype)

        def regress(allow, sum_yx):
            system = total.sum_xx * allow[:, None] * allow[None, :] + jnp.diag(1.0 - allow)
            return jnp.linalg.solve(system, sum_yx * allow)

        loadings_offset = jax.vmap(regress)(allowed, total.sum_yx)
    residual_variance = (
        total.sum_y2 - jnp.sum(loadings_offset * total.sum_yx, axis=1)
    ) / total.num_observed
    mean_y = total.sum_y / total.num_observed
    floor = min_variance_fraction * (total.sum_y2 / total.num_observed - mean_y**2)
    floor = jnp.maximum(floor, jnp.finfo(floor.dtype).tiny)
    return loadings_offset[:, :-1], loadings_offset[:, -1], jnp.maximum(residual_variance, floor)


def expected_clipped(mean, variance, sqrt_transform: bool):
    """`E[max(y, 0)^2]` (sqrt scale) or `E[max(y, 0)]` for `y ~ N(mean, variance)`."""
    std = jnp.sqrt(variance)
    z = mean / std
    if sqrt_transform:
        return (mean**2 + variance) * norm.cdf(z) + mean * std * norm.pdf(z)
    return mean * norm.cdf(z) + std * norm.pdf(z)


def ppca_init(y, mask, latent_dim: int, min_variance_fraction):
    """Probabilistic-PCA `(loadings [N, K], offset [N], noise_variance [N])` from the observed
    bins (`mask` `[trials, time]`) of `y` `[trials, time, N]`: the top `latent_dim` principal
    components; noise variances floored at `min_variance_fraction` of each variance."""
    num_neurons = y.shape[-1]
    y = y.reshape(-1, num_neurons)
    weights = jnp.asarray(mask, y.dtype).reshape(-1)
    mean = weights @ y / weights.sum()
    centred = (y - mean) * jnp.sqrt(weights)[:, None]
    covariance = centred.T @ centred / weights.sum()
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    k = latent_dim
    residual = jnp.sum(eigenvalues[k:]) / max(num_neurons - k, 1)
    loadings = eigenvectors[:, :k] * jnp.sqrt(jnp.maximum(eigenvalues[:k] - residual, 1e-6))
    floor = jnp.maximum(min_variance_fraction * jnp.diag(covariance), 1e-6)
    noise_variance = jnp.maximum(jnp.diag(covariance) - jnp.sum(loadings**2, axis=1), floor)
    return loadings, mean, noise_variance


def over_trials(per_trial, y, times, mask):
    """`per_trial(y [T, N], times [T], mask [T])` vmapped over the trials of `y`
    `[trials, T, N]`, `times` `[trials, T]` and `mask` `[trials, T]`.

    When every trial has the same times and mask (equal-length trials, nothing missing: the
    common case), `times` and `mask` enter unbatched, so everything that depends only on
    them and the parameters (the prior's and the posterior's `(K T)^3` factorisations) is
    computed once rather than once per trial. The choice is made in the compiled program
    (`lax.cond`), so any trials give the same answer."""
    same = jnp.all(times == times[:1]) & jnp.all(mask == mask[:1])
    return jax.lax.cond(
        same,
        lambda: jax.vmap(per_trial, in_axes=(0, None, None))(y, times[0], mask[0]),
        lambda: jax.vmap(per_trial)(y, times, mask),
    )


def pooled_over_trials(objective, times, second_moments):
    """`objective(times [B, T], second_moments [B, ...], counts [B])`, an objective summed over
    trials that is linear in each trial's second moments once its moment-free terms are
    multiplied by `counts`; called on the `[trials, T]` times and `[trials, ...]` moments with
    counts of one, or, when every trial has the same times, once on the summed moments with
    a count of `trials` (same value, a `trials`-fold saving)."""
    num_trials = times.shape[0]
    dtype = second_moments.dtype
    return jax.lax.cond(
        jnp.all(times == times[:1]),
        lambda: objective(
            times[:1],
            second_moments.sum(0, keepdims=True),
            jnp.full((1,), num_trials, dtype),
        ),
        lambda: objective(times, second_moments, jnp.ones((num_trials,), dtype)),
    )


def moments_of_trials(trial_moments, params, data, sqrt_transform: bool, *shared):
    """Moments of every trial of `data` (a `Trials`) and the number of observed entries.

    `trial_moments(params, y [T, N], times [T], mask [T], *shared) -> Moments` is mapped
    over trials by `over_trials`; `shared` are the same for every trial."""
    y = observations(data.spikes, sqrt_transform)
    times = jnp.asarray(data.times, y.dtype)
    mask = jnp.asarray(data.mask)
    moments = over_trials(
        lambda y, times, mask: trial_moments(params, y, times, mask, *shared), y, times, mask
    )
    return moments, jnp.sum(mask) * y.shape[-1]


def held_out_score(moments: Moments, entries):
    """The validation score of a GP-latent model: the exact marginal `-log p(y_observed)`
    summed over trials, per observed entry; aux `{"log_likelihood"}`."""
    total = moments.log_likelihood.sum()
    return -total / entries, {"log_likelihood": total}
