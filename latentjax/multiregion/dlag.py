"""Delayed latents across groups (DLAG; Gokcen et al. 2022), fit by exact EM.

Model, for one trial with bin times `t_1 .. t_T` (seconds) and regions `r = 1 .. R` (the
labels of `Trials.regions`, in order of first appearance; region 1 is the reference):

    x_j(.) ~ GP(0, kappa_j),     j = 1 .. A    (across-region latents, `across_dim`)
    w_rk(.) ~ GP(0, kappa_rk),   k = 1 .. W    (within-region latents, `within_dim` per region)
    y_r(t) = C_r^a x(t - D_r) + C_r^w w_r(t) + d_r + e_r(t),   e_r ~ N(0, diag(R_r))

with squared-exponential kernels `kappa(t, s) = (1 - s2) exp(-(t - s)^2 / (2 tau^2)) + s2 [t = s]`
(timescale `tau` in seconds, small fixed GP noise variance `s2` as in GPFA). Region `r` sees
across latent `j` delayed by `D_rj` seconds, `x_j(t - D_rj)`, with `D_1j = 0`: `D_rj > 0` means
region `r` lags region 1 (signal flows 1 -> r). `y` is `sqrt(counts)` (`sqrt_transform`, the
default) or the raw signal. Delays are bounded, `|D_rj| <= max_delay`.

Latent layout. Each region keeps its own (delayed) copy of every across latent,
`x_j^(r)(t) = x_j(t - D_rj)`, so the observation model is GPFA's with a block-structured
loading matrix and latents in `G = A + W` groups of `R` copies (`latentjax.nn.gp`):
group `j < A` holds `x_j^(1..R)`, whose prior covariance between region `r` at `t` and region
`r'` at `t'` is `(1 - s2) exp(-(t - D_rj - t' + D_r'j)^2 / (2 tau_j^2)) + s2 [r = r', t = t']`;
group `A + k` holds `w_1k .. w_Rk`, independent across regions. Internal latent index
`p = g * R + r`.

EM. E-step: GPFA's exact joint Gaussian posterior over every latent's whole trajectory per
trial (`O((G R T)^3)`), with missing bins (`Trials.mask == False`) dropped from the likelihood.
M-step: `C`, `d`, `R` in closed form (each neuron regresses on its own region's latents only;
`R` floored as in GPFA); within-region timescales by GPFA's damped Newton steps; each across
latent's `(log tau_j, D_2j .. D_Rj)` by damped Newton steps on its expected GP log-prior, with
a line search that includes the null step, delays projected into `[-max_delay, max_delay]`.
No step lowers the expected complete-data log-likelihood, so the marginal log-likelihood is
non-decreasing over iterations (generalised EM).

Differences from the paper's implementation: `within_dim` is the same for every region; the
GP noise variance `s2` is one fixed value for all latents (the paper has separate ones for
across and within latents), added on the diagonal of each region's copy (so it does not
depend on the delays); the initialisation is probabilistic PCA (across loadings from the whole
population, within loadings from each region's residual), not the paper's pCCA/FA, with delays
started at the peak of lagged correlations between the regions' projections (`init`); there
is no cross-validated choice of dimensionalities and no delay/timescale uncertainty.

Convergence: with a small `s2` the posterior ties each region's copy of an across latent
tightly to the current delays, so EM moves delays by small steps (on simulated data, a few
hundredths of a bin per iteration at first); expect a few hundred iterations for delays to
settle (`FitResult.history["log_likelihood"]` flattens).

Examples:
  >>> import latentjax as lj
  >>> data = lj.datasets.multiregion(num_regions=2, edges=((0, 1),), delays=(2,),
  ...                                num_trials=10, num_bins=30)
  >>> config = lj.multiregion.dlag.Config(
  ...     across_dim=1, within_dim=1, max_delay=0.05, train=lj.train.TrainConfig(steps=5))
  >>> result = lj.fit(config, data.trials, progress=False)
  >>> posterior = lj.infer(result, data.trials)
  >>> posterior.delays_bins.shape  # [R, across_dim]: row 0 is 0; > 0 where R1 lags R0
  (2, 1)
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

from latentjax.data import Trials
from latentjax.nn import gp
from latentjax.nn.em import EStep, em_fitter
from latentjax.results import Posterior
from latentjax.train import Fitter, TrainConfig, knob

__all__ = [
    "Config",
    "DLAGParams",
    "fitter",
    "init",
    "posterior",
    "trial_posterior",
    "validation_loss",
]


@dataclasses.dataclass(frozen=True)
class Config:
    """DLAG hyperparameters.

    Attributes:
      across_dim: across-region latents `A` (>= 1), shared by all regions with delays.
      within_dim: within-region latents `W` of every region (>= 0).
      max_delay: bound on every delay `|D_rj|`, in seconds.
      sqrt_transform: model `sqrt(counts)` rather than the counts; requires counts.
      train: loop settings; `train.steps` is the number of EM iterations when `lj.fit` is
        given no `steps`, `train.chunk_size` the iterations per compiled chunk (and per line of
        `FitResult.history`).
      initial_timescale: seconds; every timescale starts near it (jittered by the init key).
      newton_steps: damped Newton steps on timescales and delays per M-step.
      gp_noise_variance: `s2`, the small fixed GP noise variance (knob).
      min_variance_fraction: floor of each neuron's noise variance `R`, as a fraction of that
        neuron's variance of `y` (knob).
    """

    across_dim: int = 1
    within_dim: int = 1
    max_delay: float = 0.1
    sqrt_transform: bool = True
    train: TrainConfig = TrainConfig(steps=200, chunk_size=10)
    initial_timescale: float = 0.1
    newton_steps: int = 3
    gp_noise_variance: float = knob(1e-3, "positive")
    min_variance_fraction: float = knob(0.01, "positive")

    def __post_init__(self):
        for name, minimum in (("across_dim", 1), ("within_dim", 0), ("newton_steps", 1)):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Integral)
                or value < minimum
            ):
                raise ValueError(
                    f"dlag.Config: `{name}` must be an integer >= {minimum}, got {value!r}"
                )
        for name in ("max_delay", "initial_timescale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(
                    f"dlag.Config: `{name}` must be a positive number of seconds, got {value!r}"
                )
        gp.check_em_knobs("dlag.Config", self.gp_noise_variance, self.min_variance_fraction)


class DLAGParams(NamedTuple):
    """DLAG parameters (`R` regions, `A` across and `W` within latents per region).

    Attributes:
      across_loadings: `C^a` `[neurons, A]`; each neuron reads its own region's copy.
      within_loadings: `C^w` `[neurons, W]`; each neuron reads its own region's latents.
      offset: `d` `[neurons]`.
      noise_variance: diagonal of `R` `[neurons]`.
      log_across_timescales: `log(tau_j)` `[A]`, `tau` in seconds.
      log_within_timescales: `log(tau_rk)` `[R, W]`.
      delays: `D` `[R, A]` seconds; row 0 (the reference region) stays 0.
    """

    across_loadings: jax.Array
    within_loadings: jax.Array
    offset: jax.Array
    noise_variance: jax.Array
    log_across_timescales: jax.Array
    log_within_timescales: jax.Array
    delays: jax.Array


def _region_index(caller: str, trials: Trials) -> np.ndarray:
    """`[neurons]` int region of each neuron (0 = the first region in `trials.region_names`)."""
    names = trials.region_names
    if len(names) < 2:
        raise ValueError(
            f"dlag.{caller}: `trials.regions` must label the neurons with at least 2 regions, "
            f"got {list(names) if names else None}"
        )
    return np.asarray([names.index(label) for label in trials.regions])


def _full_loadings(params: DLAGParams, region_index) -> jax.Array:
    """`[neurons, G * R]` loadings on the internal latents `p = g * R + r` (zero off-region)."""
    num_regions = params.delays.shape[0]
    loadings = jnp.concatenate([params.across_loadings, params.within_loadings], axis=1)
    own_region = jax.nn.one_hot(region_index, num_regions, dtype=loadings.dtype)  # [N, R]
    return (loadings[:, :, None] * own_region[:, None, :]).reshape(loadings.shape[0], -1)


def _across_kernel(log_timescale, delays, times, gp_noise_variance):
    """`[R * T, R * T]` prior covariance of one across latent's copies, ordered `r * T + t`.

    `delays` `[R]` seconds; the copy of region `r` at bin `t` is `x(times[t] - delays[r])`.
    """
    shifted = (times[None, :] - delays[:, None]).reshape(-1)
    lag = shifted[:, None] - shifted[None, :]
    smooth = (1.0 - gp_noise_variance) * jnp.exp(-0.5 * lag**2 * jnp.exp(-2.0 * log_timescale))
    return smooth + gp_noise_variance * jnp.eye(shifted.shape[0], dtype=smooth.dtype)


def _prior_cholesky(params: DLAGParams, times, gp_noise_variance) -> jax.Array:
    """`[G, R * T, R * T]` Cholesky factors of the groups' prior covariances."""
    num_regions, num_within = params.log_within_timescales.shape
    covariances = [
        jax.vmap(_across_kernel, in_axes=(0, 1, None, None))(
            params.log_across_timescales, params.delays, times, gp_noise_variance
        )
    ]
    if num_within:
        log_within = params.log_within_timescales.T.reshape(-1)  # [W * R], index k * R + r
        within = gp.kernel_factors(log_within, times, gp_noise_variance)[1]  # smooth part
        within = within.reshape(num_within, num_regions, times.shape[0], times.shape[0])
        eye = jnp.eye(num_regions, dtype=within.dtype)
        size = num_regions * times.shape[0]
        within = jnp.einsum("krts,rq->krtqs", within, eye).reshape(num_within, size, size)
        covariances.append(within + gp_noise_variance * jnp.eye(size, dtype=within.dtype))
    return jnp.linalg.cholesky(jnp.concatenate(covariances, axis=0))


