"""Switching linear dynamical system (SLDS) and recurrent SLDS (rSLDS), Gaussian or Poisson
observations, fitted by Laplace-EM with a structured variational posterior.

Model of one trial with K discrete states s_t and D continuous latents z_t:

    s_0 ~ pi,    z_0 ~ N(m_0, P_0)
    p(s_{t+1} = k | s_t = j, z_t) = softmax_k(L[j, k] + w_k^T z_t)     (w = 0 for an SLDS)
    z_{t+1} = A_k z_t + b_k + N(0, Q_k)                                  with k = s_{t+1}
    gaussian:  y_t = C z_t + d + N(0, diag(r));   poisson:  y_tn ~ Poisson(exp(c_n^T z_t + d_n))

The recurrent transitions (Linderman et al. 2017) let the continuous latent decide where the
discrete state switches, e.g. at the ends of an oval track (`lj.datasets.nascar`).

Inference: q(s) q(z), alternated (structured mean field, as ssm's Laplace-EM):

- q(s) is exact forward-backward (`latentjax.nn.hmm`) given q(z): the state log-likelihoods
  are E_q[log N(z_t | A_k z_{t-1} + b_k, Q_k)] (with the posterior covariances), the
  transition matrices are taken at the latent means.
- q(z) is the Laplace approximation of the objective E_q(s)[log p(y, z, s)]: its prior part is
  a block-tridiagonal Gaussian with state-weighted dynamics, the observations and the
  recurrent transitions add per-bin concave terms, so each Newton step is one
  block-tridiagonal solve (`latentjax.nn.block_tridiagonal`), O(T D^3) per trial, with a
  line search; for Gaussian observations without recurrence one step is exact.

M-step: closed form for pi, m_0, P_0, the state-weighted least squares of (A_k, b_k, Q_k)
and (Gaussian) C, d, r; damped Newton for the Poisson emissions (exact expectation of
exp(c^T z + d) under q(z)) and for the transition logits and recurrence weights.

`log_likelihood` (what fitting reports and validation scores) is the evidence lower bound
E_q[log p(y, z, s)] + H(q(s)) + H(q(z)) (transition terms at the latent means), a lower bound
on log p(y) for an SLDS.

Initialisation, as ssm: continuous latents by PCA and a Kalman smoother (square-root counts
for spikes), states by k-means of (latent, velocity) then an autoregressive HMM on the
latents (EM of the switching dynamics with the latents held fixed).

Examples:
    >>> import latentjax as lj
    >>> data = lj.datasets.nascar(seed=0, num_trials=8, num_bins=50, observations="gaussian")
    >>> config = lj.models.slds.Config(train=lj.train.TrainConfig(steps=3))
    >>> result = lj.fit(config, data.trials, progress=False)  # doctest: +SKIP
    >>> posterior = lj.infer(result, data.trials)  # doctest: +SKIP
    >>> posterior.states.shape, posterior.most_likely.shape  # doctest: +SKIP
    ((8, 50, 4), (8, 50))

(skipped in the doctests: compiling the Laplace-EM programs takes about half a minute on
2 cores; `tests/test_slds.py` runs the same calls)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from latentjax.nn.block_tridiagonal import ChainGaussian, quadratic_form, solve
from latentjax.nn.em import EStep, em_fitter
from latentjax.nn.hmm import forward_backward, kmeans, viterbi
from latentjax.nn.kalman import LatentPrior, smooth_potentials
from latentjax.nn.linear_gaussian import clip_eigenvalues, emission_potentials, subspace_init
from latentjax.results import Posterior
from latentjax.train.config import TrainConfig, knob
from latentjax.train.fitter import Fitter

__all__ = [
    "Config",
    "Params",
    "fitter",
    "fixed_points",
    "init",
    "log_likelihood",
    "posterior",
    "state_map",
    "validation_loss",
]

_OBSERVATIONS = ("auto", "gaussian", "poisson")
_STEP_SIZES = (1.0, 0.5, 0.25, 0.1, 0.0)
_LOG_2PI = 1.8378770664093453
_COLD_NEWTON_ITERS = 10


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyperparameters of the (recurrent) switching LDS.

    Attributes:
      num_states: number of discrete states K.
      latent_dim: number of continuous latents D.
      observations: "gaussian", "poisson" (exp link) or "auto": Poisson for spike counts,
        Gaussian for continuous signals.
      recurrent: transitions depend on the previous latent (rSLDS); False: an SLDS.
      train: loop settings; `train.steps` EM iterations.
      newton_iters: Newton steps on q(z) per EM iteration (warm started).
      posterior_iters: q(z), q(s) alternations when inferring trials from scratch
        (validation, `lj.infer`), each with `newton_iters` Newton steps.
      init_iters: EM iterations of the autoregressive HMM that initialises the states.
      init_restarts: k-means + autoregressive-HMM restarts; the most likely one is kept.
      min_variance: floor on the eigenvalues of Q_k, P_0 and on r (knob).
      transition_ridge: L2 penalty on the transition logits and recurrence weights (knob).
    """

    num_states: int = 4
    latent_dim: int = 2
    observations: str = "auto"
    recurrent: bool = True
    train: TrainConfig = TrainConfig(steps=50, chunk_size=10)
    newton_iters: int = 2
    posterior_iters: int = 10
    init_iters: int = 25
    init_restarts: int = 8
    min_variance: float = knob(1e-4, "positive")
    transition_ridge: float = knob(1.0, "nonnegative")

    def __post_init__(self):
        for name in (
            "num_states",
            "latent_dim",
            "newton_iters",
            "posterior_iters",
            "init_restarts",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"slds.Config: `{name}` must be a positive int, got {value!r}")
        if (
            isinstance(self.init_iters, bool)
            or not isinstance(self.init_iters, (int, np.integer))
            or self.init_iters < 0
        ):
            raise ValueError(
                f"slds.Config: `init_iters` must be a non-negative int, got {self.init_iters!r}"
            )
        if self.observations not in _OBSERVATIONS:
            raise ValueError(
                f"slds.Config: `observations` must be one of {_OBSERVATIONS}, "
                f"got {self.observations!r}"
            )
        if not isinstance(self.recurrent, bool):
            raise ValueError(f"slds.Config: `recurrent` must be a bool, got {self.recurrent!r}")


