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
`Sigma = L (I + L' J L)^-1 L'`; `O((K T)^3)` per trial, vmapped over trials, or once
for all trials when they share their bin times and observed bins (`gp.over_trials`). Bins with
`mask == False` are missing observations: they drop out of `J` and of the data term, and their
latents are inferred from the GP prior. M-step: closed form for `C`, `d` and `R` (floored at
`min_variance_fraction` times each neuron's variance); damped Newton steps on the log
timescales with a line search that never lowers the expected complete-data log-likelihood, so
the marginal log-likelihood is non-decreasing over EM iterations (generalised EM).

Examples:
  >>> import latentjax as lj
  >>> from latentjax.models import gpfa
  >>> trials = lj.datasets.lorenz(seed=0, num_trials=10, num_bins=30).trials
  >>> config = gpfa.Config(latent_dim=3, train=lj.train.TrainConfig(steps=5))
  >>> result = lj.fit(config, trials, progress=False)
  >>> posterior = lj.infer(result, trials)
  >>> posterior.latents.shape, posterior.timescales.shape    # timescales in seconds
  ((10, 30, 3), (3,))
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from latentjax.data import Trials
from latentjax.nn import gp
from latentjax.nn.em import EStep, em_fitter
from latentjax.results import Posterior
from latentjax.train import Fitter, TrainConfig, knob

__all__ = [
    "Config",
    "GPFAParams",
    "fitter",
    "init",
    "posterior",
    "trial_posterior",
    "validation_loss",
]


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
    gp_noise_variance: float = knob(1e-3, "positive")
    min_variance_fraction: float = knob(0.01, "positive")

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
        gp.check_em_knobs("gpfa.Config", self.gp_noise_variance, self.min_variance_fraction)


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


def trial_posterior(
    params: GPFAParams, y: jax.Array, times: jax.Array, mask: jax.Array, gp_noise_variance
) -> gp.TrialPosterior:
    """Exact E-step for one trial.

    Args:
      params: `GPFAParams`.
      y: `[time, neurons]` observations (already square-rooted where the model says so).
      times: `[time]` seconds.
      mask: `[time]` bool, True where observed; other bins are missing observations.
      gp_noise_variance: the GP noise variance `s2`.
    """
    chol_prior = gp.kernel_factors(params.log_timescales, times, gp_noise_variance)[2]
    return gp.grouped_posterior(
        params.loadings, params.offset, params.noise_variance, chol_prior, y, mask
    )


def _trial_moments(params, y, times, mask, gp_noise_variance) -> gp.Moments:
    post = trial_posterior(params, y, times, mask, gp_noise_variance)
    return gp.posterior_moments(post, y, mask, params.loadings.shape[1])


def _m_step(params, moments: gp.Moments, times, config: Config) -> GPFAParams:
    total = jax.tree.map(lambda m: m.sum(0), moments)
    loadings, offset, noise_variance = gp.observation_update(total, config.min_variance_fraction)
    log_timescales = gp.update_timescales(
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
    y = gp.observations(trials.spikes, config.sqrt_transform)
    loadings, mean, noise_variance = gp.ppca_init(
        y, trials.mask, config.latent_dim, config.min_variance_fraction
    )
    k = config.latent_dim
    jitter = 0.1 * jax.random.normal(key, (k,), y.dtype)
    return GPFAParams(
        loadings=loadings,
        offset=mean,
        noise_variance=noise_variance,
        log_timescales=jnp.log(config.initial_timescale) + jitter,
    )


def fitter(config: Config) -> Fitter:
    """The EM `Fitter` (`latentjax.nn.em`): each step is one E-step (all trials, vmapped) and
    one M-step. `info` holds `log_likelihood` (of the parameters entering the step, summed
    over trials, on the transformed scale) and `loss`, its negative per observed entry.
    """

    def e_step(params, data, carry):
        moments, entries = _moments(params, data, config)
        return EStep(moments, moments.log_likelihood.sum(), entries)

    def m_step(params, moments, data):
        return _m_step(params, moments, jnp.asarray(data.times, moments.sum_y.dtype), config)

    return em_fitter(e_step, m_step)


def _moments(params, data: Trials, config: Config):
    return gp.moments_of_trials(
        _trial_moments, params, data, config.sqrt_transform, config.gp_noise_variance
    )


def validation_loss(params: GPFAParams, trials: Trials, key, config: Config, step):
    """Held-out negative log-likelihood per observed entry: the exact marginal
    `-log p(y_observed)` (on the transformed scale) of `trials` divided by its observed
    entries. aux `{"log_likelihood"}`."""
    return gp.held_out_score(*_moments(params, trials, config))


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
    y = gp.observations(spikes, sqrt_transform)
    times = jnp.asarray(times, y.dtype)
    num_latents = params.loadings.shape[1]

    def per_trial(y, times, mask):
        post = trial_posterior(params, y, times, mask, gp_noise_variance)
        return post.mean, gp.time_covariances(post.covariance, num_latents), post.log_likelihood

    means, covariances, log_likelihood = gp.over_trials(per_trial, y, times, jnp.asarray(mask))
    left, singular, right = jnp.linalg.svd(params.loadings, full_matrices=False)
    to_orthonormal = singular[:, None] * right  # [K, K]: x_orth = S V' x
    predicted = means @ params.loadings.T + params.offset
    predicted_variance = (
        jnp.einsum("nk,btkj,nj->btn", params.loadings, covariances, params.loadings)
        + params.noise_variance
    )
    return Posterior(
        latents=means @ to_orthonormal.T,
        rates=gp.expected_clipped(predicted, predicted_variance, sqrt_transform),
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
