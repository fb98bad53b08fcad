"""Gaussian linear dynamical system (LDS), fitted by EM.

Model of one trial (dynamax's `ParamsLGSSM` conventions; inputs u_t optional):

    z_0 ~ N(m_0, P_0)
    z_t = F z_{t-1} + B u_t + b + N(0, Q)          latents    [time, latents]
    y_t = C z_t + D u_t + d + N(0, diag(r))        signals    [time, neurons]

Emission noise is diagonal, so the Kalman filter runs in information form (`_kalman.py`): a step
costs O(K^3) with C^T R^-1 C shared by fully observed bins, O(N K^2) for a bin with missing
entries (NaN), and never inverts an N x N matrix. Missing bins (`Trials.mask` False, padding
of variable-length trials) contribute only the prediction step, and the log-likelihood counts
observed entries only.

Fitting (`fitter`) is exact EM over many trials: an E-step vmapped over trials (RTS smoother,
sequential or parallel-scan) and the closed-form M-step, with floors on the noise variances
(eigenvalue clipping of Q and P_0, a floor on r: the constrained maximiser, so EM stays
monotone). After every M-step the parameters are moved to a canonical basis (orthonormal
emission columns, latents ordered by variance explained, fixed signs), which leaves the
likelihood unchanged and makes fits comparable across seeds.

Spike counts are fitted after a square-root transform (`transform="sqrt"`, the default for
counts under `"auto"`: variance stabilising, and the rates E[y^2] = (Cz + d)^2 + var are
non-negative counts per bin) or as given (`transform="none"`, the default for continuous
signals; rates are then the Gaussian mean and can be negative).

Examples:
    >>> import latentjax as lj
    >>> train = lj.datasets.lorenz(seed=0, num_trials=20, num_bins=40).trials
    >>> result = lj.fit(lj.models.lds.Config(latent_dim=4), train, progress=False)
    >>> posterior = lj.infer(result, train)
    >>> posterior.latents.shape, posterior.covariances.shape
    ((20, 40, 4), (20, 40, 4, 4))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from dynamax.linear_gaussian_ssm.inference import (
    ParamsLGSSM,
    ParamsLGSSMDynamics,
    ParamsLGSSMEmissions,
    ParamsLGSSMInitial,
    lgssm_joint_sample,
)

from latentjax.nn.em import EStep, em_fitter
from latentjax.nn.kalman import (
    FilterResult,
    LatentPrior,
    Potentials,
    SmootherResult,
    filter_potentials,
    filter_step,
    smooth_potentials,
)
from latentjax.nn.linear_gaussian import (
    augment,
    emission_potentials,
    prior_m_step,
    second_moment,
    subspace_init,
)
from latentjax.results import CausalFilter, Posterior
from latentjax.train.config import TrainConfig, knob
from latentjax.train.fitter import Fitter

__all__ = [
    "Config",
    "causal_filter",
    "FilterResult",
    "Params",
    "SmootherResult",
    "StreamConstants",
    "canonicalize",
    "filter",
    "fitter",
    "init",
    "log_likelihood",
    "params_from_arrays",
    "posterior",
    "sample",
    "smoother",
]

Params = ParamsLGSSM
"""dynamax's `ParamsLGSSM`, with `emissions.cov` the `[neurons]` diagonal of R."""