class Params(NamedTuple):
    """(r)SLDS parameters.

    Attributes:
      initial_probs: `[K]` pi.
      transition_logits: `[K, K]` L (row: from, column: to).
      recurrence_weights: `[K, D]` w_k (zeros for an SLDS).
      initial_mean: `[D]`; initial_cov: `[D, D]`.
      dynamics: `[K, D, D]` A_k; dynamics_bias: `[K, D]` b_k; dynamics_cov: `[K, D, D]` Q_k.
      emissions: `[N, D]` C; emissions_bias: `[N]` d; emissions_cov: `[N]` r (Gaussian; ones,
        unused, for Poisson).
    """

    initial_probs: jax.Array
    transition_logits: jax.Array
    recurrence_weights: jax.Array
    initial_mean: jax.Array
    initial_cov: jax.Array
    dynamics: jax.Array
    dynamics_bias: jax.Array
    dynamics_cov: jax.Array
    emissions: jax.Array
    emissions_bias: jax.Array
    emissions_cov: jax.Array


class StatePosterior(NamedTuple):
    """q(s) of a batch: `marginals` `[B, T, K]`, `pairs` `[B, T-1, K, K]`."""

    marginals: jax.Array
    pairs: jax.Array


# ---------------------------------------------------------------------------------------------
# Checks and data


def _poisson(config: Config, trials) -> bool:
    if config.observations == "auto":
        return not trials.continuous
    return config.observations == "poisson"


def _check_trials(config: Config, trials, caller: str) -> None:
    if config.observations == "poisson" and trials.continuous:
        raise ValueError(
            f"{caller}: observations='poisson' needs spike counts, got continuous signals "
            "(use observations='gaussian')"
        )
    if trials.num_bins < 2:
        raise ValueError(f"{caller}: `trials` need at least 2 bins, got {trials.num_bins}")
    if config.latent_dim > trials.num_neurons:
        raise ValueError(
            f"{caller}: `latent_dim` ({config.latent_dim}) exceeds the number of neurons "
            f"({trials.num_neurons})"
        )


def _data(trials):
    """Signals `[B, T, N]` (0 in unobserved bins, which may hold NaN) and the bin mask."""
    mask = jnp.asarray(trials.mask)
    return jnp.where(mask[..., None], jnp.asarray(trials.spikes, dtype=float), 0.0), mask


# ---------------------------------------------------------------------------------------------
# One trial: the pieces of q(s) and q(z)


def _log_transitions(params: Params, means):
    """`[T-1, K, K]` log p(s_{t+1} = k | s_t = j, z_t = means_t)."""
    logits = params.transition_logits[None] + (means[:-1] @ params.recurrence_weights.T)[:, None]
    return jax.nn.log_softmax(logits, axis=-1)


def _state_log_likelihoods(params: Params, means, covs, crosses):
    """`[T, K]` E_q[log N(z_t | A_k z_{t-1} + b_k, Q_k)] (0 at t = 0)."""
    precisions = jnp.linalg.inv(params.dynamics_cov)
    _, log_dets = jnp.linalg.slogdet(params.dynamics_cov)
    residual = means[1:, None] - jnp.einsum("kij,tj->tki", params.dynamics, means[:-1])
    residual = residual - params.dynamics_bias[None]
    mahalanobis = jnp.einsum("tki,kij,tkj->tk", residual, precisions, residual)
    # E[(z_t - A z_{t-1})(...)^T] - (mean part) = S_t + A S_{t-1} A^T - A X - X^T A^T,
    # X = Cov(z_{t-1}, z_t)
    cross_term = jnp.einsum("kab,kbc,tcd->tkad", precisions, params.dynamics, crosses)
    trace_cross = jnp.einsum("tkaa->tk", cross_term)  # tr(Q^-1 A X)
    trace_now = jnp.einsum("kij,tji->tk", precisions, covs[1:])
    quad = jnp.einsum("kai,kab,kbj->kij", params.dynamics, precisions, params.dynamics)
    trace_before = jnp.einsum("kij,tji->tk", quad, covs[:-1])
    expected = mahalanobis + trace_now + trace_before - 2 * trace_cross
    values = -0.5 * (expected + log_dets[None] + means.shape[-1] * _LOG_2PI)
    return jnp.concatenate([jnp.zeros_like(values[:1]), values], axis=0)