def trial_posterior(
    params: DLAGParams, y, times, mask, region_index, gp_noise_variance
) -> gp.TrialPosterior:
    """Exact E-step for one trial.

    Args:
      params: `DLAGParams`.
      y: `[time, neurons]` observations (already square-rooted where the model says so).
      times: `[time]` seconds; mask: `[time]` bool, True where observed.
      region_index: `[neurons]` int region of each neuron (0 = reference region).
      gp_noise_variance: the GP noise variance `s2`.

    Returns:
      `gp.TrialPosterior`: mean `[time, G * R]` of the internal latents `p = g * R + r`
      (`g < A`: across latent `g` as seen by region `r`; `g = A + k`: within latent `k` of
      region `r`), covariance `[G R T, G R T]` (index `p * T + t`), and `log p(y_observed)`.
    """
    chol_prior = _prior_cholesky(params, times, gp_noise_variance)
    loadings = _full_loadings(params, region_index)
    return gp.grouped_posterior(loadings, params.offset, params.noise_variance, chol_prior, y, mask)


def _trial_moments(params, y, times, mask, region_index, gp_noise_variance) -> gp.Moments:
    post = trial_posterior(params, y, times, mask, region_index, gp_noise_variance)
    num_groups = params.across_loadings.shape[1] + params.within_loadings.shape[1]
    return gp.posterior_moments(post, y, mask, num_groups)