_INITS = ("pca", "fa")
_TRANSFORMS = ("auto", "none", "sqrt")
_INPUTS = ("none", "behavior")


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyperparameters of the Gaussian LDS.

    Attributes:
      latent_dim: number of latents K.
      train: loop settings; `train.steps` is the number of EM iterations when `lj.fit` is
        given no `steps`, `train.chunk_size` the iterations per compiled chunk.
      init: "pca" (principal subspace, runs anywhere) or "fa" (scikit-learn factor analysis).
      transform: "sqrt" (square-root transform of counts), "none" (fit `spikes` as given) or
        "auto": "sqrt" for spike counts, "none" for continuous trials.
      inputs: "none", or "behavior" to drive latents and emissions with `Trials.behavior`.
      parallel: use the associative-scan filter and smoother (long recordings, accelerators).
      min_variance: floor on the noise variances r, eigenvalues of Q and of P_0 (knob).
      init_jitter: scale of the random perturbation of the initial dynamics (knob); restarts
        with different seeds start from different dynamics.
    """

    latent_dim: int = 3
    train: TrainConfig = TrainConfig(steps=100, chunk_size=25)
    init: str = "pca"
    transform: str = "auto"
    inputs: str = "none"
    parallel: bool = False
    min_variance: float = knob(1e-4, "positive")
    init_jitter: float = knob(0.05, "nonnegative")

    def __post_init__(self):
        if not isinstance(self.latent_dim, (int, np.integer)) or self.latent_dim < 1:
            raise ValueError(
                f"lds.Config: `latent_dim` must be a positive int, got {self.latent_dim!r}"
            )
        for name, choices in (("init", _INITS), ("transform", _TRANSFORMS), ("inputs", _INPUTS)):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"lds.Config: `{name}` must be one of {choices}, got {getattr(self, name)!r}"
                )


# ---------------------------------------------------------------------------------------------
# Parameters


def params_from_arrays(
    *,
    initial_mean,
    initial_cov,
    dynamics,
    dynamics_cov,
    emissions,
    emissions_cov,
    dynamics_bias=None,
    emissions_bias=None,
    dynamics_input_weights=None,
    emissions_input_weights=None,
) -> Params:
    """Build validated `Params` from arrays.

    Args:
      initial_mean: `[K]`.
      initial_cov: `[K, K]`.
      dynamics: `[K, K]` (F).
      dynamics_cov: `[K, K]` (Q).
      emissions: `[N, K]` (C).
      emissions_cov: `[N]` noise variances, or an `[N, N]` diagonal matrix.
      dynamics_bias: `[K]`.
      emissions_bias: `[N]`.
      dynamics_input_weights: `[K, U]` (B).
      emissions_input_weights: `[N, U]` (D).

    Examples:
      >>> import numpy as np
      >>> from latentjax.models import lds
      >>> p = lds.params_from_arrays(initial_mean=np.zeros(2), initial_cov=np.eye(2),
      ...     dynamics=0.9 * np.eye(2), dynamics_cov=0.1 * np.eye(2),
      ...     emissions=np.ones((5, 2)), emissions_cov=np.ones(5))
      >>> p.emissions.cov.shape
      (5,)
    """
    initial_mean = np.asarray(initial_mean, dtype=float)
    if initial_mean.ndim != 1:
        raise ValueError(
            f"params_from_arrays: `initial_mean` must be [K], got {initial_mean.shape}"
        )
    num_latents = initial_mean.shape[0]
    emissions = np.asarray(emissions, dtype=float)
    if emissions.ndim != 2 or emissions.shape[1] != num_latents:
        raise ValueError(
            f"params_from_arrays: `emissions` must be [N, K] with K={num_latents}, "
            f"got {emissions.shape}"
        )
    num_neurons = emissions.shape[0]
    emissions_cov = np.asarray(emissions_cov, dtype=float)
    if emissions_cov.shape == (num_neurons, num_neurons):
        if np.any(emissions_cov != np.diag(np.diagonal(emissions_cov))):
            raise ValueError(
                "params_from_arrays: `emissions_cov` must be diagonal (pass its diagonal [N])"
            )
        emissions_cov = np.diagonal(emissions_cov).copy()
    if emissions_cov.shape != (num_neurons,):
        raise ValueError(
            f"params_from_arrays: `emissions_cov` must be [N] or [N, N] with N={num_neurons}, "
            f"got {emissions_cov.shape}"
        )
    if np.any(emissions_cov <= 0):
        raise ValueError("params_from_arrays: `emissions_cov` must be positive")
    inputs = [a for a in (dynamics_input_weights, emissions_input_weights) if a is not None]
    num_inputs = np.asarray(inputs[0]).shape[-1] if inputs else 0
    shapes = {
        "initial_cov": (initial_cov, (num_latents, num_latents)),
        "dynamics": (dynamics, (num_latents, num_latents)),
        "dynamics_cov": (dynamics_cov, (num_latents, num_latents)),
        "dynamics_bias": (dynamics_bias, (num_latents,)),
        "emissions_bias": (emissions_bias, (num_neurons,)),
        "dynamics_input_weights": (dynamics_input_weights, (num_latents, num_inputs)),
        "emissions_input_weights": (emissions_input_weights, (num_neurons, num_inputs)),
    }
    arrays = {}
    for name, (value, shape) in shapes.items():
        value = np.zeros(shape) if value is None else np.asarray(value, dtype=float)
        if value.shape != shape:
            raise ValueError(
                f"params_from_arrays: `{name}` must have shape {shape}, got {value.shape}"
            )
        if not np.all(np.isfinite(value)):
            raise ValueError(f"params_from_arrays: `{name}` holds NaN or Inf")
        arrays[name] = value
    for name in ("initial_cov", "dynamics_cov"):
        if np.any(np.linalg.eigvalsh(0.5 * (arrays[name] + arrays[name].T)) <= 0):
            raise ValueError(f"params_from_arrays: `{name}` must be positive definite")
    return _make_params(
        initial_mean,
        arrays["initial_cov"],
        arrays["dynamics"],
        arrays["dynamics_bias"],
        arrays["dynamics_input_weights"],
        arrays["dynamics_cov"],
        emissions,
        arrays["emissions_bias"],
        arrays["emissions_input_weights"],
        emissions_cov,
    )


def _make_params(m0, p0, f, b, bu, q, c, d, du, r) -> Params:
    a = jnp.asarray
    return ParamsLGSSM(
        initial=ParamsLGSSMInitial(mean=a(m0), cov=a(p0)),
        dynamics=ParamsLGSSMDynamics(weights=a(f), bias=a(b), input_weights=a(bu), cov=a(q)),
        emissions=ParamsLGSSMEmissions(weights=a(c), bias=a(d), input_weights=a(du), cov=a(r)),
    )


# ---------------------------------------------------------------------------------------------
# Single-trial inference


def _latent_prior(params: Params, inputs) -> LatentPrior:
    dynamics = params.dynamics
    offsets = dynamics.bias + inputs @ dynamics.input_weights.T
    return LatentPrior(
        params.initial.mean, params.initial.cov, dynamics.weights, offsets, dynamics.cov
    )


def _potentials(params: Params, signals, bin_mask, inputs, entry_mask=None) -> Potentials:
    """Observation potentials of one trial `[T, N]` (entry_mask `[T, N]` or None)."""
    e = params.emissions
    return emission_potentials(
        e.weights, e.bias, e.input_weights, e.cov, signals, bin_mask, inputs, entry_mask
    )


@functools.partial(jax.jit, static_argnames=("parallel", "smooth"))
def _infer_one(params, signals, bin_mask, inputs, entry_mask, *, parallel, smooth):
    prior = _latent_prior(params, inputs)
    potentials = _potentials(params, signals, bin_mask, inputs, entry_mask)
    run = smooth_potentials if smooth else filter_potentials
    return run(prior, potentials, parallel=parallel)


def _check_trial(params: Params, y, mask, inputs, missing_entries, caller: str):
    """Validate one trial's arrays; return (signals, bin mask, inputs, entry mask or None)."""
    num_neurons, _ = params.emissions.weights.shape
    if missing_entries is not None and not isinstance(missing_entries, bool):
        raise ValueError(f"{caller}: `missing_entries` must be None, True or False")
    if isinstance(y, jax.core.Tracer) or missing_entries is not None:
        signals = y
        use_mask = True if missing_entries is None else missing_entries
        entry_mask = (~jnp.isnan(signals)).astype(signals.dtype) if use_mask else None
    else:
        signals = np.asarray(y, dtype=float)
        missing = np.isnan(signals)
        entry_mask = None if not missing.any() else (~missing).astype(float)
        if np.isinf(signals).any():
            raise ValueError(f"{caller}: `y` holds Inf (mark missing entries with NaN)")
    if signals.ndim != 2 or signals.shape[1] != num_neurons:
        raise ValueError(f"{caller}: `y` must be [time, {num_neurons}], got {signals.shape}")
    num_bins = signals.shape[0]
    if mask is None:
        mask = np.ones(num_bins, dtype=bool)
    elif np.shape(mask) != (num_bins,):
        raise ValueError(f"{caller}: `mask` must be [time] = ({num_bins},), got {np.shape(mask)}")
    num_inputs = params.dynamics.input_weights.shape[1]
    if inputs is None:
        if num_inputs:
            raise ValueError(f"{caller}: the params take {num_inputs} inputs; pass `inputs`")
        inputs = np.zeros((num_bins, 0))
    elif np.shape(inputs) != (num_bins, num_inputs):
        raise ValueError(
            f"{caller}: `inputs` must be [time, {num_inputs}] = {(num_bins, num_inputs)}, "
            f"got {np.shape(inputs)}"
        )
    signals = jnp.nan_to_num(jnp.asarray(signals))
    return signals, jnp.asarray(mask), jnp.asarray(inputs, signals.dtype), entry_mask