def _prior_information(params: Params, marginals):
    """Block-tridiagonal information form of E_q(s)[log p(z | s)]: `(diagonal [T, D, D],
    upper [T-1, D, D], shift [T, D])`."""
    precisions = jnp.linalg.inv(params.dynamics_cov)
    a_t_q = jnp.einsum("kji,kjl->kil", params.dynamics, precisions)  # A^T Q^-1
    a_t_q_a = jnp.einsum("kil,klj->kij", a_t_q, params.dynamics)
    weights = marginals[1:]  # state of the transition into t = 1..T-1
    initial_precision = jnp.linalg.inv(params.initial_cov)
    into = jnp.einsum("tk,kij->tij", weights, precisions)
    out_of = jnp.einsum("tk,kij->tij", weights, a_t_q_a)
    zeros = jnp.zeros_like(into[:1])
    diagonal = jnp.concatenate([zeros, into], 0) + jnp.concatenate([out_of, zeros], 0)
    diagonal = diagonal.at[0].add(initial_precision)
    upper = -jnp.einsum("tk,kij->tij", weights, a_t_q)
    q_b = jnp.einsum("kij,kj->ki", precisions, params.dynamics_bias)
    a_t_q_b = jnp.einsum("kij,kj->ki", a_t_q, params.dynamics_bias)
    zero = jnp.zeros((1, q_b.shape[-1]), q_b.dtype)
    shift = jnp.concatenate([zero, weights @ q_b], 0) - jnp.concatenate(
        [weights @ a_t_q_b, zero], 0
    )
    shift = shift.at[0].add(initial_precision @ params.initial_mean)
    return diagonal, upper, shift


def _observation_terms(params: Params, poisson: bool, signals, bin_mask, latents):
    """`[T]` log p(y_t | z_t) of observed bins at `latents` `[T, D]`."""
    linear = latents @ params.emissions.T + params.emissions_bias
    if poisson:
        value = signals * linear - jnp.exp(linear) - gammaln(signals + 1)
    else:
        value = -0.5 * (
            (signals - linear) ** 2 / params.emissions_cov
            + jnp.log(params.emissions_cov)
            + _LOG_2PI
        )
    return jnp.where(bin_mask, value.sum(-1), 0.0)


def _recurrence_terms(params: Params, pairs, latents):
    """`[T]` sum_jk q(s_t = j, s_{t+1} = k) log p(s_{t+1} = k | s_t = j, z_t) (0 at T-1)."""
    values = jnp.sum(pairs * _log_transitions(params, latents), axis=(-1, -2))
    return jnp.concatenate([values, jnp.zeros_like(values[:1])])


def _nonlinear_terms(params, poisson, recurrent, signals, bin_mask, pairs, latents):
    """`[T]` the per-bin non-quadratic terms of the q(z) objective."""
    value = _observation_terms(params, poisson, signals, bin_mask, latents)
    if recurrent:
        value = value + _recurrence_terms(params, pairs, latents)
    return value


def _bin_derivatives(params, poisson, recurrent, signals, bin_mask, pairs, path):
    """Gradient `[T, D]` and Hessian `[T, D, D]` of the per-bin terms (`_nonlinear_terms`)
    at `path` `[T, D]`, analytic."""
    weight = bin_mask.astype(signals.dtype)[:, None]
    linear = path @ params.emissions.T + params.emissions_bias
    if poisson:
        rate = jnp.exp(linear)
        residual, curvature = weight * (signals - rate), weight * rate
    else:
        residual = weight * (signals - linear) / params.emissions_cov
        curvature = jnp.broadcast_to(weight / params.emissions_cov, linear.shape)
    gradient = residual @ params.emissions
    hessian = -jnp.einsum("tn,ni,nj->tij", curvature, params.emissions, params.emissions)
    if recurrent:
        w = params.recurrence_weights
        probs = jnp.exp(_log_transitions(params, path))  # [T-1, K(from), K(to)]
        totals = pairs.sum(-1, keepdims=True)
        pulled = jnp.sum(pairs - totals * probs, axis=1) @ w
        spread = jnp.einsum("tj,tjk->tk", totals[..., 0], probs)
        outer = jnp.einsum("tj,tjk,tjl->tkl", totals[..., 0], probs, probs)
        curvature_k = jax.vmap(jnp.diag)(spread) - outer
        bend = -jnp.einsum("ka,tkl,lb->tab", w, curvature_k, w)
        gradient = gradient.at[:-1].add(pulled)
        hessian = hessian.at[:-1].add(bend)
    return gradient, hessian