def _across_prior_value(theta, times, second_moments, dt, gp_noise_variance, counts):
    """Expected GP log-prior of one across latent, summed over trials.

    `theta` `[R]` = `(log tau, D_2 / dt, .., D_R / dt)`: delays in bins, so that one step size
    suits every bin width; `second_moments` `[trials, R T, R T]`; `counts` `[trials]` the
    trials each entry stands for (`gp.pooled_over_trials`).
    """

    def per_trial(trial_times, moment, count):
        chol = jnp.linalg.cholesky(_theta_kernel(theta, trial_times, dt, gp_noise_variance))
        solved = jsl.cho_solve((chol, True), moment)
        return -0.5 * (count * gp.log_det(chol) + jnp.trace(solved))

    return jax.vmap(per_trial)(times, second_moments, counts).sum()


def _theta_kernel(theta, times, dt, gp_noise_variance):
    delays = jnp.concatenate([jnp.zeros(1, theta.dtype), theta[1:] * dt])
    return _across_kernel(theta[0], delays, times, gp_noise_variance)


def _across_prior_terms(theta, times, second_moments, dt, gp_noise_variance, counts):
    """Gradient `[R]` and Hessian `[R, R]` of `_across_prior_value` in `theta`.

    With `A = K^-1`, `S = E[x x']` of one trial and `K_i`, `K_ij` the kernel's derivatives,
    `f_i = -tr((A - A S A) K_i) / 2` and
    `f_ij = -(2 tr(A K_i A S A K_j) - tr(A K_i A K_j) + tr((A - A S A) K_ij)) / 2`.
    The kernel's derivatives come from autodiff of the elementwise kernel; the Cholesky
    factorisation is never differentiated (XLA:CPU can deadlock on that gradient inside the
    engine's compiled loop, see `gp.timescale_terms`).
    """

    def kernel(th, trial_times):
        return _theta_kernel(th, trial_times, dt, gp_noise_variance)

    def per_trial(trial_times, moment, count):
        matrix = kernel(theta, trial_times)
        first_kernel = jnp.moveaxis(jax.jacfwd(kernel)(theta, trial_times), -1, 0)  # [R, S, S]
        second_kernel = jnp.moveaxis(
            jax.jacfwd(jax.jacfwd(kernel))(theta, trial_times), (-2, -1), (0, 1)
        )
        chol = jnp.linalg.cholesky(matrix)
        inverse = jsl.cho_solve((chol, True), jnp.eye(matrix.shape[0], dtype=matrix.dtype))
        projected = inverse @ moment @ inverse  # A S A
        residual = count * inverse - projected
        inverse_first = inverse @ first_kernel  # A K_i, [R, S, S]
        projected_first = projected @ first_kernel  # A S A K_j
        grad = -0.5 * jnp.einsum("ab,iba->i", residual, first_kernel)
        hess = -0.5 * (
            2.0 * jnp.einsum("iab,jba->ij", inverse_first, projected_first)
            - count * jnp.einsum("iab,jba->ij", inverse_first, inverse_first)
            + jnp.einsum("ab,ijba->ij", residual, second_kernel)
        )
        return grad, hess

    return jax.tree.map(lambda x: x.sum(0), jax.vmap(per_trial)(times, second_moments, counts))


