"""Gaussian-process factor analysis (GPFA; Yu et al. 2009), fit by exact EM.

Model, for one trial with bin times `t_1 .. t_T` (seconds, `Trials.times`):

    x_k(.) ~ GP(0, kappa_k),   kappa_k(t, s) = (1 - s2) exp(-(t - s)^2 / (2 tau_k^2)) + s2 [t = s]
    y_t = C x_t + d + e_t,     e_t ~ N(0, diag(R))

for latents `k = 1 .. K`, with a learned timescale `tau_k` (seconds) per latent and a small fixed
GP noise variance `s2` (`Config.gp_noise_variance`, 1e-3 as in the paper). `y` is
`sqrt(counts)` (`Config.sqrt_transform`, the default) or the raw signal.

E-step: the exact Gaussian posterior over each latent's whole trajectory, `K*T` dimensions per
trial, in the numerically stable form of GP regression: with `L` the block-diagonal Cholesky
factor of the prior covariance and `J = (C' R^-1 C) kron diag(mask)` the likelihood precision,
`Sigma = L (I + L' J L)^-1 L'`; `O((K T)^3)` per trial, vmapped over trials. Bins with
`mask == False` are missing observations: they drop out of `J` and of the data term, and their
latents are inferred from the GP prior. M-step: closed form for `C`, `d` and `R` (floored at
`min_variance_fraction` times each neuron's variance); damped Newton steps on the log
timescales with a line search that never lowers the expected complete-data log-likelihood, so
the marginal log-likelihood is non-decreasing over EM iterations (generalised EM).

Example:
  >>> import latentjax as lj
  >>> from latentjax.models import gpfa
  >>> config = gpfa.Config(latent_dim=3)
  >>> result = lj.fit(config, trials)                       # doctest: +SKIP
  >>> posterior = lj.infer(result, trials)                  # doctest: +SKIP
  >>> posterior.latents.shape, posterior.timescales         # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax.scipy.stats import norm

from latentjax.data import Trials
from latentjax.results import Posterior
from latentjax.train import Fitter, TrainConfig

__all__ = [
    "Config",
    "check_em_knobs",
    "EMState",
    "GPFAParams",
    "TrialPosterior",
    "fitter",
    "init",
    "posterior",
    "trial_posterior",
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


@dataclasses.dataclass(frozen=True)
class Config:
    """GPFA hyperparameters.

    Attributes:
      latent_dim: number of latents `K` (at most the number of neurons).
      sqrt_transform: model `sqrt(counts)` rather than the counts (Yu et al.); requires counts.
      train: loop settings; `train.steps` is the number of EM iterations when `lj.fit` is
        given no `steps`, `train.chunk_size` the iterations per compiled chunk.
      initial_timescale: seconds; every latent starts near it (jittered by the init key).
      timescale_newton_steps: damped Newton steps on the log timescales per M-step.
      gp_noise_variance: `s2`, the small fixed GP noise variance (knob).
      min_variance_fraction: floor of each neuron's noise variance `R`, as a fraction of that
        neuron's variance of `y` (knob).
    """

    latent_dim: int = 3
    sqrt_transform: bool = True
    train: TrainConfig = TrainConfig(steps=200, chunk_size=50)
    initial_timescale: float = 0.1
    timescale_newton_steps: int = 3
    gp_noise_variance: float = dataclasses.field(default=1e-3, metadata={"knob": True})
    min_variance_fraction: float = dataclasses.field(default=0.01, metadata={"knob": True})

    def __post_init__(self):
        for name in ("latent_dim", "timescale_newton_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"gpfa.Config: `{name}` must be an integer >= 1, got {value!r}")
        if not isinstance(self.initial_timescale, numbers.Real) or not self.initial_timescale > 0:
            raise ValueError(
                f"gpfa.Config: `initial_timescale` must be a positive number of seconds, "
                f"got {self.initial_timescale!r}"
            )
        check_em_knobs("gpfa.Config", self.gp_noise_variance, self.min_variance_fraction)


class GPFAParams(NamedTuple):
    """GPFA parameters.

    Attributes:
      loadings: `C` `[neurons, latents]`.
      offset: `d` `[neurons]`.
      noise_variance: diagonal of `R` `[neurons]`.
      log_timescales: `log(tau)` `[latents]`, `tau` in seconds.
    """

    loadings: jax.Array
    offset: jax.Array
    noise_variance: jax.Array
    log_timescales: jax.Array


class EMState(NamedTuple):
    """State of the EM `Fitter`: just the parameters."""

    params: GPFAParams


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


def _observations(spikes: jax.Array, sqrt_transform: bool) -> jax.Array:
    spikes = jnp.asarray(spikes, dtype=jnp.result_type(float))
    return jnp.sqrt(spikes) if sqrt_transform else spikes


def trial_posterior(
    params: GPFAParams, y: jax.Array, times: jax.Array, mask: jax.Array, gp_noise_variance
) -> TrialPosterior:
    """Exact E-step for one trial.

    Args:
      params: `GPFAParams`.
      y: `[time, neurons]` observations (already square-rooted where the model says so).
      times: `[time]` seconds.
      mask: `[time]` bool, True where observed; other bins are missing observations.
      gp_noise_variance: the GP noise variance `s2`.
    """
    chol_prior = _kernel_factors(params.log_timescales, times, gp_noise_variance)[2]
    return _grouped_posterior(
        params.loadings, params.offset, params.noise_variance, chol_prior, y, mask
    )


def _grouped_posterior(loadings, offset, noise_variance, chol_prior, y, mask) -> TrialPosterior:
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
        + _log_det(chol_inner)
        - jnp.sum(quad_reduced**2)
    )
    return TrialPosterior(mean.reshape(num_latents, num_bins).T, covariance, log_likelihood)


class _Moments(NamedTuple):
    """Per-trial expected sufficient statistics of the E-step."""

    num_observed: jax.Array  # scalar: observed bins
    sum_y: jax.Array  # [N]
    sum_y2: jax.Array  # [N]
    sum_yx: jax.Array  # [N, K+1]: sum_t y_t E[x_t; 1]'
    sum_xx: jax.Array  # [K+1, K+1]: sum_t E[(x_t; 1)(x_t; 1)']
    latent_second_moment: jax.Array  # [G, CT, CT]: E[z_g z_g'] per latent group (GPFA: [K, T, T])
    log_likelihood: jax.Array  # scalar


def _time_covariances(covariance: jax.Array, num_latents: int) -> jax.Array:
    """`[time, K, K]` posterior covariance of `x_t` from the `[KT, KT]` joint covariance."""
    num_bins = covariance.shape[0] // num_latents
    blocks = covariance.reshape(num_latents, num_bins, num_latents, num_bins)
    bins = jnp.arange(num_bins)
    return blocks.transpose(1, 3, 0, 2)[bins, bins]


def _trial_moments(params, y, times, mask, gp_noise_variance) -> _Moments:
    post = trial_posterior(params, y, times, mask, gp_noise_variance)
    return _posterior_moments(post, y, mask, params.loadings.shape[1])


def _posterior_moments(post: TrialPosterior, y, mask, num_groups: int) -> _Moments:
    """Sufficient statistics of one trial's posterior; `latent_second_moment` per group
    `[G, C * time, C * time]` for latents in `num_groups` groups (see `_grouped_posterior`)."""
    num_bins, num_latents = post.mean.shape
    group_size = num_latents * num_bins // num_groups
    observed = mask.astype(y.dtype)
    augmented = jnp.concatenate([post.mean, jnp.ones((num_bins, 1), y.dtype)], axis=1)
    time_cov = jnp.pad(_time_covariances(post.covariance, num_latents), ((0, 0), (0, 1), (0, 1)))
    sum_xx = jnp.einsum("t,tk,tj->kj", observed, augmented, augmented) + jnp.einsum(
        "t,tkj->kj", observed, time_cov
    )
    blocks = post.covariance.reshape(num_groups, group_size, num_groups, group_size)
    groups = jnp.arange(num_groups)
    group_means = post.mean.T.reshape(num_groups, group_size)
    second_moment = blocks[groups, :, groups, :] + jnp.einsum(
        "ga,gb->gab", group_means, group_means
    )
    return _Moments(
        num_observed=observed.sum(),
        sum_y=observed @ y,
        sum_y2=observed @ y**2,
        sum_yx=jnp.einsum("t,tn,tk->nk", observed, y, augmented),
        sum_xx=sum_xx,
        latent_second_moment=second_moment,
        log_likelihood=post.log_likelihood,
    )


def _kernel_factors(log_timescales, times, gp_noise_variance):
    """`(lag^2 / tau^2, smooth part of the kernels, Cholesky factors)`, each `[K, T, T]`."""
    scaled = (times[:, None] - times[None, :]) ** 2 * jnp.exp(-2.0 * log_timescales)[:, None, None]
    smooth = (1.0 - gp_noise_variance) * jnp.exp(-0.5 * scaled)
    eye = jnp.eye(times.shape[0], dtype=smooth.dtype)
    return scaled, smooth, jnp.linalg.cholesky(smooth + gp_noise_variance * eye)


def _log_det(chol):
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


def _timescale_value(log_timescales, times, second_moments, gp_noise_variance):
    """`[K]` expected GP log-prior of each latent, summed over trials (see `_timescale_terms`)."""

    def per_trial(trial_times, moment):
        chol = _kernel_factors(log_timescales, trial_times, gp_noise_variance)[2]
        solved = jax.vmap(lambda c, m: jsl.cho_solve((c, True), m))(chol, moment)
        return -0.5 * (_log_det(chol) + jnp.trace(solved, axis1=1, axis2=2))

    return jax.vmap(per_trial)(times, second_moments).sum(0)


def _timescale_terms(log_timescales, times, second_moments, gp_noise_variance):
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

    Returns:
      `(value, first, second)`, each `[K]`.
    """

    def per_trial(trial_times, moment):
        scaled, smooth, chol = _kernel_factors(log_timescales, trial_times, gp_noise_variance)
        eye = jnp.eye(trial_times.shape[0], dtype=smooth.dtype)
        inverse = jax.vmap(lambda c: jsl.cho_solve((c, True), eye))(chol)
        projected = inverse @ moment @ inverse  # A S A
        first_kernel = smooth * scaled  # K'
        second_kernel = smooth * (scaled**2 - 2.0 * scaled)  # K''
        residual = inverse - projected
        inverse_first = inverse @ first_kernel  # A K'
        value = -0.5 * (_log_det(chol) + jnp.sum(inverse * moment, axis=(1, 2)))
        first = -0.5 * jnp.sum(residual * first_kernel, axis=(1, 2))
        second = -0.5 * (
            2.0 * jnp.sum(inverse_first * jnp.swapaxes(projected @ first_kernel, 1, 2), (1, 2))
            - jnp.sum(inverse_first * jnp.swapaxes(inverse_first, 1, 2), axis=(1, 2))
            + jnp.sum(residual * second_kernel, axis=(1, 2))
        )
        return value, first, second

    return jax.tree.map(lambda x: x.sum(0), jax.vmap(per_trial)(times, second_moments))