def _continuous_update(params, poisson, recurrent, signals, bin_mask, states, latents, iters):
    """Laplace q(z) of one trial by `iters` damped Newton steps from `latents` `[T, D]`,
    given q(s) (`states`: marginals `[T, K]`, pairs `[T-1, K, K]`)."""
    marginals, pairs = states
    diagonal, upper, shift = _prior_information(params, marginals)

    def objective(path):
        nonlinear = _nonlinear_terms(params, poisson, recurrent, signals, bin_mask, pairs, path)
        return quadratic_form(diagonal, upper, shift, path) + jnp.sum(nonlinear)

    def system(path):
        gradients, hessians = _bin_derivatives(
            params, poisson, recurrent, signals, bin_mask, pairs, path
        )
        information = diagonal - hessians
        linear = shift + gradients - jnp.einsum("tij,tj->ti", hessians, path)
        return information, linear

    def newton(path, _):
        information, linear = system(path)
        target = solve(information, upper, linear).means
        candidates = jnp.stack([path + a * (target - path) for a in _STEP_SIZES])
        values = jax.vmap(objective)(candidates)
        best = jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf))
        return candidates[best], None

    mode, _ = jax.lax.scan(newton, latents, None, length=iters)
    information, linear = system(mode)
    chain = solve(information, upper, linear)
    return chain._replace(means=mode)


def _discrete_update(params: Params, chain: ChainGaussian):
    """q(s) of one trial given q(z): `(StatePosterior of one trial, log Z, state
    log-likelihoods [T, K], log transitions [T-1, K, K])`."""
    log_likelihoods = _state_log_likelihoods(
        params, chain.means, chain.covariances, chain.cross_covariances
    )
    log_transitions = _log_transitions(params, chain.means)
    result = forward_backward(
        jnp.log(params.initial_probs), log_transitions, log_likelihoods, pairs=True
    )
    return result, log_likelihoods, log_transitions


def _expected_observations(params: Params, poisson: bool, signals, bin_mask, chain):
    """E_q[log p(y | z)] of one trial (exact for both observation models)."""
    linear = chain.means @ params.emissions.T + params.emissions_bias
    variance = jnp.einsum("nk,tkl,nl->tn", params.emissions, chain.covariances, params.emissions)
    if poisson:
        value = signals * linear - jnp.exp(linear + 0.5 * variance) - gammaln(signals + 1)
    else:
        value = -0.5 * (
            ((signals - linear) ** 2 + variance) / params.emissions_cov
            + jnp.log(params.emissions_cov)
            + _LOG_2PI
        )
    return jnp.sum(jnp.where(bin_mask[:, None], value, 0.0))


def _elbo(params: Params, poisson: bool, signals, bin_mask, chain, log_partition):
    """ELBO of one trial: E[log p(y | z)] + E[log p(z_0)] + log Z(q(s)) + H(q(z))."""
    num_latents = chain.means.shape[-1]
    initial_precision = jnp.linalg.inv(params.initial_cov)
    centred = chain.means[0] - params.initial_mean
    initial = -0.5 * (
        centred @ initial_precision @ centred
        + jnp.trace(initial_precision @ chain.covariances[0])
        + jnp.linalg.slogdet(params.initial_cov)[1]
        + num_latents * _LOG_2PI
    )
    entropy = 0.5 * (chain.means.size * (1.0 + _LOG_2PI) - chain.log_det_precision)
    observed = _expected_observations(params, poisson, signals, bin_mask, chain)
    return observed + initial + log_partition + entropy


class _TrialPosterior(NamedTuple):
    chain: ChainGaussian
    states: StatePosterior
    log_likelihood: jax.Array


def _alternate(params, poisson, recurrent, signals, bin_mask, states, latents, rounds, iters):
    """`rounds` alternations of q(z) (`iters` Newton steps) and q(s), for one trial."""

    def one_round(carry, _):
        states, latents = carry
        chain = _continuous_update(
            params, poisson, recurrent, signals, bin_mask, states, latents, iters
        )
        discrete, _, _ = _discrete_update(params, chain)
        new_states = StatePosterior(discrete.marginals, discrete.pair_marginals)
        return (new_states, chain.means), (chain, discrete.log_likelihood)

    (states, _), (chains, partitions) = jax.lax.scan(
        one_round, (states, latents), None, length=rounds
    )
    chain = jax.tree.map(lambda x: x[-1], chains)
    elbo = _elbo(params, poisson, signals, bin_mask, chain, partitions[-1])
    return _TrialPosterior(chain, states, elbo)


def _cold_states(num_bins: int, num_states: int, dtype):
    marginals = jnp.full((num_bins, num_states), 1.0 / num_states, dtype)
    pairs = jnp.full((num_bins - 1, num_states, num_states), 1.0 / num_states**2, dtype)
    return StatePosterior(marginals, pairs)