_MAX_LOG_TIMESCALE_STEP = 1.0
_MAX_DELAY_STEP_BINS = 2.0


def _ascent_direction(grad, hess, max_step):
    """Newton direction where the Hessian is negative definite, else a diagonal Newton (or
    fixed-size gradient-sign) step per coordinate; clipped to `max_step` `[R]`."""
    concave = jnp.all(jnp.isfinite(jnp.linalg.cholesky(-hess)))
    newton = jnp.linalg.solve(hess, -grad)
    curvature = jnp.diagonal(hess)
    diagonal = jnp.where(curvature < 0, -grad / curvature, jnp.sign(grad) * max_step)
    return jnp.clip(jnp.where(concave, newton, diagonal), -max_step, max_step)


def _update_across(params, times, second_moments, dt, config: Config):
    """Damped Newton ascent on each across latent's `(log tau, delays)` (separable over
    latents); returns `(log_across_timescales [A], delays [R, A])`."""
    theta = jnp.concatenate(
        [params.log_across_timescales[:, None], params.delays[1:].T / dt], axis=1
    )  # [A, R]
    num_regions = theta.shape[1]
    max_step = jnp.asarray(
        [_MAX_LOG_TIMESCALE_STEP] + [_MAX_DELAY_STEP_BINS] * (num_regions - 1), theta.dtype
    )
    bound = config.max_delay / dt
    factors = jnp.asarray(gp.LINE_SEARCH, theta.dtype)
    s2 = config.gp_noise_variance

    def ascend(times, second_moments, counts):
        def value(th, moment):
            return _across_prior_value(th, times, moment, dt, s2, counts)

        def newton_step(th, moment):
            grad, hess = _across_prior_terms(th, times, moment, dt, s2, counts)
            candidates = th + factors[:, None] * _ascent_direction(grad, hess, max_step)
            candidates = candidates.at[:, 1:].set(jnp.clip(candidates[:, 1:], -bound, bound))
            values = jax.vmap(value, in_axes=(0, None))(candidates, moment)
            values = jnp.where(jnp.isfinite(values), values, -jnp.inf)
            return candidates[jnp.argmax(values)]  # the null step is a candidate; ties: longest

        def latent_update(th, moment):
            steps = config.newton_steps
            return jax.lax.fori_loop(0, steps, lambda _, t: newton_step(t, moment), th)

        moments = jnp.swapaxes(second_moments, 0, 1)  # [A, trials, RT, RT]
        return jax.vmap(latent_update)(theta, moments)

    theta = gp.pooled_over_trials(ascend, times, second_moments)
    delays = jnp.concatenate([jnp.zeros((1, theta.shape[0]), theta.dtype), theta[:, 1:].T * dt])
    return theta[:, 0], delays