_LINE_SEARCH = (1.0, 0.5, 0.25, 0.125, 0.0)
_MAX_LOG_STEP = 1.0


def _update_timescales(log_timescales, times, second_moments, gp_noise_variance, newton_steps):
    """Damped Newton ascent on each latent's log timescale (the objective is separable)."""

    def value(theta):
        return _timescale_value(theta, times, second_moments, gp_noise_variance)

    factors = jnp.asarray(_LINE_SEARCH, log_timescales.dtype)

    def newton_step(theta, _):
        _, grad, curvature = _timescale_terms(theta, times, second_moments, gp_noise_variance)
        ascent = jnp.where(curvature < 0, -grad / curvature, jnp.sign(grad) * _MAX_LOG_STEP)
        ascent = jnp.clip(ascent, -_MAX_LOG_STEP, _MAX_LOG_STEP)
        candidates = theta + factors[:, None] * ascent  # [candidates, K]
        values = jax.vmap(value)(candidates)
        values = jnp.where(jnp.isfinite(values), values, -jnp.inf)
        best = jnp.argmax(values, axis=0)  # ties go to the longest step
        return candidates[best, jnp.arange(theta.shape[0])], None

    return jax.lax.scan(newton_step, log_timescales, None, length=newton_steps)[0]


def _observation_update(total: _Moments, min_variance_fraction, support=None):
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