def filter(  # noqa: A001
    params: Params, y, *, mask=None, inputs=None, parallel: bool = False, missing_entries=None
) -> FilterResult:
    """Kalman filter of one trial.

    Args:
      params: `Params`.
      y: `[time, neurons]` signals; NaN marks a missing entry (only observed entries update).
      mask: `[time]` bool, False for a missing bin (prediction only), e.g. padding.
      inputs: `[time, inputs]` when the params take inputs.
      parallel: associative-scan filter (O(log T) depth) instead of the sequential scan.
      missing_entries: whether `y` may hold NaN entries (then each bin's C^T diag(m_t / r) C
        is formed, O(N K^2)); None detects it on concrete arrays and assumes True under jit.

    Returns:
      `FilterResult` with `means` `[T, K]`, `covariances` `[T, K, K]`, predictions and the
      `log_likelihood` of the observed entries.
    """
    signals, mask, inputs, entry_mask = _check_trial(
        params, y, mask, inputs, missing_entries, "lds.filter"
    )
    return _infer_one(params, signals, mask, inputs, entry_mask, parallel=parallel, smooth=False)


def smoother(
    params: Params, y, *, mask=None, inputs=None, parallel: bool = False, missing_entries=None
) -> SmootherResult:
    """RTS smoother of one trial (arguments as `filter`).

    Returns:
      `SmootherResult` with `means` `[T, K]`, `covariances` `[T, K, K]`, `cross_covariances`
      `[T-1, K, K]` (Cov(z_t, z_{t+1})), `log_likelihood` and the `filtered` result.
    """
    signals, mask, inputs, entry_mask = _check_trial(
        params, y, mask, inputs, missing_entries, "lds.smoother"
    )
    return _infer_one(params, signals, mask, inputs, entry_mask, parallel=parallel, smooth=True)