def _m_step(params, moments: gp.Moments, times, dt, region_index, config: Config):
    num_regions, num_within = params.log_within_timescales.shape
    num_neurons, num_across = params.across_loadings.shape
    num_bins = times.shape[1]
    total = jax.tree.map(lambda m: m.sum(0), moments)
    own_region = np.arange(num_regions)[None, :] == np.asarray(region_index)[:, None]  # [N, R]
    support = np.repeat(own_region[:, None, :], num_across + num_within, axis=1)
    loadings, offset, noise_variance = gp.observation_update(
        total, config.min_variance_fraction, jnp.asarray(support.reshape(num_neurons, -1))
    )
    loadings = loadings.reshape(num_neurons, num_across + num_within, num_regions)
    # [N, G]: each neuron's loadings on its own region's latents
    loadings = loadings[np.arange(num_neurons), :, np.asarray(region_index)]
    second = moments.latent_second_moment  # [trials, G, RT, RT]
    log_across, delays = _update_across(params, times, second[:, :num_across], dt, config)
    log_within = params.log_within_timescales
    if num_within:
        blocks = second[:, num_across:].reshape(
            -1, num_within, num_regions, num_bins, num_regions, num_bins
        )
        regions = np.arange(num_regions)
        diagonal = blocks[:, :, regions, :, regions, :]  # [R, trials, W, T, T]
        diagonal = jnp.moveaxis(diagonal, 0, 2).reshape(
            -1, num_within * num_regions, num_bins, num_bins
        )
        log_within = gp.update_timescales(
            log_within.T.reshape(-1), times, diagonal, config.gp_noise_variance, config.newton_steps
        )
        log_within = log_within.reshape(num_within, num_regions).T
    return DLAGParams(
        across_loadings=loadings[:, :num_across],
        within_loadings=loadings[:, num_across:],
        offset=offset,
        noise_variance=noise_variance,
        log_across_timescales=log_across,
        log_within_timescales=log_within,
        delays=delays,
    )