def _m_step(params, moments: _Moments, times, config: Config) -> GPFAParams:
    total = jax.tree.map(lambda m: m.sum(0), moments)
    loadings, offset, noise_variance = _observation_update(total, config.min_variance_fraction)
    log_timescales = _update_timescales(
        params.log_timescales,
        times,
        moments.latent_second_moment,
        config.gp_noise_variance,
        config.timescale_newton_steps,
    )
    return GPFAParams(
        loadings=loadings,
        offset=offset,
        noise_variance=noise_variance,
        log_timescales=log_timescales,
    )


def _check_trials(function: str, config: Config, trials: Any) -> None:
    if not isinstance(trials, Trials):
        raise ValueError(f"gpfa.{function}: `trials` must be lj.Trials, got {type(trials)}")
    if config.sqrt_transform and trials.continuous:
        raise ValueError(
            f"gpfa.{function}: `config.sqrt_transform=True` needs spike counts, but `trials` "
            "holds continuous signals; use Config(sqrt_transform=False)"
        )


def init(key: jax.Array, config: Config, trials: Trials) -> GPFAParams:
    """Probabilistic-PCA initialisation from the observed bins of `trials`.

    `C`, `d`, `R` from the top `latent_dim` principal components of `y` pooled over observed
    bins; every log timescale `log(initial_timescale)` plus `0.1 * N(0, 1)` from `key`.
    """
    _check_trials("init", config, trials)
    if config.latent_dim > trials.num_neurons:
        raise ValueError(
            f"gpfa.init: `config.latent_dim` ({config.latent_dim}) exceeds the number of "
            f"neurons ({trials.num_neurons})"
        )
    y = _observations(trials.spikes, config.sqrt_transform).reshape(-1, trials.num_neurons)
    weights = jnp.asarray(trials.mask, y.dtype).reshape(-1)
    mean = weights @ y / weights.sum()
    centred = (y - mean) * jnp.sqrt(weights)[:, None]
    covariance = centred.T @ centred / weights.sum()
    eigenvalues, eigenvectors = jnp.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    k = config.latent_dim
    residual = jnp.sum(eigenvalues[k:]) / max(trials.num_neurons - k, 1)
    loadings = eigenvectors[:, :k] * jnp.sqrt(jnp.maximum(eigenvalues[:k] - residual, 1e-6))
    floor = jnp.maximum(config.min_variance_fraction * jnp.diag(covariance), 1e-6)
    noise_variance = jnp.maximum(jnp.diag(covariance) - jnp.sum(loadings**2, axis=1), floor)
    jitter = 0.1 * jax.random.normal(key, (k,), y.dtype)
    return GPFAParams(
        loadings=loadings,
        offset=mean,
        noise_variance=noise_variance,
        log_timescales=jnp.log(config.initial_timescale) + jitter,
    )