def _infer(params, config: Config, poisson: bool, signals, bin_mask, start=None, rounds=None):
    """Posterior of every trial (vmapped): warm from `start` = (StatePosterior, latents), or
    cold (uniform states, zero latents) with `posterior_iters` rounds."""
    num_trials, num_bins = signals.shape[:2]
    if start is None:
        cold = _cold_states(num_bins, config.num_states, signals.dtype)
        states = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_trials,) + x.shape), cold)
        latents = jnp.zeros((num_trials, num_bins, config.latent_dim), signals.dtype)
        latents = latents + params.initial_mean

        # the latents first converge under uniform states without the recurrence term (uniform
        # pairs would pull every latent to where all transitions are equally likely)
        # and the first q(s) is computed from them
        def first(y, m, s, z):
            chain = _continuous_update(params, poisson, False, y, m, s, z, _COLD_NEWTON_ITERS)
            discrete, _, _ = _discrete_update(params, chain)
            return StatePosterior(discrete.marginals, discrete.pair_marginals), chain.means

        states, latents = jax.vmap(first)(signals, bin_mask, states, latents)
        rounds = config.posterior_iters
    else:
        states, latents = start
    return jax.vmap(
        lambda y, m, s, z: _alternate(
            params, poisson, config.recurrent, y, m, s, z, rounds, config.newton_iters
        )
    )(signals, bin_mask, states, latents)


# ---------------------------------------------------------------------------------------------
# M-step


def _dynamics_m_step(params: Params, marginals, means, covs, crosses, min_variance):
    """State-weighted least squares of (A_k, b_k, Q_k) from q(z) moments `[B, T, ...]`;
    a state with (almost) no weight keeps its dynamics."""
    num_latents = means.shape[-1]
    weights = marginals[:, 1:]  # [B, T-1, K]
    previous = jnp.concatenate([means[:, :-1], jnp.ones_like(means[:, :-1, :1])], -1)
    outer_prev = jnp.einsum("bti,btj->btij", previous, previous)
    outer_prev = outer_prev.at[..., :num_latents, :num_latents].add(covs[:, :-1])
    cross = jnp.einsum("bti,btj->btij", means[:, 1:], previous)
    cross = cross.at[..., :num_latents].add(jnp.swapaxes(crosses, -1, -2))
    outer_next = jnp.einsum("bti,btj->btij", means[:, 1:], means[:, 1:]) + covs[:, 1:]
    gram = jnp.einsum("btk,btij->kij", weights, outer_prev)
    cross = jnp.einsum("btk,btij->kij", weights, cross)
    second = jnp.einsum("btk,btij->kij", weights, outer_next)
    count = weights.sum((0, 1))
    ridge = 1e-4 * jnp.eye(num_latents + 1)
    coefficients = jnp.swapaxes(jnp.linalg.solve(gram + ridge, jnp.swapaxes(cross, -1, -2)), -1, -2)
    residual = (
        second
        - coefficients @ jnp.swapaxes(cross, -1, -2)
        - cross @ jnp.swapaxes(coefficients, -1, -2)
        + coefficients @ gram @ jnp.swapaxes(coefficients, -1, -2)
    ) / jnp.maximum(count, 1e-6)[:, None, None]
    noise = jax.vmap(lambda m: clip_eigenvalues(m, min_variance))(residual)
    used = (count > 1.0)[:, None, None]
    return (
        jnp.where(used, coefficients[..., :num_latents], params.dynamics),
        jnp.where(used[..., 0], coefficients[..., num_latents], params.dynamics_bias),
        jnp.where(used, noise, params.dynamics_cov),
    )


def _initial_m_step(marginals, means, covs, min_variance):
    probs = marginals[:, 0].mean(0)
    probs = jnp.maximum(probs, 1e-6)
    mean = means[:, 0].mean(0)
    spread = means[:, 0] - mean
    cov = covs[:, 0].mean(0) + spread.T @ spread / means.shape[0]
    return probs / probs.sum(), mean, clip_eigenvalues(cov, min_variance)


def _damped_newton(value, theta, steps: int = 3):
    """`steps` Newton steps maximising the concave `value(theta)`, each taking the best of
    `_STEP_SIZES` along the Newton direction (0 included, so the value never decreases)."""

    def step(theta, _):
        gradient = jax.grad(value)(theta)
        hessian = jax.hessian(value)(theta)
        direction = jnp.linalg.solve(hessian - 1e-6 * jnp.eye(theta.shape[0]), -gradient)
        candidates = jnp.stack([theta + a * direction for a in _STEP_SIZES])
        values = jax.vmap(value)(candidates)
        best = jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf))
        return candidates[best], None

    theta, _ = jax.lax.scan(step, theta, None, length=steps)
    return theta


