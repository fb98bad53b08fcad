"""Hidden Markov model (HMM) with Poisson or Gaussian emissions, fitted by exact EM.

Model of one trial with K discrete states:

    s_0 ~ pi,    p(s_{t+1} = k | s_t = j) = P[j, k]
    poisson:   y_tn | s_t = k ~ Poisson(lambda_kn)            counts per bin   [time, neurons]
    gaussian:  y_tn | s_t = k ~ N(mu_kn, sigma2_kn)           continuous signals

Unobserved bins (`Trials.mask` False, e.g. padding) carry no emission likelihood: the chain
runs through them. The E-step is exact forward-backward in log space (`latentjax.nn.hmm`),
vmapped over trials; the M-step is closed form. With `stickiness` kappa > 0 the transition
rows get a Dirichlet(1 + kappa e_j) prior (a "sticky" HMM, Fox et al. 2011): the M-step is the
MAP estimate P[j, k] proportional to E[n_jk] + kappa [j = k], which favours staying.

Initialisation: k-means (k-means++ seeded by the key) on the observed bins, after the square
root and a 5-bin moving average for spike counts.

Examples:
    >>> import latentjax as lj
    >>> data = lj.datasets.nascar(seed=0, num_trials=8, num_bins=50)
    >>> config = lj.models.hmm.Config(num_states=4, train=lj.train.TrainConfig(steps=5))
    >>> result = lj.fit(config, data.trials, progress=False)
    >>> posterior = lj.infer(result, data.trials)
    >>> posterior.latents.shape, posterior.most_likely.shape   # state probabilities, Viterbi
    ((8, 50, 4), (8, 50))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from latentjax.nn.em import EStep, em_fitter
from latentjax.nn.hmm import forward_backward, kmeans, viterbi
from latentjax.results import Posterior
from latentjax.train.config import TrainConfig, knob
from latentjax.train.fitter import Fitter

__all__ = [
    "Config",
    "Params",
    "fitter",
    "init",
    "log_likelihood",
    "posterior",
    "validation_loss",
]

_EMISSIONS = ("auto", "poisson", "gaussian")


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyperparameters of the HMM.

    Attributes:
      num_states: number of discrete states K.
      emissions: "poisson" (spike counts), "gaussian" (continuous signals, diagonal
        variances) or "auto": "poisson" for counts, "gaussian" for continuous trials.
      train: loop settings; `train.steps` EM iterations.
      stickiness: kappa, the extra Dirichlet pseudo-count of staying in a state (knob).
      min_variance: floor on the Gaussian variances; floor on the Poisson rates is
        `min_variance` counts per bin (knob).
    """

    num_states: int = 4
    emissions: str = "auto"
    train: TrainConfig = TrainConfig(steps=50, chunk_size=10)
    stickiness: float = knob(0.0, "nonnegative")
    min_variance: float = knob(1e-4, "positive")

    def __post_init__(self):
        if (
            isinstance(self.num_states, bool)
            or not isinstance(self.num_states, (int, np.integer))
            or self.num_states < 1
        ):
            raise ValueError(
                f"hmm.Config: `num_states` must be a positive int, got {self.num_states!r}"
            )
        if self.emissions not in _EMISSIONS:
            raise ValueError(
                f"hmm.Config: `emissions` must be one of {_EMISSIONS}, got {self.emissions!r}"
            )


class Params(NamedTuple):
    """HMM parameters: `initial_probs` `[K]`, `transition_matrix` `[K, K]` (rows sum to 1),
    `means` `[K, N]` (Poisson: expected counts per bin; Gaussian: means) and `variances`
    `[K, N]` (Gaussian; ones, unused, for Poisson)."""

    initial_probs: jax.Array
    transition_matrix: jax.Array
    means: jax.Array
    variances: jax.Array


def _poisson(config: Config, trials) -> bool:
    if config.emissions == "auto":
        return not trials.continuous
    return config.emissions == "poisson"


def _check_trials(config: Config, trials, caller: str) -> None:
    if config.emissions == "poisson" and trials.continuous:
        raise ValueError(
            f"{caller}: emissions='poisson' needs spike counts, got continuous signals "
            "(use emissions='gaussian')"
        )