def _check_trials(caller: str, config: Config, trials: Any) -> np.ndarray:
    """Validate `trials` for `config`; return the region index of every neuron."""
    if not isinstance(config, Config):
        raise ValueError(f"dlag.{caller}: `config` must be dlag.Config, got {type(config)}")
    if not isinstance(trials, Trials):
        raise ValueError(f"dlag.{caller}: `trials` must be lj.Trials, got {type(trials)}")
    if config.sqrt_transform and trials.continuous:
        raise ValueError(
            f"dlag.{caller}: `config.sqrt_transform=True` needs spike counts, but `trials` "
            "holds continuous signals; use Config(sqrt_transform=False)"
        )
    region_index = _region_index(caller, trials)
    counts = np.bincount(region_index)
    needed = config.across_dim + config.within_dim
    for name, count in zip(trials.region_names, counts, strict=True):
        if count < needed:
            raise ValueError(
                f"dlag.{caller}: region {name!r} has {count} neurons, fewer than "
                f"`config.across_dim + config.within_dim` = {needed}"
            )
    return region_index


def init(key: jax.Array, config: Config, trials: Trials) -> DLAGParams:
    """Probabilistic-PCA initialisation from the observed bins of `trials`.

    Across loadings, offsets and noise from GPFA's initialisation on all neurons (the top
    `across_dim` principal components of the whole population); within loadings from the top
    `within_dim` principal components of each region's covariance left after the across part
    (noise variances reduced accordingly, floored). Delays start at the lag that maximises
    the correlation between each region's and the reference region's projections on the
    latent's loadings (`_initial_delays`): EM moves delays slowly, because with a small GP
    noise variance the posterior ties each region's copy tightly to the current delays. Log
    timescales start at `log(initial_timescale)` plus `0.1 * N(0, 1)` from `key`.
    """
    region_index = _check_trials("init", config, trials)
    num_regions = int(region_index.max()) + 1
    across_key, within_key = jax.random.split(key)
    y = gp.observations(trials.spikes, config.sqrt_transform)
    start_loadings, start_offset, start_noise = gp.ppca_init(
        y, trials.mask, config.across_dim, config.min_variance_fraction
    )
    y = np.asarray(y, np.float64)
    observed = y[np.asarray(trials.mask)]  # [bins, N]
    residual_cov = np.cov(observed, rowvar=False).reshape(trials.num_neurons, -1)
    across = np.asarray(start_loadings, np.float64)
    residual_cov = residual_cov - across @ across.T
    within = np.zeros((trials.num_neurons, config.within_dim))
    for region in range(num_regions):
        rows = np.flatnonzero(region_index == region)
        eigenvalues, eigenvectors = np.linalg.eigh(residual_cov[np.ix_(rows, rows)])
        top = slice(None, -config.within_dim - 1, -1) if config.within_dim else slice(0, 0)
        within[rows] = eigenvectors[:, top] * np.sqrt(np.maximum(eigenvalues[top], 1e-6) / 2)
    floor = np.maximum(config.min_variance_fraction * np.diag(residual_cov), 1e-6)
    noise_variance = np.maximum(np.asarray(start_noise) - np.sum(within**2, 1), floor)
    dtype = start_loadings.dtype
    across_jitter = 0.1 * jax.random.normal(across_key, (config.across_dim,), dtype)
    jitter = 0.1 * jax.random.normal(within_key, (num_regions, config.within_dim), dtype)
    return DLAGParams(
        across_loadings=start_loadings,
        within_loadings=jnp.asarray(within, dtype),
        offset=start_offset,
        noise_variance=jnp.asarray(noise_variance, dtype),
        log_across_timescales=jnp.log(config.initial_timescale) + across_jitter,
        log_within_timescales=jnp.log(config.initial_timescale) + jitter,
        delays=jnp.asarray(
            _initial_delays(
                y,
                np.asarray(trials.mask),
                region_index,
                across,
                np.asarray(start_offset),
                int(config.max_delay / trials.dt),
            )
            * trials.dt,
            dtype,
        ),
    )