def sample(params: Params, num_timesteps: int, *, key, inputs=None):
    """Draw one trial: `(latents [T, K], signals [T, N])` (dynamax `lgssm_joint_sample`)."""
    if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise ValueError(
            f"lds.sample: `num_timesteps` must be a positive int, got {num_timesteps!r}"
        )
    return lgssm_joint_sample(params, key, int(num_timesteps), inputs)


# ---------------------------------------------------------------------------------------------
# Many trials: data preparation, initialisation, EM


def _square_root(config: Config, trials) -> bool:
    """Whether the model sees square-rooted counts (`transform`, "auto" resolved)."""
    return config.transform == "sqrt" or (config.transform == "auto" and not trials.continuous)


def _signals(trials, config: Config):
    """Signals `[B, T, N]`, bin mask `[B, T]` and inputs `[B, T, U]` of `Trials`."""
    spikes = jnp.asarray(trials.spikes, dtype=float)
    signals = jnp.sqrt(spikes) if _square_root(config, trials) else spikes
    if config.inputs == "behavior":
        inputs = jnp.asarray(trials.behavior, dtype=signals.dtype)
    else:
        inputs = jnp.zeros(signals.shape[:2] + (0,), signals.dtype)
    return signals, jnp.asarray(trials.mask), inputs


def _check_trials(config: Config, trials, caller: str) -> None:
    if config.inputs == "behavior" and trials.behavior is None:
        raise ValueError(f"{caller}: config.inputs='behavior' but the trials have no `behavior`")
    if config.latent_dim > trials.num_neurons:
        raise ValueError(
            f"{caller}: `latent_dim` ({config.latent_dim}) exceeds the number of neurons "
            f"({trials.num_neurons})"
        )
    if config.transform == "sqrt" and trials.continuous:
        raise ValueError(f"{caller}: transform='sqrt' is for spike counts, not continuous signals")


