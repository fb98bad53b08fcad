"""Real-time decoding: causal latents one bin at a time, and behaviour decoders.

Streaming: `stream(result, readout)` turns a fitted model with a causal filter (`lds`,
`plds`: `lj.family.causal_families()`) and an optional behaviour read-out into a `Stream`,
whose `step(state, counts_of_one_bin)` is compiled once, keeps its state in a pytree and
syncs nothing with the host but its output. Over a recording it gives exactly
`lj.infer(result, trials, causal=True)` (and the read-out applied to it).

Behaviour decoders (fitted like the families, on arrays, by closed-form least squares):

- `Wiener`: ridge regression of behaviour on the `lags` most recent bins of the inputs
  (latents, or spike counts with a causal exponential smoothing `smooth`): the classic
  Wiener-filter decoder.
- `KalmanVelocity`: the Kalman filter decoder of Wu et al. 2006 ("Bayesian population
  decoding of motor cortical activity using a Kalman filter"), with behaviour as the state:
  x_t = A x_{t-1} + N(0, W), y_t = H x_t + b + N(0, Q), y the (square-rooted) spike counts.

Every decoder is causal: `predict` is a `lax.scan` of the decoder's own streaming step.
Arrays are `[trials, time, features]`; behaviour `[trials, time, dims]`.

Examples:
  >>> import numpy as np, latentjax as lj
  >>> rng = np.random.default_rng(0)
  >>> latents = rng.normal(size=(4, 30, 3))
  >>> velocity = latents @ rng.normal(size=(3, 2))
  >>> decoder = lj.decode.fit(lj.decode.Wiener(lags=2, alpha=1e-6), latents, velocity)
  >>> predicted = lj.decode.predict(decoder, latents)
  >>> predicted.shape, bool(lj.decode.r2(predicted, velocity).mean > 0.99)
  ((4, 30, 2), True)

  Streaming a fitted model, one compiled step per bin (skipped in the doctests: the fit
  takes seconds; `tests/test_decode.py` runs it):

  >>> train = lj.datasets.lds(seed=0, num_trials=4, num_bins=20, num_latents=2).trials
  >>> config = lj.models.lds.Config(latent_dim=2, train=lj.train.TrainConfig(steps=3))
  >>> result = lj.fit(config, train, progress=False)               # doctest: +SKIP
  >>> decoder = lj.decode.stream(result)                           # doctest: +SKIP
  >>> state = decoder.init()                                       # doctest: +SKIP
  >>> state, latents = decoder.step(state, train.spikes[0, 0])     # doctest: +SKIP
  >>> latents.shape                                                # doctest: +SKIP
  (2,)
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal
from threadpoolctl import threadpool_limits

from latentjax import family as families
from latentjax.data import Trials
from latentjax.nn.kalman import filter_step
from latentjax.results import FitResult, Posterior

__all__ = [
    "Decoder",
    "KalmanVelocity",
    "R2",
    "Stream",
    "Wiener",
    "fit",
    "predict",
    "r2",
    "replay",
    "stream",
]

_ALPHAS = np.logspace(-3, 5, 17)
_CV_FOLDS = 5
_CV_BLOCK = 5
_TRANSFORMS = ("sqrt", "none")


# ---------------------------------------------------------------------------------------------
# Configs


@dataclasses.dataclass(frozen=True)
class Wiener:
    """Wiener filter: ridge regression on the `lags` most recent bins of the inputs.

    Attributes:
      lags: bins of history in the design (1: the current bin only); the causal window is
        `lags` bins (plus the smoothing's memory).
      alpha: ridge penalty on standardised inputs; None chooses it from
        `logspace(-3, 5, 17)` by 5-fold cross-validation, the folds made of interleaved
        blocks of 5 bins.
      smooth: time constant, in bins, of a causal exponential smoothing of the inputs
        before the lags (0: none), s_t = a s_{t-1} + (1 - a) x_t with a = exp(-1 / smooth).
    """

    lags: int = 5
    alpha: float | None = None
    smooth: float = 0.0

    def __post_init__(self):
        if not isinstance(self.lags, (int, np.integer)) or self.lags < 1:
            raise ValueError(f"Wiener: `lags` must be a positive int, got {self.lags!r}")
        if self.alpha is not None and not (np.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"Wiener: `alpha` must be None or >= 0, got {self.alpha!r}")
        if not (np.isfinite(self.smooth) and self.smooth >= 0):
            raise ValueError(f"Wiener: `smooth` must be >= 0 bins, got {self.smooth!r}")


@dataclasses.dataclass(frozen=True)
class KalmanVelocity:
    """Kalman filter decoder with behaviour (e.g. hand velocity) as the latent state.

    Attributes:
      transform: "sqrt" (square-root counts, variance stabilising) or "none".
      noise: "full" (the classic full observation covariance Q, inverted once at fit) or
        "diagonal".
      shrinkage: Q is shrunk towards its diagonal, (1 - s) Q + s diag(Q), for a stable
        inverse with many neurons and few bins.
    """

    transform: str = "sqrt"
    noise: str = "full"
    shrinkage: float = 0.1

    def __post_init__(self):
        if self.transform not in _TRANSFORMS:
            raise ValueError(
                f"KalmanVelocity: `transform` must be one of {_TRANSFORMS}, got {self.transform!r}"
            )
        if self.noise not in ("full", "diagonal"):
            raise ValueError(
                f"KalmanVelocity: `noise` must be 'full' or 'diagonal', got {self.noise!r}"
            )
        if not 0 <= self.shrinkage <= 1:
            raise ValueError(f"KalmanVelocity: `shrinkage` must be in [0, 1], got {self.shrinkage}")


class WienerParams(NamedTuple):
    """`weights` `[lags, inputs, dims]` (lag 0 = the current bin), `bias` `[dims]`, `decay`
    (the smoothing's a), `start` `[inputs]` (the inputs assumed before the first bin)."""

    weights: jax.Array
    bias: jax.Array
    decay: jax.Array
    start: jax.Array


class KalmanParams(NamedTuple):
    """`dynamics` `[D, D]` (A), `dynamics_cov` `[D, D]` (W), `initial_mean` `[D]`,
    `initial_cov` `[D, D]`, `information` `[D, D]` (H^T Q^-1 H), `gain` `[D, N]` (H^T Q^-1),
    `offset` `[N]` (b)."""

    dynamics: jax.Array
    dynamics_cov: jax.Array
    initial_mean: jax.Array
    initial_cov: jax.Array
    information: jax.Array
    gain: jax.Array
    offset: jax.Array


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A fitted behaviour decoder.

    Attributes:
      config: the `Wiener` or `KalmanVelocity` it was fitted with.
      params: `WienerParams` or `KalmanParams`.
      num_inputs: input features per bin it takes.
      alpha: the ridge penalty used (Wiener), or None.
      cv_r2: the cross-validated R² on the training bins (mean over behaviour dims) at the
        chosen penalty, when `alpha` was chosen by cross-validation; else None. A score of
        the training data only, for choosing among decoders without the test data.
    """

    config: Any
    params: Any
    num_inputs: int
    alpha: float | None = None
    cv_r2: float | None = None


# ---------------------------------------------------------------------------------------------
# Streaming steps of the decoders (pure; `predict` scans them)


def _wiener_init(params: WienerParams):
    lags = params.weights.shape[0]
    return params.start, jnp.broadcast_to(params.start, (lags - 1,) + params.start.shape)


def _wiener_step(params: WienerParams, state, inputs):
    smoothed, history = state
    smoothed = params.decay * smoothed + (1 - params.decay) * inputs
    window = jnp.concatenate([smoothed[None], history], axis=0)  # [lags, inputs]
    out = jnp.einsum("li,lid->d", window, params.weights) + params.bias
    return (smoothed, window[:-1]), out


def _kalman_init(params: KalmanParams):
    return params.initial_mean, params.initial_cov


def _kalman_step(transform: str, params: KalmanParams, state, counts):
    mean, cov = state
    signal = jnp.sqrt(counts) if transform == "sqrt" else counts
    filtered, _, next_mean, next_cov = filter_step(
        mean,
        cov,
        params.information,
        params.gain @ (signal - params.offset),
        params.dynamics,
        jnp.zeros_like(mean),
        params.dynamics_cov,
    )
    return (next_mean, next_cov), filtered


def _readout(decoder: Decoder) -> tuple[Callable, Callable]:
    """(init(params) -> state, step(params, state, inputs [F]) -> (state, out [D]))."""
    if isinstance(decoder.config, Wiener):
        return _wiener_init, _wiener_step
    return _kalman_init, functools.partial(_kalman_step, decoder.config.transform)


# ---------------------------------------------------------------------------------------------
# Fitting and batch prediction


def _as_inputs(name: str, inputs) -> tuple[np.ndarray, np.ndarray | None]:
    """`[B, T, F]` array (and a mask) of an array, `Trials` (spikes) or `Posterior` (latents)."""
    mask = None
    if isinstance(inputs, Trials):
        inputs, mask = inputs.spikes, inputs.mask
    elif isinstance(inputs, Posterior):
        inputs = inputs.latents
    array = np.asarray(inputs, dtype=np.float64)
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"`{name}` must be [trials, time, features], got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` holds NaN or Inf")
    return array, mask


def _check_mask(mask, shape) -> np.ndarray:
    if mask is None:
        return np.ones(shape, bool)
    mask = np.asarray(mask, bool)
    if mask.shape != shape:
        raise ValueError(f"`mask` must be [trials, time] = {shape}, got {mask.shape}")
    return mask


def _smoothed(inputs: np.ndarray, decay: float, start: np.ndarray) -> np.ndarray:
    """Causal exponential smoothing along time, `s_t = decay s_{t-1} + (1 - decay) x_t` from
    `s_{-1} = start`, as one linear filter."""
    before = np.broadcast_to(start, inputs[:, 0].shape)[:, None]  # [B, 1, F]
    filtered, _ = scipy.signal.lfilter([1 - decay], [1, -decay], inputs, axis=1, zi=decay * before)
    return filtered.astype(inputs.dtype)


def _lagged(inputs: np.ndarray, lags: int, start: np.ndarray) -> np.ndarray:
    """`[B, T, lags * F]`: the inputs of bins t, t-1, ..., t-lags+1 (`start` before bin 0)."""
    num_trials, num_bins, num_inputs = inputs.shape
    padded = np.concatenate(
        [np.broadcast_to(start, (num_trials, lags - 1, num_inputs)), inputs], axis=1
    )
    return np.concatenate(
        [padded[:, lags - 1 - lag : lags - 1 - lag + num_bins] for lag in range(lags)], axis=-1
    )


def _ridge_path(design: np.ndarray, targets: np.ndarray, alphas, held_out: np.ndarray):
    """Predictions at `held_out` `[M, P]` of ridge fits (unpenalised intercept, as
    scikit-learn's `Ridge`) for every penalty in `alphas`: `[alphas, M, D]`, through one thin
    SVD of the centred design."""
    mean_x, mean_y = design.mean(0), targets.mean(0)
    left, singular, right_t = np.linalg.svd(design - mean_x, full_matrices=False)
    projected_targets = left.T @ (targets - mean_y)  # [R, D]
    projected = (held_out - mean_x) @ right_t.T  # [M, R]
    shrink = singular / (singular**2 + np.asarray(alphas, float)[:, None])  # [A, R]
    return np.einsum("mr,ar,rd->amd", projected, shrink, projected_targets) + mean_y


def _ridge(design: np.ndarray, targets: np.ndarray, alpha: float):
    """Ridge with an unpenalised intercept (scikit-learn's `Ridge`): (weights, intercept)."""
    mean_x, mean_y = design.mean(0), targets.mean(0)
    left, singular, right_t = np.linalg.svd(design - mean_x, full_matrices=False)
    weights = right_t.T @ (
        (singular / (singular**2 + alpha))[:, None] * (left.T @ (targets - mean_y))
    )
    return weights, mean_y - mean_x @ weights


def _cv_alpha(design: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """The penalty of least squared error over folds of interleaved blocks of `_CV_BLOCK`
    bins (block i in fold i mod 5): every fold sees every part of a recording, so one
    movement in a short recording is not all in one fold. Returns (penalty, its CV R²)."""
    blocks = np.arange(len(design)) // _CV_BLOCK
    errors = np.zeros((len(_ALPHAS), targets.shape[1]))
    for fold in range(_CV_FOLDS):
        test = blocks % _CV_FOLDS == fold
        predicted = _ridge_path(design[~test], targets[~test], _ALPHAS, design[test])
        errors += np.sum((predicted - targets[test]) ** 2, axis=1)
    best = int(np.argmin(errors.sum(1)))
    total = np.maximum(np.sum((targets - targets.mean(0)) ** 2, 0), np.finfo(float).tiny)
    return float(_ALPHAS[best]), float(np.mean(1 - errors[best] / total))


def _fit_wiener(config: Wiener, inputs, behavior, mask) -> Decoder:
    decay = float(np.exp(-1.0 / config.smooth)) if config.smooth > 0 else 0.0
    start = inputs[mask].mean(0)
    features = _lagged(_smoothed(inputs, decay, start), config.lags, start)[mask]
    targets = behavior[mask]
    scale = features.std(0) + 1e-12
    standardised = features / scale
    alpha, cv_r2 = config.alpha, None
    if alpha is None:
        alpha, cv_r2 = _cv_alpha(standardised, targets)
    weights, intercept = _ridge(standardised, targets, alpha)
    weights = (weights / scale[:, None]).reshape(config.lags, inputs.shape[-1], -1)
    params = WienerParams(
        jnp.asarray(weights, jnp.float32),
        jnp.asarray(intercept, jnp.float32),
        jnp.asarray(decay, jnp.float32),
        jnp.asarray(start, jnp.float32),
    )
    return Decoder(config, params, inputs.shape[-1], alpha, cv_r2)


def _covariance(residuals: np.ndarray) -> np.ndarray:
    return residuals.T @ residuals / max(len(residuals) - 1, 1)


def _fit_kalman(config: KalmanVelocity, counts, behavior, mask) -> Decoder:
    if (counts < 0).any():
        raise ValueError("`inputs` of KalmanVelocity must be spike counts (non-negative)")
    signals = np.sqrt(counts) if config.transform == "sqrt" else counts
    states = behavior[mask]
    # dynamics: regress x_t on x_{t-1} over consecutive observed pairs
    pairs = mask[:, 1:] & mask[:, :-1]
    before, after = behavior[:, :-1][pairs], behavior[:, 1:][pairs]
    if len(before) <= behavior.shape[-1]:
        raise ValueError("KalmanVelocity: too few consecutive observed bins to fit the dynamics")
    dynamics = np.linalg.lstsq(before, after, rcond=None)[0].T
    dynamics_cov = _covariance(after - before @ dynamics.T)
    # observations: regress y_t on [x_t, 1]
    design = np.concatenate([states, np.ones((len(states), 1))], axis=1)
    coefficients = np.linalg.lstsq(design, signals[mask], rcond=None)[0].T  # [N, D + 1]
    emissions, offset = coefficients[:, :-1], coefficients[:, -1]
    noise = _covariance(signals[mask] - design @ coefficients.T)
    diagonal = np.diag(np.maximum(np.diag(noise), 1e-6))
    noise = (
        diagonal
        if config.noise == "diagonal"
        else ((1 - config.shrinkage) * noise + config.shrinkage * diagonal)
    )
    gain = np.linalg.solve(noise, emissions).T  # H^T Q^-1
    dims = behavior.shape[-1]
    params = KalmanParams(
        *(
            jnp.asarray(a, jnp.float32)
            for a in (
                dynamics,
                dynamics_cov + 1e-9 * np.eye(dims),
                states.mean(0),
                _covariance(states - states.mean(0)) + 1e-9 * np.eye(dims),
                0.5 * (gain @ emissions + (gain @ emissions).T),
                gain,
                offset,
            )
        )
    )
    return Decoder(config, params, counts.shape[-1])


def fit(config, inputs, behavior, *, mask=None) -> Decoder:
    """Fit a behaviour decoder.

    Args:
      config: `Wiener(...)` or `KalmanVelocity(...)`.
      inputs: `[trials, time, features]`: latents (a `Posterior`, e.g. from
        `lj.infer(..., causal=True)`, or an array) or spike counts (`Trials` or an array).
        `KalmanVelocity` takes spike counts.
      behavior: `[trials, time, dims]` behaviour aligned to the bins (e.g. hand velocity).
      mask: `[trials, time]` bool, the bins to fit on (default: the `Trials` mask, or all).

    Returns:
      A `Decoder` for `predict` and `stream`.
    """
    if not isinstance(config, (Wiener, KalmanVelocity)):
        raise ValueError(
            f"decode.fit: `config` must be Wiener or KalmanVelocity, got {type(config).__name__}"
        )
    inputs, trials_mask = _as_inputs("inputs", inputs)
    behavior = np.asarray(behavior, dtype=np.float64)
    if behavior.ndim != 3 or behavior.shape[:2] != inputs.shape[:2]:
        raise ValueError(
            f"decode.fit: `behavior` must be [trials, time, dims] = {inputs.shape[:2]} + (dims,), "
            f"got {behavior.shape}"
        )
    mask = _check_mask(trials_mask if mask is None else mask, inputs.shape[:2])
    mask = mask & np.isfinite(behavior).all(-1)
    if mask.sum() < 2 * _CV_FOLDS:
        raise ValueError(f"decode.fit: too few observed bins ({mask.sum()}) to fit on")
    behavior = np.where(mask[..., None], behavior, 0.0)
    # small dense problems (an SVD of a few hundred bins by a few thousand lagged inputs):
    # multi-threaded BLAS gains nothing there and, on a busy machine, its spinning threads
    # made one such SVD take 2 s instead of 10 ms
    with threadpool_limits(1, user_api="blas"):
        if isinstance(config, Wiener):
            return _fit_wiener(config, inputs, behavior, mask)
        return _fit_kalman(config, inputs, behavior, mask)


@functools.partial(jax.jit, static_argnames=("init", "step"))
def _predict(params, inputs, *, init, step):
    def one(trial_inputs):
        _, outputs = jax.lax.scan(functools.partial(step, params), init(params), trial_inputs)
        return outputs

    return jax.vmap(one)(inputs)


def predict(decoder: Decoder, inputs) -> np.ndarray:
    """Decoded behaviour, causally (bin t from inputs up to t): the decoder's streaming step
    scanned over each trial.

    Args:
      decoder: a fitted `Decoder`.
      inputs: `[trials, time, features]` as given to `fit` (array, `Trials` or `Posterior`).

    Returns:
      `[trials, time, dims]` decoded behaviour.
    """
    if not isinstance(decoder, Decoder):
        raise ValueError(
            f"decode.predict: `decoder` must be a Decoder, got {type(decoder).__name__}"
        )
    inputs, _ = _as_inputs("inputs", inputs)
    if inputs.shape[-1] != decoder.num_inputs:
        raise ValueError(
            f"decode.predict: `inputs` has {inputs.shape[-1]} features; the decoder takes "
            f"{decoder.num_inputs}"
        )
    init, step = _readout(decoder)
    dtype = decoder.params[0].dtype
    return np.asarray(_predict(decoder.params, jnp.asarray(inputs, dtype), init=init, step=step))


class R2(NamedTuple):
    """`per_axis` `[dims]` R² of each behaviour dimension and their `mean`."""

    per_axis: np.ndarray
    mean: float


def r2(predicted, behavior, *, mask=None) -> R2:
    """Coefficient of determination of decoded behaviour, per axis, over the observed bins.

    Args:
      predicted: `[trials, time, dims]`.
      behavior: `[trials, time, dims]` the truth.
      mask: `[trials, time]` bool, bins to score (default all; bins with NaN are dropped).

    Returns:
      `R2(per_axis [dims], mean)`: 1 - residual / total sum of squares about each axis' mean.

    Examples:
      >>> import numpy as np, latentjax as lj
      >>> truth = np.arange(12.0).reshape(1, 6, 2)
      >>> lj.decode.r2(truth, truth).per_axis.tolist()
      [1.0, 1.0]
    """
    predicted = np.asarray(predicted, np.float64)
    behavior = np.asarray(behavior, np.float64)
    if predicted.shape != behavior.shape or predicted.ndim != 3:
        raise ValueError(
            f"decode.r2: `predicted` {predicted.shape} and `behavior` {behavior.shape} must be "
            "the same [trials, time, dims]"
        )
    mask = _check_mask(mask, behavior.shape[:2]) & np.isfinite(behavior).all(-1)
    truth, guess = behavior[mask], predicted[mask]
    total = np.sum((truth - truth.mean(0)) ** 2, 0)
    per_axis = 1 - np.sum((truth - guess) ** 2, 0) / total
    return R2(per_axis, float(per_axis.mean()))


# ---------------------------------------------------------------------------------------------
# Streaming


def _combined_step(filter_step, readout_step, constants, state, counts):
    filter_constants, readout_params = constants
    filter_state, readout_state = state
    dtype = jax.tree.leaves(constants)[0].dtype
    features = jnp.asarray(counts, dtype)
    if filter_step is not None:
        filter_state, features = filter_step(filter_constants, filter_state, features, True)
    out = features
    if readout_step is not None:
        readout_state, out = readout_step(readout_params, readout_state, features)
    return (filter_state, readout_state), out


class Stream:
    """A compiled real-time decoder (made by `stream`).

    `state = decoder.init()`; then for each new bin `state, out = decoder.step(state,
    counts)` with `counts` `[neurons]`; `out` is the decoded behaviour `[dims]` with a
    read-out, else the causal latents `[latents]`. `step` is one compiled program (the
    same for every bin; the state is a pytree of arrays). `run(counts [time, neurons])`
    replays a whole recording in one compiled scan of the same step.

    Attributes:
      num_neurons: inputs per bin.
      constants: the arrays the step reads (the model's and the read-out's parameters).
    """

    def __init__(self, filter_step, filter_constants, filter_state, readout, num_neurons):
        readout_init, readout_step = (None, None) if readout is None else _readout(readout)
        readout_state = None if readout is None else readout_init(readout.params)
        # device arrays throughout, so that the first call and the later ones (which get
        # the step's own outputs) hit the same compiled program
        self._state = jax.tree.map(jnp.asarray, (filter_state, readout_state))
        self.num_neurons = num_neurons
        self.constants = jax.tree.map(
            jnp.asarray, (filter_constants, None if readout is None else readout.params)
        )
        body = functools.partial(_combined_step, filter_step, readout_step)
        self._step = jax.jit(body)

        def run(constants, state, counts):
            return jax.lax.scan(functools.partial(body, constants), state, counts)

        self._run = jax.jit(run)

    def init(self):
        """The state before the first bin (a pytree of arrays)."""
        return self._state

    def step(self, state, counts):
        """One bin: `counts` `[neurons]` -> `(state, out)`."""
        if np.shape(counts) != (self.num_neurons,):
            raise ValueError(
                f"Stream.step: `counts` must be [{self.num_neurons}] (one bin), got "
                f"{np.shape(counts)}"
            )
        return self._step(self.constants, state, counts)

    def run(self, counts, state=None):
        """A whole recording `[time, neurons]` -> `(state, outputs [time, ...])`, one scan."""
        counts = np.asarray(counts)
        if counts.ndim != 2 or counts.shape[1] != self.num_neurons:
            raise ValueError(
                f"Stream.run: `counts` must be [time, {self.num_neurons}], got {counts.shape}"
            )
        return self._run(self.constants, self.init() if state is None else state, counts)


def stream(result: FitResult | None, readout: Decoder | None = None) -> Stream:
    """A real-time decoder: causal latents of `result` (and `readout` of them) bin by bin.

    Args:
      result: a `FitResult` of a family with a `causal_filter` hook (lds, plds, and lfads
        trained with `Config(causal=True)`), or None to feed the counts straight
        to `readout` (a Wiener filter on smoothed spikes, a `KalmanVelocity` decoder).
      readout: a `Decoder` from `fit` on the model's causal latents (or on counts when
        `result` is None); None outputs the latents.

    Returns:
      A `Stream` whose outputs over a recording equal `lj.infer(result, trials,
      causal=True).latents` (with `readout`: `predict(readout, those latents)`).
    """
    if readout is not None and not isinstance(readout, Decoder):
        raise ValueError(f"stream: `readout` must be a Decoder, got {type(readout).__name__}")
    if result is None:
        if readout is None:
            raise ValueError("stream: give a fitted `result`, a `readout`, or both")
        return Stream(None, None, None, readout, readout.num_inputs)
    if not isinstance(result, FitResult):
        raise ValueError(f"stream: `result` must be a FitResult or None, got {type(result)}")
    registration = families.of_config(result.config)
    hook = getattr(registration.family, "causal_filter", None)
    if hook is None:
        streaming = [
            n for n in families.names() if hasattr(families.get(n).family, "causal_filter")
        ]
        raise ValueError(
            f"stream: `result` is a {registration.name!r} fit, which has no causal filter to "
            f"stream; families that stream: {', '.join(streaming)}"
        )
    continuous = bool((result.data or {}).get("continuous", False))
    causal = hook(result.params, result.config, continuous=continuous)
    num_latents = jax.eval_shape(
        lambda: causal.step(causal.constants, causal.state, jnp.zeros(causal.num_neurons), True)
    )[1].shape[-1]
    if readout is not None and readout.num_inputs != num_latents:
        raise ValueError(
            f"stream: the `readout` takes {readout.num_inputs} inputs; the model gives "
            f"{num_latents} latents (fit the read-out on its causal latents)"
        )
    return Stream(causal.step, causal.constants, causal.state, readout, causal.num_neurons)


class Replay(NamedTuple):
    """What `replay` returns: `outputs` `[trials, time, ...]` (decoded behaviour or latents)
    and `seconds` `[trials, time]`, the wall time of each step (output on the host)."""

    outputs: np.ndarray
    seconds: np.ndarray


def replay(decoder: Stream, recording, *, warmup: int = 5) -> Replay:
    """Replay a recording as a live stream: one `step` per bin, its output copied to the
    host before the next bin, as a real-time loop would.

    Args:
      decoder: a `Stream` from `stream`.
      recording: `Trials` (each trial replayed from a fresh `init()`) or `[time, neurons]`
        counts of one recording.
      warmup: steps run (and discarded) first, so that compiling is not timed.

    Returns:
      `Replay(outputs [trials, time, ...], seconds [trials, time])`.
    """
    if not isinstance(decoder, Stream):
        raise ValueError(f"replay: `decoder` must be a Stream, got {type(decoder).__name__}")
    counts = recording.spikes if isinstance(recording, Trials) else np.asarray(recording)[None]
    if counts.ndim != 3 or counts.shape[-1] != decoder.num_neurons:
        raise ValueError(
            f"replay: `recording` must be [time, {decoder.num_neurons}] counts or Trials of "
            f"{decoder.num_neurons} neurons, got shape {np.shape(counts)}"
        )
    counts = np.asarray(counts, np.float32)
    state = decoder.init()
    for t in range(warmup):
        state, out = decoder.step(state, counts[0, t % counts.shape[1]])
        np.asarray(out)
    outputs, seconds = [], np.empty(counts.shape[:2])
    for trial, trial_counts in enumerate(counts):
        state, trial_outputs = decoder.init(), []
        for t, bin_counts in enumerate(trial_counts):
            start = time.perf_counter()
            state, out = decoder.step(state, bin_counts)
            trial_outputs.append(np.asarray(out))
            seconds[trial, t] = time.perf_counter() - start
        outputs.append(trial_outputs)
    return Replay(np.asarray(outputs), seconds)