def _initial_delays(y, mask, region_index, loadings, offset, max_lag: int) -> np.ndarray:
    """`[R, A]` delays in bins from lagged correlations (host code, for `init`).

    For across latent `j`, region `r`'s projection `u_r(t) = c_rj' (y_r(t) - d_r) / |c_rj|^2`
    follows `x_j(t - D_rj)`; `D_rj` is the lag `l` in `[-max_lag, max_lag]` bins maximising the
    mean of `u_1(t) u_r(t + l)` over pairs of observed bins, refined by a parabola through the
    peak and its neighbours.
    """
    num_regions = int(region_index.max()) + 1
    centred = (y - offset) * mask[..., None]  # [B, T, N]
    projections = []
    for region in range(num_regions):
        rows = region_index == region
        weights = loadings[rows] / np.maximum(np.sum(loadings[rows] ** 2, axis=0), 1e-12)
        projections.append(centred[..., rows] @ weights)  # [B, T, A]
    num_bins = y.shape[1]
    max_lag = min(max_lag, num_bins - 1)
    lags = np.arange(-max_lag, max_lag + 1)
    delays = np.zeros((num_regions, loadings.shape[1]))
    for region in range(1, num_regions):
        correlation = np.zeros((len(lags), loadings.shape[1]))
        for i, lag in enumerate(lags):
            reference = slice(max(0, -lag), num_bins - max(0, lag))  # bins t
            lagged = slice(max(0, lag), num_bins - max(0, -lag))  # bins t + lag
            pairs = np.sum(mask[:, reference] & mask[:, lagged])
            products = projections[0][:, reference] * projections[region][:, lagged]
            correlation[i] = products.sum(axis=(0, 1)) / max(pairs, 1)
        peak = np.argmax(correlation, axis=0)
        for latent, k in enumerate(peak):
            shift = 0.0
            if 0 < k < len(lags) - 1:
                left, centre, right = correlation[k - 1 : k + 2, latent]
                curvature = left - 2 * centre + right
                shift = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
            delays[region, latent] = np.clip(lags[k] + shift, -max_lag, max_lag)
    return delays


def fitter(config: Config) -> Fitter:
    """The EM `Fitter` (`latentjax.nn.em`): each step is one E-step (all trials, vmapped)
    and one M-step. `info` holds `log_likelihood` (of the parameters entering the step,
    summed over trials, on the transformed scale) and `loss`, its negative per observed entry.
    """

    def e_step(params, data, carry):
        moments, entries = _moments(params, data, config)
        return EStep(moments, moments.log_likelihood.sum(), entries)

    def m_step(params, moments, data):
        region_index = _region_index("fitter", data)
        times = jnp.asarray(data.times, moments.sum_y.dtype)
        return _m_step(params, moments, times, data.dt, region_index, config)

    return em_fitter(e_step, m_step)


def _moments(params, data: Trials, config: Config):
    region_index = _region_index("fitter", data)
    return gp.moments_of_trials(
        _trial_moments, params, data, config.sqrt_transform, region_index,
        config.gp_noise_variance,
    )  # fmt: skip


def validation_loss(params: DLAGParams, trials: Trials, key, config: Config, step):
    """Held-out negative log-likelihood per observed entry: the exact marginal
    `-log p(y_observed)` (on the transformed scale) of `trials` divided by its observed
    entries. aux `{"log_likelihood"}`."""
    return gp.held_out_score(*_moments(params, trials, config))