def fitter(config: Config) -> Fitter:
    """The EM `Fitter`: each step is one E-step (all trials, vmapped) and one M-step.

    `info` holds `log_likelihood` (of the parameters entering the step, summed over trials,
    on the transformed scale) and `loss`, its negative.
    """

    def init_state(params: GPFAParams, data: Trials) -> EMState:
        del data
        return EMState(params)

    def step(state: EMState, data: Trials, key: jax.Array) -> tuple[EMState, dict]:
        del key  # EM is deterministic
        y = _observations(data.spikes, config.sqrt_transform)
        times = jnp.asarray(data.times, y.dtype)
        moments = jax.vmap(_trial_moments, in_axes=(None, 0, 0, 0, None))(
            state.params, y, times, jnp.asarray(data.mask), config.gp_noise_variance
        )
        params = _m_step(state.params, moments, times, config)
        log_likelihood = moments.log_likelihood.sum()
        return EMState(params), {"loss": -log_likelihood, "log_likelihood": log_likelihood}

    return Fitter(init_state, step)


def _expected_clipped(mean, variance, sqrt_transform: bool):
    """`E[max(y, 0)^2]` (sqrt scale) or `E[max(y, 0)]` for `y ~ N(mean, variance)`."""
    std = jnp.sqrt(variance)
    z = mean / std
    if sqrt_transform:
        return (mean**2 + variance) * norm.cdf(z) + mean * std * norm.pdf(z)
    return mean * norm.cdf(z) + std * norm.pdf(z)