def _transition_m_step(params: Params, pairs, means, recurrent: bool, ridge):
    """Transition logits (and recurrence weights) maximising the expected log transition
    probabilities (at the latent means) minus `ridge` times their squares."""
    if not recurrent:
        counts = pairs.sum((0, 1)) + 1e-3
        return jnp.log(counts / counts.sum(-1, keepdims=True)), params.recurrence_weights
    num_states, num_latents = params.recurrence_weights.shape
    previous = means[:, :-1]

    def value(theta):
        logits = theta[: num_states**2].reshape(num_states, num_states)
        weights = theta[num_states**2 :].reshape(num_states, num_latents)
        log_p = jax.nn.log_softmax(logits[None, None] + (previous @ weights.T)[:, :, None], axis=-1)
        return jnp.sum(pairs * log_p) - ridge * jnp.sum(theta**2)

    theta = jnp.concatenate([params.transition_logits.ravel(), params.recurrence_weights.ravel()])
    theta = _damped_newton(value, theta)
    # the softmax is unchanged by a constant added to a row of L or a vector added to every
    # w_k: centring removes these directions (the ridge's optimum has them at zero), which
    # the Newton steps leave to rounding
    logits = theta[: num_states**2].reshape(num_states, num_states)
    weights = theta[num_states**2 :].reshape(num_states, num_latents)
    return logits - logits.mean(-1, keepdims=True), weights - weights.mean(0)


def _emission_m_step(params: Params, poisson, signals, bin_mask, means, covs, min_variance):
    """(C, d, r): closed-form regression (Gaussian) or damped Newton per neuron (Poisson)."""
    weight = bin_mask.astype(means.dtype)
    num_latents = means.shape[-1]
    design = jnp.concatenate([means, jnp.ones_like(means[..., :1])], -1)
    if not poisson:
        gram = jnp.einsum("bt,bti,btj->ij", weight, design, design)
        gram = gram.at[:num_latents, :num_latents].add(jnp.einsum("bt,btij->ij", weight, covs))
        cross = jnp.einsum("bt,btn,bti->ni", weight, signals, design)
        coefficients = jnp.linalg.solve(gram + 1e-6 * jnp.eye(num_latents + 1), cross.T).T
        residual = jnp.einsum("bt,btn->n", weight, signals**2) - jnp.sum(coefficients * cross, 1)
        noise = jnp.maximum(residual / weight.sum(), min_variance)
        return coefficients[:, :num_latents], coefficients[:, num_latents], noise

    def neuron(theta, counts):
        def value(theta):
            linear = means @ theta[:-1] + theta[-1]
            variance = jnp.einsum("k,btkl,l->bt", theta[:-1], covs, theta[:-1])
            return jnp.sum(weight * (counts * linear - jnp.exp(linear + 0.5 * variance)))

        return _damped_newton(value, theta)

    thetas = jnp.concatenate([params.emissions, params.emissions_bias[:, None]], -1)
    thetas = jax.vmap(neuron, in_axes=(0, 2))(thetas, signals)
    return thetas[:, :-1], thetas[:, -1], params.emissions_cov