def init(key, config: Config, trials) -> Params:
    """Initial parameters from PCA or factor analysis of the observed bins.

    The emissions come from the principal subspace (or FA loadings and noise); the dynamics
    from least squares on consecutive projected latents, perturbed by `init_jitter`.
    """
    _check_trials(config, trials, "lds.init")
    signals, bin_mask, inputs = _signals(trials, config)
    model = subspace_init(
        key, signals, bin_mask, inputs, config.latent_dim, config.init, config.min_variance,
        config.init_jitter,
    )  # fmt: skip
    return _make_params(
        *model[:6],
        model.loadings,
        model.offset,
        jnp.zeros((signals.shape[-1], inputs.shape[-1]), signals.dtype),
        model.noise,
    )


def _e_step(params: Params, signals, bin_mask, inputs, parallel: bool) -> SmootherResult:
    def one(signal, mask, inp):
        prior = _latent_prior(params, inp)
        return smooth_potentials(prior, _potentials(params, signal, mask, inp), parallel=parallel)

    # the covariance recursion depends on the params and the bin mask only: when every trial
    # has the same mask it is computed once (vmap leaves it unbatched) instead of per trial
    def shared_mask(_):
        return jax.vmap(one, in_axes=(0, None, 0))(signals, bin_mask[0], inputs)

    def own_masks(_):
        return jax.vmap(one)(signals, bin_mask, inputs)

    return jax.lax.cond(jnp.all(bin_mask == bin_mask[:1]), shared_mask, own_masks, None)


def _m_step(smoothed: SmootherResult, signals, bin_mask, inputs, min_variance) -> Params:
    """Closed-form maximiser of the expected complete-data log-likelihood (with floors)."""
    means, covs = smoothed.means, smoothed.covariances
    num_latents = means.shape[-1]
    # emissions: regress y_t on [z_t, 1, u_t] over observed bins
    observed = bin_mask.astype(means.dtype)
    design = augment(means, inputs)
    gram = second_moment(design, covs, observed)
    cross = jnp.einsum("bt,btn,bti->ni", observed, signals, design)
    coefficients = jnp.linalg.solve(gram, cross.T).T
    residual = jnp.einsum("bt,btn->n", observed, signals**2) - jnp.sum(coefficients * cross, 1)
    noise = jnp.maximum(residual / observed.sum(), min_variance)
    return _make_params(
        *prior_m_step(smoothed, bin_mask, inputs, min_variance),
        coefficients[:, :num_latents],
        coefficients[:, num_latents],
        coefficients[:, num_latents + 1 :],
        noise,
    )


def _change_basis(params: Params, transform) -> Params:
    """Params of the latents z' = T z (likelihood unchanged)."""
    inverse = jnp.linalg.inv(transform)
    initial, dynamics, emissions = params
    return ParamsLGSSM(
        initial=ParamsLGSSMInitial(transform @ initial.mean, transform @ initial.cov @ transform.T),
        dynamics=ParamsLGSSMDynamics(
            weights=transform @ dynamics.weights @ inverse,
            bias=transform @ dynamics.bias,
            input_weights=transform @ dynamics.input_weights,
            cov=transform @ dynamics.cov @ transform.T,
        ),
        emissions=emissions._replace(weights=emissions.weights @ inverse),
    )


def _canonical_transform(emissions, latent_cov):
    """T with C T^-1 orthonormal, latents ordered by variance, largest loading positive."""
    left, singular, right_t = jnp.linalg.svd(emissions, full_matrices=False)
    whitening = singular[:, None] * right_t
    values, rotation = jnp.linalg.eigh(whitening @ latent_cov @ whitening.T)
    rotation = rotation[:, ::-1]
    columns = left @ rotation
    peak = jnp.take_along_axis(columns, jnp.argmax(jnp.abs(columns), 0)[None], 0)[0]
    return (jnp.sign(peak) + (peak == 0))[:, None] * (rotation.T @ whitening)


def _latent_covariance(means, covs, weights):
    """Posterior covariance of the latents pooled over weighted bins (`[B, T]` weights)."""
    count = weights.sum()
    mean = jnp.einsum("bt,bti->i", weights, means) / count
    moment = jnp.einsum("bt,bti,btj->ij", weights, means, means) + jnp.einsum(
        "bt,btij->ij", weights, covs
    )
    return moment / count - jnp.outer(mean, mean)