def posterior(
    params: DLAGParams, trials: Trials, config: Config, key: jax.Array | None = None
) -> Posterior:
    """Posterior latents and rates of `trials`.

    Returns a `Posterior` with
      latents: `[trials, time, A + R * W]` posterior means: the `A` across latents as seen by
        the reference region (`x_j(t)`, region 1 has no delay), then the within latents
        region by region (`w_11 .. w_1W, w_21 .. w_RW`).
      rates: `[trials, time, neurons]` expected counts per bin (or expected signal), from each
        neuron's Gaussian posterior predictive clipped at zero, as in GPFA.
      extras: `across_latents` `[trials, time, R, A]` each region's delayed copy
        `x_j(t - D_rj)`; `covariances` `[trials, time, A + R W, A + R W]` of `latents`;
        `delays` `[R, A]` seconds and `delays_bins` `[R, A]` (`delays / dt`); `timescales`
        `[A]` and `within_timescales` `[R, W]` seconds; `across_loadings` `[neurons, A]`,
        `within_loadings` `[neurons, W]`; `region_names` `[R]`; `log_likelihood` `[trials]`
        under the fitted model (the per-iteration history is `FitResult.history`).
    """
    del key  # exact inference
    region_index = _check_trials("posterior", config, trials)
    num_regions = params.delays.shape[0]
    if trials.num_neurons != params.offset.shape[0] or int(region_index.max()) + 1 != num_regions:
        raise ValueError(
            f"dlag.posterior: `trials` has {trials.num_neurons} neurons in "
            f"{int(region_index.max()) + 1} regions, the model {params.offset.shape[0]} in "
            f"{num_regions}"
        )
    post = _posterior(
        params,
        trials.spikes,
        trials.times,
        trials.mask,
        region_index,
        config.gp_noise_variance,
        sqrt_transform=config.sqrt_transform,
    )
    extras = {
        **post.extras,
        "delays_bins": params.delays / trials.dt,
        "region_names": np.asarray(trials.region_names),
    }
    return Posterior(post.latents, post.rates, extras)


@functools.partial(jax.jit, static_argnames="sqrt_transform")
def _posterior(params, spikes, times, mask, region_index, gp_noise_variance, *, sqrt_transform):
    y = gp.observations(spikes, sqrt_transform)
    times = jnp.asarray(times, y.dtype)
    num_regions, num_within = params.log_within_timescales.shape
    num_across = params.across_loadings.shape[1]
    num_latents = (num_across + num_within) * num_regions
    loadings = _full_loadings(params, region_index)
    # reported latents: across copies of region 0 (p = j R), then within p = (A + k) R + r
    across_of_region0 = np.arange(num_across) * num_regions
    within = (num_across + np.arange(num_within))[None, :] * num_regions
    within = (within + np.arange(num_regions)[:, None]).reshape(-1)  # region-major
    reported = np.concatenate([across_of_region0, within])

    def per_trial(y, times, mask):
        post = trial_posterior(params, y, times, mask, region_index, gp_noise_variance)
        return post.mean, gp.time_covariances(post.covariance, num_latents), post.log_likelihood

    means, covariances, log_likelihood = gp.over_trials(per_trial, y, times, jnp.asarray(mask))
    predicted = means @ loadings.T + params.offset
    predicted_variance = (
        jnp.einsum("np,btpq,nq->btn", loadings, covariances, loadings) + params.noise_variance
    )
    num_trials, num_bins = means.shape[:2]
    groups = means.reshape(num_trials, num_bins, num_across + num_within, num_regions)
    return Posterior(
        latents=means[..., reported],
        rates=gp.expected_clipped(predicted, predicted_variance, sqrt_transform),
        extras={
            "across_latents": jnp.swapaxes(groups[:, :, :num_across], 2, 3),
            "covariances": covariances[..., reported[:, None], reported[None, :]],
            "delays": params.delays,
            "timescales": jnp.exp(params.log_across_timescales),
            "within_timescales": jnp.exp(params.log_within_timescales),
            "across_loadings": params.across_loadings,
            "within_loadings": params.within_loadings,
            "log_likelihood": log_likelihood,
        },
    )