def posterior(
    params: GPFAParams, trials: Trials, config: Config, key: jax.Array | None = None
) -> Posterior:
    """Posterior latents and rates of `trials`.

    Returns a `Posterior` with
      latents: `[trials, time, K]` orthonormalised latents (Yu et al.): with `C = U S V'`,
        `S V' E[x_t]`, ordered by the variance of `y` they explain (largest first).
      rates: `[trials, time, neurons]` expected counts per bin. The observation `y_t` has
        posterior predictive `N(C E[x_t] + d, diag(C Cov[x_t] C') + R)`; counts are `y^2`
        under `sqrt_transform` (`y` otherwise), clipped at zero, so rates are
        `E[max(y_t, 0)^2]` (or `E[max(y_t, 0)]`), in closed form. The variance term matters:
        `sqrt(counts)` of a low-rate Poisson neuron is mostly 0 with variance near the rate.
      extras: `covariances` `[trials, time, K, K]` of the orthonormalised latents;
        `gp_latents` `[trials, time, K]` the latents in the GP basis, whose timescales are
        `timescales` `[K]` (seconds); `loadings` `[neurons, K]` (`U`, orthonormal columns);
        `log_likelihood` `[trials]`.
    """
    del key  # exact inference
    _check_trials("posterior", config, trials)
    if trials.num_neurons != params.loadings.shape[0]:
        raise ValueError(
            f"gpfa.posterior: `trials` has {trials.num_neurons} neurons, the model "
            f"{params.loadings.shape[0]}"
        )
    return _posterior(
        params,
        trials.spikes,
        trials.times,
        trials.mask,
        config.gp_noise_variance,
        sqrt_transform=config.sqrt_transform,
    )


@functools.partial(jax.jit, static_argnames="sqrt_transform")
def _posterior(params, spikes, times, mask, gp_noise_variance, *, sqrt_transform):
    y = _observations(spikes, sqrt_transform)
    times = jnp.asarray(times, y.dtype)
    num_latents = params.loadings.shape[1]

    def per_trial(y, times, mask):
        post = trial_posterior(params, y, times, mask, gp_noise_variance)
        return post.mean, _time_covariances(post.covariance, num_latents), post.log_likelihood

    means, covariances, log_likelihood = jax.vmap(per_trial)(y, times, jnp.asarray(mask))
    left, singular, right = jnp.linalg.svd(params.loadings, full_matrices=False)
    to_orthonormal = singular[:, None] * right  # [K, K]: x_orth = S V' x
    predicted = means @ params.loadings.T + params.offset
    predicted_variance = (
        jnp.einsum("nk,btkj,nj->btn", params.loadings, covariances, params.loadings)
        + params.noise_variance
    )
    return Posterior(
        latents=means @ to_orthonormal.T,
        rates=_expected_clipped(predicted, predicted_variance, sqrt_transform),
        extras={
            "covariances": jnp.einsum(
                "ik,btkj,lj->btil", to_orthonormal, covariances, to_orthonormal
            ),
            "gp_latents": means,
            "timescales": jnp.exp(params.log_timescales),
            "loadings": left,
            "log_likelihood": log_likelihood,
        },
    )