def canonicalize(params: Params, trials, config: Config) -> Params:
    """The same model in the canonical basis (orthonormal emission columns, latents ordered
    by their posterior variance on `trials`, each column's largest loading positive)."""
    _check_trials(config, trials, "lds.canonicalize")
    signals, bin_mask, inputs = _signals(trials, config)
    smoothed = _e_step(params, signals, bin_mask, inputs, config.parallel)
    cov = _latent_covariance(smoothed.means, smoothed.covariances, bin_mask.astype(signals.dtype))
    return _change_basis(params, _canonical_transform(params.emissions.weights, cov))


def fitter(config: Config) -> Fitter:
    """Exact EM as a `Fitter` (`latentjax.nn.em`; the engine calls it inside compiled code,
    with the knobs of `config` as tracers).

    Each step runs one E-step (vmapped smoother) and one M-step (then the canonical basis);
    info `{"loss": -log p(y) per observed entry, "log_likelihood": log p(y)}` evaluated at
    the parameters before the update.
    """

    def e_step(params, trials, carry):
        signals, bin_mask, inputs = _signals(trials, config)
        smoothed = _e_step(params, signals, bin_mask, inputs, config.parallel)
        entries = jnp.sum(bin_mask) * signals.shape[-1]
        return EStep(smoothed, jnp.sum(smoothed.log_likelihood), entries)

    def m_step(params, smoothed, trials):
        signals, bin_mask, inputs = _signals(trials, config)
        new_params = _m_step(smoothed, signals, bin_mask, inputs, config.min_variance)
        cov = _latent_covariance(
            smoothed.means, smoothed.covariances, bin_mask.astype(signals.dtype)
        )
        return _change_basis(new_params, _canonical_transform(new_params.emissions.weights, cov))

    return em_fitter(e_step, m_step)


def log_likelihood(params: Params, trials, config: Config):
    """`[trials]` log-likelihood of each trial's observed bins (of the transformed signals)."""
    _check_trials(config, trials, "lds.log_likelihood")
    signals, bin_mask, inputs = _signals(trials, config)
    return _e_step_filter_ll(params, signals, bin_mask, inputs, config.parallel)


def validation_loss(params: Params, trials, key, config: Config, step):
    """Negative log-likelihood per observed entry of held-out trials (the EM `loss` of
    `fitter`, on other data): what `lj.fit(..., valid=...)` logs and early-stops on."""
    del key, step
    signals, bin_mask, inputs = _signals(trials, config)
    total = jnp.sum(_e_step_filter_ll(params, signals, bin_mask, inputs, config.parallel))
    num_entries = jnp.sum(bin_mask) * signals.shape[-1]
    return -total / num_entries, {"log_likelihood": total}


@functools.partial(jax.jit, static_argnames=("parallel",))
def _e_step_filter_ll(params, signals, bin_mask, inputs, parallel):
    def one(signal, mask, inp):
        prior = _latent_prior(params, inp)
        potentials = _potentials(params, signal, mask, inp)
        return filter_potentials(prior, potentials, parallel=parallel).log_likelihood

    return jax.vmap(one)(signals, bin_mask, inputs)


def _filter_all(params: Params, signals, bin_mask, inputs, parallel: bool) -> FilterResult:
    """Kalman filter of every trial (vmapped): the causal posterior."""

    def one(signal, mask, inp):
        prior = _latent_prior(params, inp)
        return filter_potentials(prior, _potentials(params, signal, mask, inp), parallel=parallel)

    return jax.vmap(one)(signals, bin_mask, inputs)


@functools.partial(jax.jit, static_argnames=("config", "causal"))
def _posterior_arrays(params, trials, config, causal=False):
    signals, bin_mask, inputs = _signals(trials, config)
    if causal:
        marginals = _filter_all(params, signals, bin_mask, inputs, config.parallel)
    else:
        marginals = _e_step(params, signals, bin_mask, inputs, config.parallel)
    emissions = params.emissions
    mean_signal = (
        marginals.means @ emissions.weights.T + emissions.bias + inputs @ emissions.input_weights.T
    )
    if _square_root(config, trials):
        variance = jnp.einsum(
            "nk,btkl,nl->btn", emissions.weights, marginals.covariances, emissions.weights
        )
        rates = mean_signal**2 + variance + emissions.cov
    else:
        rates = mean_signal
    return marginals, rates


