"""Poisson linear dynamical system (PLDS), fitted by Laplace-EM.

Model of one trial:

    z_0 ~ N(m_0, P_0),    z_t = F z_{t-1} + b + N(0, Q)       latents [time, latents]
    y_tn ~ Poisson(f(c_n^T z_t + d_n))                          counts  [time, neurons]

with link f = exp (default) or softplus; rates are expected counts per bin.

Why Laplace-EM (Macke et al. 2011; Paninski et al. 2010) rather than variational EM: the
log-posterior of the latents is concave and its Hessian is block-tridiagonal, so each Newton
step is *exactly* one information-form Kalman smoother on pseudo-observations
(J_t = C^T diag(-l''_t) C, h_t = C^T l'_t + J_t z_t), O(T K^3) per trial with no N x N matrix:
the E-step reuses the Gaussian LDS kernels, is deterministic, warm-starts from the previous
EM iteration, and the smoother at the mode gives the Laplace posterior covariances and the
Laplace approximation of log p(y) for free. Variational Gaussian EM would need an iterative
optimisation of T K^2 covariance parameters per trial for a similar bound (Macke et al. 2011
found the two about equally accurate).

M-step: the Gauss-Markov prior in closed form (as the Gaussian LDS); for the exp link the
emissions maximise the exact expected log-likelihood under the Laplace posterior,
E[exp(c^T z + d)] = exp(c^T m + d + c^T P c / 2), by damped per-neuron Newton steps; for the
softplus link the expected log-likelihood is approximated at the posterior mean.

Examples:
    >>> import latentjax as lj
    >>> train = lj.datasets.lorenz(seed=0, num_trials=10, num_bins=30).trials
    >>> config = lj.models.plds.Config(latent_dim=3, train=lj.train.TrainConfig(steps=5))
    >>> result = lj.fit(config, train, progress=False)
    >>> lj.infer(result, train).rates.shape                      # [trials, time, neurons]
    (10, 30, 30)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from latentjax.nn.em import EStep, em_fitter
from latentjax.nn.kalman import LatentPrior, Potentials, SmootherResult, smooth_potentials
from latentjax.nn.linear_gaussian import emission_potentials, prior_m_step, subspace_init
from latentjax.nn.poisson import LINKS as _LINKS
from latentjax.nn.poisson import STEP_SIZES as _STEP_SIZES
from latentjax.nn.poisson import log_likelihood_terms as _log_likelihood_terms
from latentjax.nn.poisson import newton_maximise
from latentjax.results import CausalFilter, Posterior
from latentjax.train.config import TrainConfig, knob
from latentjax.train.fitter import Fitter

__all__ = [
    "Config",
    "Params",
    "StreamConstants",
    "causal_filter",
    "fitter",
    "init",
    "posterior",
    "validation_loss",
]



@dataclasses.dataclass(frozen=True)
class Config:
    """Hyperparameters of the Poisson LDS.

    Attributes:
      latent_dim: number of latents K.
      link: "exp" or "softplus".
      train: loop settings; `train.steps` EM iterations.
      newton_iters: damped Newton iterations of the Laplace E-step per EM iteration (warm
        started from the previous iteration's mode).
      posterior_newton_iters: Newton iterations when inferring new trials (cold start).
      filter_newton_iters: damped Newton iterations per bin of the causal Laplace filter
        (`posterior(..., causal=True)`, `lj.decode.stream`), started at the prediction.
      emission_newton_iters: damped Newton iterations of the emission M-step.
      parallel: associative-scan smoother inside each Newton step.
      min_variance: floor on the eigenvalues of Q and P_0 (knob).
      init_jitter: scale of the random perturbation of the initial dynamics (knob).
    """

    latent_dim: int = 3
    link: str = "exp"
    train: TrainConfig = TrainConfig(steps=50, chunk_size=10)
    newton_iters: int = 5
    posterior_newton_iters: int = 25
    filter_newton_iters: int = 3
    emission_newton_iters: int = 3
    parallel: bool = False
    min_variance: float = knob(1e-4, "positive")
    init_jitter: float = knob(0.05, "nonnegative")

    def __post_init__(self):
        for name in ("latent_dim", "newton_iters", "posterior_newton_iters", "filter_newton_iters"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"plds.Config: `{name}` must be a positive int, got {value!r}")
        if self.link not in _LINKS:
            raise ValueError(f"plds.Config: `link` must be one of {_LINKS}, got {self.link!r}")


class Params(NamedTuple):
    """PLDS parameters: `initial_mean` `[K]`, `initial_cov` `[K, K]`, `dynamics` `[K, K]`,
    `dynamics_bias` `[K]`, `dynamics_cov` `[K, K]`, `emissions` `[N, K]`, `emissions_bias`
    `[N]` (log baseline counts per bin for the exp link)."""

    initial_mean: jax.Array
    initial_cov: jax.Array
    dynamics: jax.Array
    dynamics_bias: jax.Array
    dynamics_cov: jax.Array
    emissions: jax.Array
    emissions_bias: jax.Array


def _check_trials(config: Config, trials, caller: str) -> None:
    if trials.continuous:
        raise ValueError(f"{caller}: the Poisson LDS needs spike counts, got continuous signals")
    if config.latent_dim > trials.num_neurons:
        raise ValueError(
            f"{caller}: `latent_dim` ({config.latent_dim}) exceeds the number of neurons "
            f"({trials.num_neurons})"
        )


def _prior(params: Params, num_bins: int) -> LatentPrior:
    offsets = jnp.broadcast_to(params.dynamics_bias, (num_bins, params.dynamics_bias.shape[0]))
    return LatentPrior(
        params.initial_mean, params.initial_cov, params.dynamics, offsets, params.dynamics_cov
    )


def _log_prior(prior: LatentPrior, latents):
    """log N-Markov density of a latent path `[T, K]`."""

    def log_normal(x, mean, cov):
        root = jnp.linalg.cholesky(cov)
        white = jax.scipy.linalg.solve_triangular(root, (x - mean).T, lower=True)
        return -0.5 * jnp.sum(white**2) - x.shape[0] * (
            jnp.sum(jnp.log(jnp.diagonal(root))) + 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi)
        )

    predicted = latents[:-1] @ prior.dynamics.T + prior.offsets[1:]
    return log_normal(latents[:1], prior.initial_mean, prior.initial_cov) + log_normal(
        latents[1:], predicted, prior.dynamics_cov
    )


def _laplace_one(params: Params, counts, bin_mask, latents, link: str, num_iters: int, parallel):
    """Laplace posterior of one trial by damped Newton from `latents` `[T, K]`."""
    prior = _prior(params, counts.shape[0])
    weight = bin_mask.astype(counts.dtype)[:, None]

    def objective(path):
        value, _, _ = _log_likelihood_terms(
            link, counts, path @ params.emissions.T + params.emissions_bias
        )
        return jnp.sum(weight * value) + _log_prior(prior, path)

    def potentials(path):
        linear = path @ params.emissions.T + params.emissions_bias
        value, gradient, curvature = _log_likelihood_terms(link, counts, linear)
        curvature, gradient = weight * curvature, weight * gradient
        information = jnp.einsum("tn,nk,nl->tkl", curvature, params.emissions, params.emissions)
        shift = gradient @ params.emissions + jnp.einsum("tkl,tl->tk", information, path)
        quadratic = jnp.einsum(
            "tk,tk->t", shift - 0.5 * jnp.einsum("tkl,tl->tk", information, path), path
        )
        constant = jnp.sum(weight * value, -1) - quadratic
        return Potentials(information, weight[:, 0], shift, constant)

    def newton(path, _):
        target = smooth_potentials(prior, potentials(path), parallel=parallel).means
        candidates = jnp.stack([path + a * (target - path) for a in _STEP_SIZES])
        values = jax.vmap(objective)(candidates)
        best = jnp.argmax(jnp.where(jnp.isfinite(values), values, -jnp.inf))
        return candidates[best], None

    mode, _ = jax.lax.scan(newton, latents, None, length=num_iters)
    return smooth_potentials(prior, potentials(mode), parallel=parallel)


def _laplace(params, counts, bin_mask, latents, config: Config, num_iters: int) -> SmootherResult:
    """Laplace posterior of every trial (vmapped)."""
    return jax.vmap(
        lambda c, m, z: _laplace_one(params, c, m, z, config.link, num_iters, config.parallel)
    )(counts, bin_mask, latents)


def _expected_log_likelihood(link, emission, bias, counts, weight, means, covs):
    """Sum over bins of E[log p(y_n | z)] for one neuron (`emission` `[K]`)."""
    linear = means @ emission + bias
    if link == "exp":
        variance = jnp.einsum("k,btkl,l->bt", emission, covs, emission)
        return jnp.sum(weight * (counts * linear - jnp.exp(linear + 0.5 * variance)))
    value, _, _ = _log_likelihood_terms(link, counts, linear)
    return jnp.sum(weight * value)


def _emission_m_step(params: Params, means, covs, counts, bin_mask, config):
    """Damped Newton ascent of each neuron's expected log-likelihood in (c_n, d_n), under
    latent marginals `means` `[B, T, K]`, `covs` `[B, T, K, K]`."""
    weight = bin_mask.astype(counts.dtype)

    def neuron(emission, bias, neuron_counts):
        def value(theta):
            return _expected_log_likelihood(
                config.link, theta[:-1], theta[-1], neuron_counts, weight, means, covs
            )

        theta = newton_maximise(value, jnp.append(emission, bias), config.emission_newton_iters)
        return theta[:-1], theta[-1]

    return jax.vmap(neuron, in_axes=(0, 0, 2))(params.emissions, params.emissions_bias, counts)


def _counts(trials):
    return jnp.asarray(trials.spikes, dtype=float), jnp.asarray(trials.mask)


def init(key, config: Config, trials) -> Params:
    """Initial parameters: a Gaussian LDS initialisation on square-root counts gives the
    dynamics and latent paths; a Poisson regression of the counts on those paths gives the
    emissions."""
    _check_trials(config, trials, "plds.init")
    counts, bin_mask = _counts(trials)
    signals = jnp.sqrt(counts)
    inputs = jnp.zeros(counts.shape[:2] + (0,), counts.dtype)
    gaussian = subspace_init(
        key, signals, bin_mask, inputs, config.latent_dim, "pca", config.min_variance,
        config.init_jitter,
    )  # fmt: skip
    prior = LatentPrior(
        gaussian.initial_mean,
        gaussian.initial_cov,
        gaussian.dynamics,
        jnp.broadcast_to(gaussian.bias, (counts.shape[1], config.latent_dim)),
        gaussian.dynamics_cov,
    )

    def smoothed_means(signal, mask):
        no_inputs = jnp.zeros((signal.shape[0], 0), signal.dtype)
        potentials = emission_potentials(
            gaussian.loadings, gaussian.offset, jnp.zeros((signal.shape[1], 0)), gaussian.noise,
            signal, mask, no_inputs,
        )  # fmt: skip
        return smooth_potentials(prior, potentials).means

    latents = jax.vmap(smoothed_means)(signals, bin_mask)
    scale = jnp.std(latents, axis=(0, 1)) + 1e-6
    latents = latents / scale
    weight = bin_mask[..., None]
    mean_rate = jnp.sum(weight * counts, (0, 1)) / jnp.sum(weight)
    params = Params(
        initial_mean=gaussian.initial_mean / scale,
        initial_cov=gaussian.initial_cov / jnp.outer(scale, scale),
        dynamics=gaussian.dynamics * (1 / scale)[:, None] * scale[None, :],
        dynamics_bias=gaussian.bias / scale,
        dynamics_cov=gaussian.dynamics_cov / jnp.outer(scale, scale),
        emissions=jnp.zeros((trials.num_neurons, config.latent_dim), counts.dtype),
        emissions_bias=jnp.log(mean_rate + 1e-3),
    )
    point_masses = jnp.zeros(latents.shape + latents.shape[-1:], latents.dtype)
    emissions, bias = _emission_m_step(params, latents, point_masses, counts, bin_mask, config)
    return params._replace(emissions=emissions, emissions_bias=bias)


def _laplace_e_step(params: Params, trials, start, config: Config) -> EStep:
    """Laplace E-step warm-started at `start` `[B, T, K]`; statistics (smoothed, counts, mask)."""
    counts, bin_mask = _counts(trials)
    smoothed = _laplace(params, counts, bin_mask, start, config, config.newton_iters)
    entries = jnp.sum(bin_mask) * counts.shape[-1]
    total = jnp.sum(smoothed.log_likelihood)
    return EStep((smoothed, counts, bin_mask), total, entries, smoothed.means)


def fitter(config: Config) -> Fitter:
    """Laplace-EM as a `Fitter` (`latentjax.nn.em`): the E-step warm-starts from the previous
    iteration's posterior modes. `info["log_likelihood"]` is the Laplace approximation of
    log p(y) at the parameters before the update; `info["loss"]` its negative per entry."""

    def init_carry(params, trials):
        counts, _ = _counts(trials)
        return jnp.zeros(counts.shape[:2] + (config.latent_dim,), counts.dtype)

    def e_step(params, trials, latents):
        return _laplace_e_step(params, trials, latents, config)

    def m_step(params, statistics, trials):
        smoothed, counts, bin_mask = statistics
        inputs = jnp.zeros(counts.shape[:2] + (0,), counts.dtype)
        m0, p0, dynamics, bias, _, dynamics_cov = prior_m_step(
            smoothed, bin_mask, inputs, config.min_variance
        )
        params = params._replace(
            initial_mean=m0,
            initial_cov=p0,
            dynamics=dynamics,
            dynamics_bias=bias,
            dynamics_cov=dynamics_cov,
        )
        emissions, emissions_bias = _emission_m_step(
            params, smoothed.means, smoothed.covariances, counts, bin_mask, config
        )
        return params._replace(emissions=emissions, emissions_bias=emissions_bias)

    return em_fitter(e_step, m_step, init_carry)


def validation_loss(params: Params, trials, key, config: Config, step):
    """Held-out negative log-likelihood per observed entry: the Laplace approximation of
    -log p(y) (at the posterior mode, found by `posterior_newton_iters` cold-started Newton
    steps) divided by the observed entries. aux `{"log_likelihood"}`."""
    del key, step
    counts, bin_mask = _counts(trials)
    start = jnp.zeros(counts.shape[:2] + (config.latent_dim,), counts.dtype)
    smoothed = _laplace(params, counts, bin_mask, start, config, config.posterior_newton_iters)
    total = jnp.sum(smoothed.log_likelihood)
    return -total / (jnp.sum(bin_mask) * counts.shape[-1]), {"log_likelihood": total}


@functools.partial(jax.jit, static_argnames=("config",))
def _posterior_arrays(params: Params, trials, config: Config):
    counts, bin_mask = _counts(trials)
    start = jnp.zeros(counts.shape[:2] + (config.latent_dim,), counts.dtype)
    smoothed = _laplace(params, counts, bin_mask, start, config, config.posterior_newton_iters)
    return smoothed, _rates(params, smoothed.means, smoothed.covariances, config)


class StreamConstants(NamedTuple):
    """What the causal Laplace filter reads: `dynamics` `[K, K]`, `dynamics_bias` `[K]`,
    `dynamics_cov` `[K, K]`, `emissions` `[N, K]`, `emissions_bias` `[N]`."""

    dynamics: jax.Array
    dynamics_bias: jax.Array
    dynamics_cov: jax.Array
    emissions: jax.Array
    emissions_bias: jax.Array


_UNROLLED_SOLVE_MAX = 16


def _solve_spd(matrix, right):
    """`matrix^-1 right` for a symmetric positive-definite `[K, K]` matrix and `[K, M]` or
    `[K]` right-hand sides. Up to K = 16 by Gauss-Jordan elimination unrolled in plain array
    operations (no pivoting: fine for SPD matrices), which XLA fuses: a streamed bin then
    makes no LAPACK call, each of which costs tens of microseconds on CPU; LU beyond."""
    num = matrix.shape[0]
    if num > _UNROLLED_SOLVE_MAX:
        return jnp.linalg.solve(matrix, right)
    vector = right.ndim == 1
    augmented = jnp.concatenate([matrix, right[:, None] if vector else right], axis=1)
    identity = jnp.eye(num, dtype=matrix.dtype)
    for k in range(num):
        # row k scaled to a unit pivot; every other row loses its multiple of it, and row k
        # becomes the scaled row: one elementwise update, which XLA fuses across the steps
        row = augmented[k] / augmented[k, k]
        augmented = augmented - (augmented[:, k] - identity[k])[:, None] * row[None]
    solution = augmented[:, num:]
    return solution[:, 0] if vector else solution


def _inverse_spd(matrix):
    """Inverse of a small symmetric positive-definite matrix (`_solve_spd`), symmetrised."""
    inverse = _solve_spd(matrix, jnp.eye(matrix.shape[0], dtype=matrix.dtype))
    return 0.5 * (inverse + inverse.T)


def _filter_bin(link: str, num_iters: int, constants: StreamConstants, state, counts, observed):
    """One bin of the causal Laplace filter: the mode and curvature of
    log p(y_t | z) + log N(z; predicted) by damped Newton from the prediction, then the
    Gaussian prediction of the next bin. Returns (state, (mode [K], covariance [K, K]))."""
    mean, cov = state
    weight = jnp.asarray(observed, mean.dtype)
    emissions = constants.emissions
    prior_precision = _inverse_spd(cov)

    steps = jnp.asarray(_STEP_SIZES, mean.dtype)

    def hessian(curvature):
        return emissions.T @ ((weight * curvature)[:, None] * emissions) + prior_precision

    def newton(carry, _):
        latent, linear = carry  # linear = C z + d
        _, gradient, curvature = _log_likelihood_terms(link, counts, linear)
        ascent = emissions.T @ (weight * gradient) - prior_precision @ (latent - mean)
        direction = _solve_spd(hessian(curvature), ascent)
        # candidates z + a d along the Newton direction, their linear predictors by linearity
        linears = linear + steps[:, None] * (emissions @ direction)
        offsets = (latent - mean) + steps[:, None] * direction
        values = weight * jnp.sum(_log_likelihood_terms(link, counts, linears)[0], -1)
        values = values - 0.5 * jnp.einsum("ak,kl,al->a", offsets, prior_precision, offsets)
        # the longest step that does not lower the objective (Newton's full step near the
        # mode): unlike the best of the candidates, rounding cannot flip this choice there
        tolerance = 1e-5 * (1.0 + jnp.abs(values[-1]))
        accepted = jnp.argmax(jnp.isfinite(values) & (values >= values[-1] - tolerance))
        return (latent + steps[accepted] * direction, linears[accepted]), None

    start = (mean, emissions @ mean + constants.emissions_bias)
    # unrolled when short (a streamed bin then runs no loop), rolled when long (compile time)
    unroll = num_iters <= 4
    (mode, linear), _ = jax.lax.scan(newton, start, None, length=num_iters, unroll=unroll)
    filtered_cov = _inverse_spd(hessian(_log_likelihood_terms(link, counts, linear)[2]))
    dynamics = constants.dynamics
    next_mean = dynamics @ mode + constants.dynamics_bias
    next_cov = dynamics @ filtered_cov @ dynamics.T + constants.dynamics_cov
    return (next_mean, 0.5 * (next_cov + next_cov.T)), (mode, filtered_cov)


def _stream_step(link: str, num_iters: int, constants, state, counts, observed):
    state, (mode, _) = _filter_bin(link, num_iters, constants, state, counts, observed)
    return state, mode


def _stream_constants(params: Params) -> StreamConstants:
    return StreamConstants(
        params.dynamics,
        params.dynamics_bias,
        params.dynamics_cov,
        params.emissions,
        params.emissions_bias,
    )


def causal_filter(params: Params, config: Config, *, continuous: bool = False) -> CausalFilter:
    """The causal Laplace filter one bin at a time (the hook of `lj.decode.stream`).

    At bin t the Gaussian prediction N(m_t, P_t) of z_t meets the Poisson likelihood of
    y_t; the filtered latent is the mode of their product (`filter_newton_iters` damped
    Newton steps from m_t) and its covariance the inverse curvature there (a Laplace
    approximation, as the point-process filters of Eden et al. 2004); the next prediction
    is N(F mode + b, F Sigma F^T + Q).

    Args:
      params: fitted `Params`.
      config: the `Config` fitted with.
      continuous: must be False (the model is of spike counts).

    Returns:
      `CausalFilter` whose `step(constants, state, counts [N], observed)` returns the
      filtered mode `[K]`: over a trial, exactly `posterior(..., causal=True).latents`.
    """
    if continuous:
        raise ValueError("plds.causal_filter: the Poisson LDS needs spike counts")
    step = functools.partial(_stream_step, config.link, config.filter_newton_iters)
    state = (params.initial_mean, params.initial_cov)
    return CausalFilter(step, _stream_constants(params), state, params.emissions.shape[0])


@functools.partial(jax.jit, static_argnames=("config",))
def _causal_arrays(params: Params, trials, config: Config):
    counts, bin_mask = _counts(trials)
    constants = _stream_constants(params)
    bin_step = functools.partial(_filter_bin, config.link, config.filter_newton_iters, constants)

    def one(trial_counts, trial_mask):
        state = (params.initial_mean, params.initial_cov)
        _, (modes, covs) = jax.lax.scan(
            lambda carry, inputs: bin_step(carry, *inputs), state, (trial_counts, trial_mask)
        )
        return modes, covs

    modes, covs = jax.vmap(one)(counts, bin_mask)
    return modes, covs, _rates(params, modes, covs, config)


def _rates(params: Params, means, covs, config: Config):
    linear = means @ params.emissions.T + params.emissions_bias
    if config.link == "exp":
        variance = jnp.einsum("nk,btkl,nl->btn", params.emissions, covs, params.emissions)
        return jnp.exp(linear + 0.5 * variance)
    return jax.nn.softplus(linear)


def posterior(
    params: Params, trials, config: Config, key=None, *, causal: bool = False, **options
) -> Posterior:
    """Laplace posterior of every trial, or with `causal` the causal Laplace filter.

    Args:
      params: fitted `Params`.
      trials: `Trials` `[B, T, N]` of spike counts.
      config: the `Config` fitted with.
      key: unused.
      causal: filter instead of smooth: the latents of bin t see bins up to t only
        (`causal_filter`; `lj.decode.stream` gives the same one bin at a time).

    Returns:
      `Posterior` with `latents` `[B, T, K]` (posterior modes, or filtered modes), `rates`
      `[B, T, N]` (expected counts per bin: E[exp(c^T z + d)] under the Laplace posterior
      for the exp link, the plug-in rate for softplus) and extras `covariances`
      `[B, T, K, K]` and (smoothing only) `log_likelihood` `[B]` (Laplace approximation
      of log p(y)).
    """
    del key
    if options:
        raise ValueError(f"plds.posterior: unknown options {sorted(options)}")
    if not isinstance(causal, bool):
        raise ValueError(f"plds.posterior: `causal` must be True or False, got {causal!r}")
    _check_trials(config, trials, "plds.posterior")
    if causal:
        modes, covs, rates = _causal_arrays(params, trials, config)
        return Posterior(latents=modes, rates=rates, extras={"covariances": covs})
    smoothed, rates = _posterior_arrays(params, trials, config)
    return Posterior(
        latents=smoothed.means,
        rates=rates,
        extras={"covariances": smoothed.covariances, "log_likelihood": smoothed.log_likelihood},
    )