def emission_log_likelihoods(params: Params, signals, bin_mask, poisson: bool):
    """Emission log-likelihoods of every bin and state.

    Args:
      params: `Params`.
      signals: `[..., T, N]` counts or signals.
      bin_mask: `[..., T]` bool; False bins get 0.
      poisson: Poisson (True) or Gaussian emissions.

    Returns:
      `[..., T, K]` log p(y_t | s_t = k).
    """
    if poisson:
        rates = params.means
        value = (
            signals @ jnp.log(rates).T
            - jnp.sum(rates, -1)
            - jnp.sum(gammaln(signals + 1), -1, keepdims=True)
        )
    else:
        precision = 1.0 / params.variances
        value = -0.5 * (
            (signals**2) @ precision.T
            - 2 * signals @ (params.means * precision).T
            + jnp.sum(params.means**2 * precision + jnp.log(2 * jnp.pi * params.variances), -1)
        )
    return jnp.where(bin_mask[..., None], value, 0.0)


def _signals(trials):
    """Signals `[B, T, N]` (0 in unobserved bins, which may hold NaN) and the bin mask."""
    mask = jnp.asarray(trials.mask)
    return jnp.where(mask[..., None], jnp.asarray(trials.spikes, dtype=float), 0.0), mask


def _e_step(params: Params, signals, bin_mask, poisson: bool):
    log_likelihoods = emission_log_likelihoods(params, signals, bin_mask, poisson)
    log_initial = jnp.log(params.initial_probs)
    log_transitions = jnp.log(params.transition_matrix)
    return jax.vmap(lambda ll: forward_backward(log_initial, log_transitions, ll))(log_likelihoods)


def _m_step(chain, signals, bin_mask, poisson: bool, stickiness, min_variance) -> Params:
    num_states = chain.marginals.shape[-1]
    initial = chain.marginals[:, 0].mean(0)
    counts = chain.transition_counts.sum(0) + stickiness * jnp.eye(num_states)
    transitions = counts / jnp.maximum(counts.sum(-1, keepdims=True), 1e-30)
    # a state never visited keeps a uniform row
    transitions = jnp.where(counts.sum(-1, keepdims=True) > 0, transitions, 1.0 / num_states)
    weights = chain.marginals * bin_mask[..., None]
    total = jnp.einsum("btk->k", weights)[:, None]
    safe = jnp.maximum(total, 1e-12)
    means = jnp.einsum("btk,btn->kn", weights, signals) / safe
    if poisson:
        return Params(initial, transitions, jnp.maximum(means, min_variance), jnp.ones_like(means))
    second = jnp.einsum("btk,btn->kn", weights, signals**2) / safe
    variances = jnp.maximum(second - means**2, min_variance)
    return Params(initial, transitions, means, variances)


def init(key, config: Config, trials) -> Params:
    """Initial parameters by k-means of the observed bins (smoothed square-root counts for
    Poisson emissions); states start with a 0.9 probability of staying."""
    _check_trials(config, trials, "hmm.init")
    signals, bin_mask = _signals(trials)
    poisson = _poisson(config, trials)
    features = signals
    if poisson:
        kernel = jnp.ones(5) / 5
        features = jax.vmap(
            jax.vmap(lambda x: jnp.convolve(x, kernel, mode="same"), in_axes=1, out_axes=1)
        )(jnp.sqrt(signals))
    num_states = config.num_states
    flat_mask = bin_mask.reshape(-1)
    if int(flat_mask.sum()) < num_states:
        raise ValueError(
            f"hmm.init: the trials have {int(flat_mask.sum())} observed bins, fewer than "
            f"`num_states` ({num_states})"
        )
    _, labels = kmeans(key, features.reshape(-1, features.shape[-1]), flat_mask, num_states)
    responsibilities = jax.nn.one_hot(labels, num_states).reshape(bin_mask.shape + (num_states,))
    stay = 0.9 if num_states > 1 else 1.0
    transitions = jnp.full((num_states, num_states), (1 - stay) / max(num_states - 1, 1))
    transitions = transitions.at[jnp.diag_indices(num_states)].set(stay)
    weights = responsibilities * bin_mask[..., None]
    total = jnp.maximum(weights.sum((0, 1)), 1.0)[:, None]
    means = jnp.einsum("btk,btn->kn", weights, signals) / total
    overall = jnp.sum(signals * bin_mask[..., None], (0, 1)) / bin_mask.sum()
    if poisson:
        means = jnp.maximum(means, 0.1 * overall + config.min_variance)
        variances = jnp.ones_like(means)
    else:
        spread = jnp.sum(((signals - overall) ** 2) * bin_mask[..., None], (0, 1)) / bin_mask.sum()
        second = jnp.einsum("btk,btn->kn", weights, signals**2) / total
        variances = jnp.maximum(second - means**2, 0.1 * spread + config.min_variance)
    return Params(
        jnp.full(num_states, 1.0 / num_states, means.dtype),
        transitions.astype(means.dtype),
        means,
        variances,
    )