def posterior(
    params: Params, trials, config: Config, key=None, *, causal: bool = False, **options
) -> Posterior:
    """Smoothed (or, with `causal`, filtered) latents of every trial.

    Args:
      params: fitted `Params`.
      trials: `Trials` `[B, T, N]`.
      config: the `Config` fitted with.
      key: unused (exact inference).
      causal: Kalman filter instead of the RTS smoother: the latents of bin t see bins up
        to t only (what a real-time decoder can know; `lj.decode.stream` gives the same
        one bin at a time).

    Returns:
      `Posterior` with `latents` `[B, T, K]` (smoothed or filtered means), `rates` `[B, T, N]`
      (the model's expected signal; for `transform="sqrt"`, expected counts per bin) and
      extras `covariances` `[B, T, K, K]`, `log_likelihood` `[B]`.
    """
    del key
    if options:
        raise ValueError(f"lds.posterior: unknown options {sorted(options)}")
    if not isinstance(causal, bool):
        raise ValueError(f"lds.posterior: `causal` must be True or False, got {causal!r}")
    _check_trials(config, trials, "lds.posterior")
    marginals, rates = _posterior_arrays(params, trials, config, causal)
    return Posterior(
        latents=marginals.means,
        rates=rates,
        extras={"covariances": marginals.covariances, "log_likelihood": marginals.log_likelihood},
    )


class StreamConstants(NamedTuple):
    """What the streaming filter of an LDS reads: `dynamics` `[K, K]`, `dynamics_bias` `[K]`,
    `dynamics_cov` `[K, K]`, `emissions` `[N, K]`, `emissions_bias` `[N]`, `inverse_noise`
    `[N]` (1 / r) and `precision` `[K, K]` (C^T R^-1 C, shared by every observed bin)."""

    dynamics: jax.Array
    dynamics_bias: jax.Array
    dynamics_cov: jax.Array
    emissions: jax.Array
    emissions_bias: jax.Array
    inverse_noise: jax.Array
    precision: jax.Array


def _stream_step(square_root: bool, constants: StreamConstants, state, counts, observed):
    mean, cov = state
    signal = jnp.sqrt(counts) if square_root else counts
    weight = jnp.asarray(observed, mean.dtype)
    scaled = weight * constants.inverse_noise * (signal - constants.emissions_bias)
    filtered_mean, _, next_mean, next_cov = filter_step(
        mean,
        cov,
        weight * constants.precision,
        constants.emissions.T @ scaled,
        constants.dynamics,
        constants.dynamics_bias,
        constants.dynamics_cov,
    )
    return (next_mean, next_cov), filtered_mean


def causal_filter(params: Params, config: Config, *, continuous: bool = False) -> CausalFilter:
    """The Kalman filter one bin at a time (the `causal_filter` hook of `lj.decode.stream`).

    Args:
      params: fitted `Params` (without inputs: a stream has no future behaviour to drive it).
      config: the `Config` fitted with.
      continuous: whether the model was fitted on continuous signals (then no square root).

    Returns:
      `CausalFilter` whose `step(constants, state, counts [N], observed)` returns the
      filtered mean `[K]`: over a trial, exactly `posterior(..., causal=True).latents`.
    """
    if config.inputs != "none":
        raise ValueError(
            "lds.causal_filter: a model driven by `inputs` cannot stream (it would need "
            "the behaviour it decodes); fit with inputs='none'"
        )
    square_root = config.transform == "sqrt" or (config.transform == "auto" and not continuous)
    emissions, dynamics = params.emissions, params.dynamics
    inverse_noise = 1.0 / emissions.cov
    constants = StreamConstants(
        dynamics.weights,
        dynamics.bias,
        dynamics.cov,
        emissions.weights,
        emissions.bias,
        inverse_noise,
        emissions.weights.T @ (inverse_noise[:, None] * emissions.weights),
    )
    step = functools.partial(_stream_step, square_root)
    state = (params.initial.mean, params.initial.cov)
    return CausalFilter(step, constants, state, emissions.weights.shape[0])