def _m_step(params, config, poisson, signals, bin_mask, posterior: _TrialPosterior) -> Params:
    chain, states = posterior.chain, posterior.states
    means, covs = chain.means, chain.covariances
    probs, mean0, cov0 = _initial_m_step(states.marginals, means, covs, config.min_variance)
    dynamics, bias, noise = _dynamics_m_step(
        params, states.marginals, means, covs, chain.cross_covariances, config.min_variance
    )
    logits, weights = _transition_m_step(
        params, states.pairs, means, config.recurrent, config.transition_ridge
    )
    emissions, emissions_bias, emissions_cov = _emission_m_step(
        params, poisson, signals, bin_mask, means, covs, config.min_variance
    )
    return Params(
        probs, logits, weights, mean0, cov0, dynamics, bias, noise, emissions, emissions_bias,
        emissions_cov,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Initialisation


def _smoothed_subspace_latents(key, signals, bin_mask, latent_dim, min_variance):
    """PCA of the observed bins, then a Kalman smoother of the fitted linear-Gaussian model:
    latents `[B, T, D]` standardised per dimension."""
    inputs = jnp.zeros(signals.shape[:2] + (0,), signals.dtype)
    model = subspace_init(key, signals, bin_mask, inputs, latent_dim, "pca", min_variance, 0.0)
    prior = LatentPrior(
        model.initial_mean, model.initial_cov, model.dynamics,
        jnp.broadcast_to(model.bias, (signals.shape[1], latent_dim)), model.dynamics_cov,
    )  # fmt: skip

    def one(signal, mask):
        potentials = emission_potentials(
            model.loadings, model.offset, jnp.zeros((signal.shape[1], 0), signal.dtype),
            model.noise, signal, mask, jnp.zeros((signal.shape[0], 0), signal.dtype),
        )  # fmt: skip
        return smooth_potentials(prior, potentials).means

    latents = jax.vmap(one)(signals, bin_mask)
    flat = latents.reshape(-1, latent_dim)
    return (latents - flat.mean(0)) / (flat.std(0) + 1e-6)


@functools.partial(jax.jit, static_argnames=("config", "poisson"))
def _init_arrays(key, signals, bin_mask, config: Config, poisson: bool) -> Params:
    num_states, latent_dim = config.num_states, config.latent_dim
    num_trials, num_bins, num_neurons = signals.shape
    pca_key, kmeans_key = jax.random.split(key)
    features = jnp.sqrt(signals) if poisson else signals
    latents = _smoothed_subspace_latents(
        pca_key, features, bin_mask, latent_dim, config.min_variance
    )
    velocity = jnp.concatenate([latents[:, 1:] - latents[:, :-1], jnp.zeros_like(latents[:, :1])],
                               1)  # fmt: skip
    velocity = velocity / (velocity.reshape(-1, latent_dim).std(0) + 1e-6)
    points = jnp.concatenate([latents, velocity], -1).reshape(-1, 2 * latent_dim)
    zero_covs = jnp.zeros(latents.shape + (latent_dim,), latents.dtype)
    zero_cross = zero_covs[:, 1:]
    eye = jnp.eye(latent_dim, dtype=signals.dtype)
    start = Params(
        initial_probs=jnp.full(num_states, 1.0 / num_states, signals.dtype),
        transition_logits=jnp.log(0.9 * jnp.eye(num_states) + 0.1 / num_states),
        recurrence_weights=jnp.zeros((num_states, latent_dim), signals.dtype),
        initial_mean=jnp.zeros(latent_dim, signals.dtype),
        initial_cov=eye,
        dynamics=jnp.broadcast_to(0.95 * eye, (num_states, latent_dim, latent_dim)),
        dynamics_bias=jnp.zeros((num_states, latent_dim), signals.dtype),
        dynamics_cov=jnp.broadcast_to(0.1 * eye, (num_states, latent_dim, latent_dim)),
        emissions=jnp.zeros((num_neurons, latent_dim), signals.dtype),
        emissions_bias=jnp.zeros(num_neurons, signals.dtype),
        emissions_cov=jnp.ones(num_neurons, signals.dtype),
    )
    # point-mass q(z) on the initial latents: EM of an autoregressive HMM
    no_trials = jnp.zeros(num_trials, signals.dtype)
    point = ChainGaussian(latents, zero_covs, zero_cross, no_trials, no_trials)

    def ar_hmm(carry, _):
        params, marginals, pairs, _ = carry
        dynamics, bias, noise = _dynamics_m_step(
            params, marginals, latents, zero_covs, zero_cross, config.min_variance
        )
        counts = pairs.sum((0, 1)) + 1e-3
        params = params._replace(
            dynamics=dynamics, dynamics_bias=bias, dynamics_cov=noise,
            transition_logits=jnp.log(counts / counts.sum(-1, keepdims=True)),
        )  # fmt: skip
        discrete, _, _ = jax.vmap(lambda c: _discrete_update(params, c))(point)
        total = jnp.sum(discrete.log_likelihood)
        return (params, discrete.marginals, discrete.pair_marginals, total), None

    def restart(key):
        _, labels = kmeans(key, points, jnp.ones(points.shape[0]), num_states)
        marginals = jax.nn.one_hot(labels, num_states, dtype=signals.dtype).reshape(
            num_trials, num_bins, num_states
        )
        pairs = jnp.einsum("btj,btk->btjk", marginals[:, :-1], marginals[:, 1:])
        carry = (start, marginals, pairs, jnp.asarray(-jnp.inf, signals.dtype))
        carry, _ = jax.lax.scan(ar_hmm, carry, None, length=config.init_iters)
        return carry

    found = jax.lax.map(restart, jax.random.split(kmeans_key, config.init_restarts))
    best = jnp.argmax(jnp.where(jnp.isnan(found[3]), -jnp.inf, found[3]))
    params, marginals, _, _ = jax.tree.map(lambda x: x[best], found)
    probs, mean0, cov0 = _initial_m_step(marginals, latents, zero_covs, config.min_variance)
    params = params._replace(initial_probs=probs, initial_mean=mean0, initial_cov=cov0)
    if poisson:
        rate = jnp.sum(bin_mask[..., None] * signals, (0, 1)) / bin_mask.sum()
        params = params._replace(emissions_bias=jnp.log(rate + 1e-3))
    emissions, emissions_bias, emissions_cov = _emission_m_step(
        params, poisson, signals, bin_mask, latents, zero_covs, config.min_variance
    )
    return params._replace(
        emissions=emissions, emissions_bias=emissions_bias, emissions_cov=emissions_cov
    )


def init(key, config: Config, trials) -> Params:
    """Initial parameters: PCA latents smoothed by a Kalman smoother (square-root counts for
    spikes), k-means of (latent, velocity) for the states, `init_iters` EM iterations of an
    autoregressive HMM on the latents for the per-state dynamics, then a (Poisson or
    Gaussian) regression of the signals on the latents for the emissions."""
    _check_trials(config, trials, "slds.init")
    signals, bin_mask = _data(trials)
    return _init_arrays(key, signals, bin_mask, config, _poisson(config, trials))


# ---------------------------------------------------------------------------------------------
# The family


def fitter(config: Config) -> Fitter:
    """Laplace-EM as a `Fitter` (`latentjax.nn.em`): each step alternates q(z) (warm-started
    Newton) and q(s) once, then the M-step. `info["log_likelihood"]` is the ELBO at the
    parameters entering the step."""

    def init_carry(params, trials):
        signals, bin_mask = _data(trials)
        cold = _infer(params, config, _poisson(config, trials), signals, bin_mask)
        return cold.states, cold.chain.means

    def e_step(params, trials, carry):
        signals, bin_mask = _data(trials)
        found = _infer(params, config, _poisson(config, trials), signals, bin_mask, carry, 1)
        entries = jnp.sum(bin_mask) * signals.shape[-1]
        return EStep(
            found, jnp.sum(found.log_likelihood), entries, (found.states, found.chain.means)
        )

    def m_step(params, found, trials):
        signals, bin_mask = _data(trials)
        return _m_step(params, config, _poisson(config, trials), signals, bin_mask, found)

    return em_fitter(e_step, m_step, init_carry)


def validation_loss(params: Params, trials, key, config: Config, step):
    """Held-out negative ELBO per observed entry (cold-started inference); aux
    `{"log_likelihood"}` (the ELBO)."""
    del key, step
    signals, bin_mask = _data(trials)
    found = _infer(params, config, _poisson(config, trials), signals, bin_mask)
    total = jnp.sum(found.log_likelihood)
    return -total / (jnp.sum(bin_mask) * signals.shape[-1]), {"log_likelihood": total}


def log_likelihood(params: Params, trials, config: Config):
    """`[trials]` ELBO of each trial (cold-started inference)."""
    _check_trials(config, trials, "slds.log_likelihood")
    return _posterior_arrays(params, trials, config)[0].log_likelihood


def state_map(state, dynamics, bias):
    """One state's map z -> A_k z + b_k, for `lj.geometry.fixed_points(state_map, starts,
    kind="map", args=(A_k, b_k))`.

    Args:
      state: `[D]` z.
      dynamics: `[D, D]` A_k.
      bias: `[D]` b_k.

    Returns:
      `[D]` the next latent's mean.
    """
    return dynamics @ state + bias


def fixed_points(params: Params):
    """The fixed point z* = (I - A_k)^-1 b_k of each state's affine map.

    Args:
      params: `Params`.

    Returns:
      `[K, D]` (NaN or Inf where I - A_k is singular).
    """
    eye = jnp.eye(params.dynamics.shape[-1])
    points = jnp.linalg.solve(eye - params.dynamics, params.dynamics_bias[..., None])[..., 0]
    return jnp.where(jnp.isfinite(points), points, jnp.nan)


@functools.partial(jax.jit, static_argnames=("config",))
def _posterior_arrays(params: Params, trials, config: Config):
    signals, bin_mask = _data(trials)
    poisson = _poisson(config, trials)
    found = _infer(params, config, poisson, signals, bin_mask)

    def path(chain):
        log_likelihoods = _state_log_likelihoods(
            params, chain.means, chain.covariances, chain.cross_covariances
        )
        return viterbi(
            jnp.log(params.initial_probs), _log_transitions(params, chain.means), log_likelihoods
        )

    paths = jax.vmap(path)(found.chain)
    chain = found.chain
    linear = chain.means @ params.emissions.T + params.emissions_bias
    if poisson:
        variance = jnp.einsum(
            "nk,btkl,nl->btn", params.emissions, chain.covariances, params.emissions
        )
        rates = jnp.exp(linear + 0.5 * variance)
    else:
        rates = linear
    return found, paths, rates


def posterior(params: Params, trials, config: Config, key=None, **options) -> Posterior:
    """Posterior of every trial (cold-started: `posterior_iters` alternations).

    Returns:
      `Posterior` with `latents` `[B, T, D]` (Laplace means), `rates` `[B, T, N]` (expected
      counts per bin, or the Gaussian mean) and extras `states` `[B, T, K]` (q(s_t = k)),
      `most_likely` `[B, T]` (Viterbi path), `covariances` `[B, T, D, D]`, `log_likelihood`
      `[B]` (ELBO), and the per-state maps `dynamics` `[K, D, D]`, `dynamics_bias` `[K, D]`,
      `fixed_points` `[K, D]`.
    """
    del key
    if options:
        raise ValueError(f"slds.posterior: unknown options {sorted(options)}")
    _check_trials(config, trials, "slds.posterior")
    if params.emissions.shape[0] != trials.num_neurons:
        raise ValueError(
            f"slds.posterior: `trials` have {trials.num_neurons} neurons, the params "
            f"{params.emissions.shape[0]}"
        )
    found, paths, rates = _posterior_arrays(params, trials, config)
    return Posterior(
        latents=found.chain.means,
        rates=rates,
        extras={
            "states": found.states.marginals,
            "most_likely": paths,
            "covariances": found.chain.covariances,
            "log_likelihood": found.log_likelihood,
            "dynamics": params.dynamics,
            "dynamics_bias": params.dynamics_bias,
            "fixed_points": fixed_points(params),
        },
    )


def figures(posterior: Posterior, trials) -> dict:
    """The report's state raster and per-state flow fields (`lj.plot`)."""
    from latentjax.plot.states import state_flow_fields, state_raster

    found = {"states": state_raster(posterior, dt=getattr(trials, "dt", 1.0))}
    if np.shape(posterior.latents)[-1] >= 2:
        found["flow_fields"] = state_flow_fields(
            posterior.dynamics, posterior.dynamics_bias, latents=posterior.latents,
            states=posterior.most_likely,
        )  # fmt: skip
    return found