def fitter(config: Config) -> Fitter:
    """Exact EM as a `Fitter` (`latentjax.nn.em`). `info["log_likelihood"]` is log p(y) of
    the observed bins at the parameters entering the step (the prior of `stickiness` is
    not included); with `stickiness=0` it never decreases."""

    def e_step(params, trials, carry):
        signals, bin_mask = _signals(trials)
        chain = _e_step(params, signals, bin_mask, _poisson(config, trials))
        entries = jnp.sum(bin_mask) * signals.shape[-1]
        return EStep(chain, jnp.sum(chain.log_likelihood), entries)

    def m_step(params, chain, trials):
        signals, bin_mask = _signals(trials)
        return _m_step(
            chain, signals, bin_mask, _poisson(config, trials), config.stickiness,
            config.min_variance,
        )  # fmt: skip

    return em_fitter(e_step, m_step)


def log_likelihood(params: Params, trials, config: Config):
    """`[trials]` log p(y) of each trial's observed bins."""
    _check_trials(config, trials, "hmm.log_likelihood")
    signals, bin_mask = _signals(trials)
    return _e_step(params, signals, bin_mask, _poisson(config, trials)).log_likelihood


def validation_loss(params: Params, trials, key, config: Config, step):
    """Held-out negative log-likelihood per observed entry; aux `{"log_likelihood"}`."""
    del key, step
    signals, bin_mask = _signals(trials)
    total = jnp.sum(_e_step(params, signals, bin_mask, _poisson(config, trials)).log_likelihood)
    return -total / (jnp.sum(bin_mask) * signals.shape[-1]), {"log_likelihood": total}


@functools.partial(jax.jit, static_argnames=("poisson",))
def _posterior_arrays(params: Params, signals, bin_mask, poisson: bool):
    chain = _e_step(params, signals, bin_mask, poisson)
    log_likelihoods = emission_log_likelihoods(params, signals, bin_mask, poisson)
    log_initial = jnp.log(params.initial_probs)
    log_transitions = jnp.log(params.transition_matrix)
    paths = jax.vmap(lambda ll: viterbi(log_initial, log_transitions, ll))(log_likelihoods)
    return chain, paths, chain.marginals @ params.means


def posterior(params: Params, trials, config: Config, key=None, **options) -> Posterior:
    """State posterior of every trial.

    Returns:
      `Posterior` with `latents` `[B, T, K]` (p(s_t = k | y)), `rates` `[B, T, N]` (the
      posterior expected signal: expected counts per bin for Poisson emissions) and extras
      `most_likely` `[B, T]` (the Viterbi path), `log_likelihood` `[B]`.
    """
    del key
    if options:
        raise ValueError(f"hmm.posterior: unknown options {sorted(options)}")
    _check_trials(config, trials, "hmm.posterior")
    signals, bin_mask = _signals(trials)
    if params.means.shape[-1] != signals.shape[-1]:
        raise ValueError(
            f"hmm.posterior: `trials` have {signals.shape[-1]} neurons, the params "
            f"{params.means.shape[-1]}"
        )
    chain, paths, rates = _posterior_arrays(params, signals, bin_mask, _poisson(config, trials))
    return Posterior(
        latents=chain.marginals,
        rates=rates,
        extras={"most_likely": paths, "log_likelihood": chain.log_likelihood},
    )


def figures(posterior: Posterior, trials) -> dict:
    """The state raster of the report (`lj.plot.state_raster`)."""
    from latentjax.plot.states import state_raster

    return {"states": state_raster(posterior)}
