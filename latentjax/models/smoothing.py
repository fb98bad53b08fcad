"""The Neural Latents Benchmark smoothing baseline: Gaussian-smoothed spikes plus a Poisson GLM.

Held-in rates are the held-in spikes convolved with a Gaussian kernel of standard deviation
`kernel_sd` seconds (normalised to sum to one, truncated at `truncate` SDs). Held-out rates come
from a Poisson GLM per held-out neuron `j` on the log smoothed held-in rates, as in the NLB
baseline (nlb_tools' smoothing example):

    features_t = log(smoothed_t + log_offset)                          [held-in neurons]
    heldout_rate_tj = exp(features_t . w_j + b_j)                      expected counts per bin

fitted by ridge-penalised maximum likelihood with scikit-learn's `PoissonRegressor` objective,
`mean_t (rate_tj - y_tj log rate_tj) + alpha / 2 |w_j|^2` over observed bins, by damped Newton
steps (one per `Fitter` step, all held-out neurons at once).

Differences from nlb_tools: the kernel is odd-length and centred (nlb_tools rounds the SD to
whole bins and uses an even-length window), and the smoothed value is normalised by the
smoothed mask, so trial edges and missing bins are not pulled towards zero.

Examples:
  >>> import latentjax as lj
  >>> from latentjax.models import smoothing
  >>> trials = lj.datasets.lorenz(seed=0, num_trials=20, num_bins=40).trials
  >>> config = smoothing.Config(kernel_sd=0.05, heldout_neurons=(0, 5, 9))
  >>> result = lj.fit(config, trials, progress=False)
  >>> lj.infer(result, trials).rates.shape      # [trials, time, all neurons]
  (20, 40, 30)
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from latentjax.data import Trials
from latentjax.results import Posterior
from latentjax.train import Fitter, TrainConfig, knob

__all__ = [
    "KERNEL_SDS_IN_BINS",
    "Config",
    "ReadoutParams",
    "ReadoutState",
    "adapt",
    "fitter",
    "heldin_neurons",
    "init",
    "posterior",
    "smooth_spikes",
    "validation_loss",
]


@dataclasses.dataclass(frozen=True)
class Config:
    """Smoothing-baseline hyperparameters.

    Attributes:
      kernel_sd: standard deviation of the Gaussian kernel, seconds (NLB uses 0.03 to 0.06).
        None (the default): `lj.fit` picks it from `KERNEL_SDS_IN_BINS` by the
        leave-one-bin-out Poisson likelihood of the training trials' held-in neurons
        (`adapt`); the fitted config records it.
      heldout_neurons: indices (into the training trials' neurons) of the held-out neurons
        whose rates the GLM predicts; e.g. the NLB held-out units. Empty (the default): the
        model only smooths, and its validation score is the leave-one-bin-out prediction.
      truncate: the kernel reaches `truncate` standard deviations each side.
      log_offset: added to the smoothed rates before the log (nlb_tools uses 1e-4).
      train: loop settings; `train.steps` Newton iterations of the GLM.
      alpha: ridge penalty of the GLM weights, as scikit-learn's `PoissonRegressor` (knob).
    """

    kernel_sd: float | None = None
    heldout_neurons: tuple[int, ...] = ()
    truncate: float = 3.0
    log_offset: float = 1e-4
    train: TrainConfig = TrainConfig(steps=20, chunk_size=10)
    alpha: float = knob(0.01, "positive")

    def __post_init__(self):
        for name in ("kernel_sd", "truncate", "log_offset"):
            value = getattr(self, name)
            if name == "kernel_sd" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"smoothing.Config: `{name}` must be > 0, got {value!r}")
        neurons = self.heldout_neurons
        if not isinstance(neurons, tuple) or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in neurons
        ):
            raise ValueError(
                "smoothing.Config: `heldout_neurons` must be a tuple of neuron indices >= 0, "
                f"got {neurons!r}"
            )
        if len(set(neurons)) != len(neurons):
            raise ValueError(f"smoothing.Config: `heldout_neurons` repeats a neuron: {neurons}")
        if isinstance(self.alpha, numbers.Real) and not self.alpha >= 0:
            raise ValueError(f"smoothing.Config: `alpha` must be >= 0, got {self.alpha!r}")


class ReadoutParams(NamedTuple):
    """Poisson GLM from log smoothed held-in rates to held-out neurons.

    Attributes:
      weights: `[heldin neurons, heldout neurons]`.
      bias: `[heldout neurons]`.
    """

    weights: jax.Array
    bias: jax.Array


class ReadoutState(NamedTuple):
    """State of the Newton `Fitter`: just the parameters."""

    params: ReadoutParams


def _kernel(dt: float, kernel_sd: float, truncate: float) -> np.ndarray:
    """The normalised Gaussian kernel `[2 radius + 1]` (radius as scipy.ndimage rounds it)."""
    sd_bins = kernel_sd / dt
    radius = int(truncate * sd_bins + 0.5)
    lags = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (lags / sd_bins) ** 2)
    return kernel / kernel.sum()


def _convolve_time(values: jax.Array, kernel: np.ndarray) -> jax.Array:
    """Zero-padded centred convolution of `values` `[time, channels]` along time."""
    radius = kernel.shape[0] // 2
    padded = jnp.pad(values, ((radius, radius), (0, 0)))
    convolve = functools.partial(jnp.convolve, mode="valid")
    return jax.vmap(convolve, in_axes=(1, None), out_axes=1)(padded, jnp.asarray(kernel))


def _leave_centre_out(kernel: np.ndarray) -> np.ndarray:
    """The kernel without its centre tap: each bin predicted from its neighbours only."""
    kernel = kernel.copy()
    kernel[kernel.shape[0] // 2] = 0.0
    return kernel


def _smooth_trial(spikes: jax.Array, mask: jax.Array, kernel: np.ndarray) -> jax.Array:
    """Mask-normalised smoothing of one trial `[time, neurons]`."""
    observed = mask.astype(spikes.dtype)[:, None]
    total = _convolve_time(spikes * observed, kernel)
    weight = _convolve_time(observed, kernel)
    return jnp.where(weight > 0, total / jnp.where(weight > 0, weight, 1.0), 0.0)


def _smooth(spikes, mask, dt: float, kernel_sd: float, truncate: float, *, leave_out=False):
    spikes = jnp.asarray(spikes, dtype=jnp.result_type(float))
    kernel = _kernel(dt, kernel_sd, truncate)
    kernel = _leave_centre_out(kernel) if leave_out else kernel
    return jax.vmap(_smooth_trial, in_axes=(0, 0, None))(spikes, jnp.asarray(mask), kernel)


def smooth_spikes(spikes, dt: float, kernel_sd: float, mask=None, *, truncate: float = 3.0):
    """Gaussian-kernel smoothed spikes, expected counts per bin.

    `smoothed[b, t] = sum_s g(t - s) mask[b, s] spikes[b, s] / sum_s g(t - s) mask[b, s]`,
    with `g` a Gaussian of SD `kernel_sd / dt` bins truncated at `truncate` SDs; so at trial
    edges and near missing bins only observed bins are averaged.

    Args:
      spikes: `[trials, time, neurons]` counts.
      dt: seconds per bin.
      kernel_sd: kernel standard deviation, seconds.
      mask: `[trials, time]` bool, True where observed; default all observed.
      truncate: kernel half-width in standard deviations.

    Returns:
      `[trials, time, neurons]` smoothed counts per bin.

    Examples:
      >>> import numpy as np
      >>> smooth_spikes(np.ones((2, 50, 3)), dt=0.01, kernel_sd=0.05).shape
      (2, 50, 3)
    """
    spikes = np.asarray(spikes)
    if spikes.ndim != 3 or 0 in spikes.shape:
        raise ValueError(
            f"smooth_spikes: `spikes` must be [trials, time, neurons], got shape {spikes.shape}"
        )
    for name, value in (("dt", dt), ("kernel_sd", kernel_sd), ("truncate", truncate)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"smooth_spikes: `{name}` must be a positive number, got {value!r}")
    if mask is None:
        mask = np.ones(spikes.shape[:2], bool)
    mask = np.asarray(mask)
    if mask.shape != spikes.shape[:2]:
        raise ValueError(
            f"smooth_spikes: `mask` must have shape [trials, time] = {spikes.shape[:2]}, "
            f"got {mask.shape}"
        )
    return _smooth(spikes, mask.astype(bool), float(dt), float(kernel_sd), float(truncate))


def _split_neurons(config: Config, num_neurons: int) -> tuple[np.ndarray, np.ndarray]:
    heldout = np.asarray(config.heldout_neurons, dtype=int)
    heldin = np.setdiff1d(np.arange(num_neurons), heldout)
    return heldin, heldout


def _features(spikes, mask, dt: float, config: Config) -> jax.Array:
    """`[trials, time, heldin]` log smoothed rates of the held-in `spikes`."""
    smoothed = _smooth(spikes, mask, dt, config.kernel_sd, config.truncate)
    return jnp.log(smoothed + config.log_offset)


def _glm_objective(weights, bias, features, counts, observed, alpha):
    """Penalised mean Poisson negative log-likelihood of one held-out neuron.

    `features` `[bins, heldin]`, `counts` and `observed` `[bins]`.
    """
    log_rate = features @ weights + bias
    nll = jnp.sum(observed * (jnp.exp(log_rate) - counts * log_rate)) / jnp.sum(observed)
    return nll + 0.5 * alpha * jnp.sum(weights**2)


_LINE_SEARCH = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.0)


def _newton_step(weights, bias, features, counts, observed, alpha):
    """One damped Newton step on one held-out neuron's GLM; never raises its objective."""
    theta = jnp.concatenate([weights, bias[None]])

    def objective(theta):
        return _glm_objective(theta[:-1], theta[-1], features, counts, observed, alpha)

    grad = jax.grad(objective)(theta)
    hessian = jax.hessian(objective)(theta)
    direction = -jnp.linalg.solve(hessian, grad)
    factors = jnp.asarray(_LINE_SEARCH, theta.dtype)
    candidates = theta + factors[:, None] * direction
    values = jax.vmap(objective)(candidates)
    best = jnp.argmin(jnp.where(jnp.isfinite(values), values, jnp.inf))
    return candidates[best, :-1], candidates[best, -1], values[best]


def _design(config: Config, data: Trials) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Flattened GLM inputs: features `[bins, heldin]`, counts `[bins, heldout]`, observed."""
    heldin, heldout = _split_neurons(config, data.spikes.shape[2])
    spikes = jnp.asarray(data.spikes, dtype=jnp.result_type(float))
    features = _features(spikes[:, :, heldin], data.mask, data.dt, config)
    num_bins = spikes.shape[0] * spikes.shape[1]
    counts = spikes[:, :, heldout].reshape(num_bins, heldout.shape[0])
    observed = jnp.asarray(data.mask, spikes.dtype).reshape(num_bins)
    return features.reshape(num_bins, heldin.shape[0]), counts, observed


def heldin_neurons(config: Config, num_neurons: int) -> np.ndarray | None:
    """The neurons not in `config.heldout_neurons`, which `posterior` also takes alone."""
    if not config.heldout_neurons:
        return None
    return np.setdiff1d(np.arange(num_neurons), np.asarray(config.heldout_neurons))


def _check_trials(function: str, config: Config, trials: Any) -> None:
    if not isinstance(trials, Trials):
        raise ValueError(f"smoothing.{function}: `trials` must be lj.Trials, got {type(trials)}")
    if trials.continuous:
        raise ValueError(f"smoothing.{function}: `trials` must hold spike counts")
    if config.heldout_neurons and (
        max(config.heldout_neurons) >= trials.num_neurons
        or len(config.heldout_neurons) >= trials.num_neurons
    ):
        raise ValueError(
            f"smoothing.{function}: `config.heldout_neurons` {config.heldout_neurons} must be "
            f"indices of at most {trials.num_neurons - 1} of the {trials.num_neurons} neurons"
        )
    if config.kernel_sd is None and function != "adapt":
        raise ValueError(
            f"smoothing.{function}: `kernel_sd` is None (chosen from the data by lj.fit); give "
            "it or call lj.models.smoothing.adapt(config, trials) first"
        )


KERNEL_SDS_IN_BINS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0)
"""The kernel standard deviations, in bins, that `adapt` chooses among."""


def adapt(config: Config, trials: Trials) -> Config:
    """`config` with `kernel_sd` None chosen by cross-validation on `trials`: the candidate of
    `KERNEL_SDS_IN_BINS` (times `trials.dt`) whose smoothing best predicts each held-in
    bin from its neighbours (lowest leave-one-bin-out Poisson NLL, the score `validation_loss`
    gives without held-out neurons); a given `kernel_sd` is kept.

    Examples:
      >>> import numpy as np, latentjax as lj
      >>> rates = 2 + np.sin(np.arange(200) / 10.0)       # slow: a wide kernel wins
      >>> spikes = np.random.default_rng(0).poisson(rates[None, :, None], (20, 200, 5))
      >>> adapt(Config(), lj.Trials(spikes, dt=0.01)).kernel_sd
      0.06
    """
    if config.kernel_sd is not None:
        return config
    _check_trials("adapt", config, trials)
    heldin = trials.select_neurons(_split_neurons(config, trials.num_neurons)[0])
    scores = {}
    for sd_bins in KERNEL_SDS_IN_BINS:
        candidate = dataclasses.replace(
            config, kernel_sd=float(f"{sd_bins * heldin.dt:.6g}"), heldout_neurons=()
        )
        scores[candidate.kernel_sd] = float(validation_loss(None, heldin, None, candidate, 0)[0])
    return dataclasses.replace(config, kernel_sd=min(scores, key=scores.get))


def init(key: jax.Array, config: Config, trials: Trials) -> ReadoutParams:
    """Zero weights; each bias the log mean count of its held-out neuron."""
    del key  # deterministic
    _check_trials("init", config, trials)
    heldin, heldout = _split_neurons(config, trials.num_neurons)
    observed = np.asarray(trials.mask, bool)
    mean_counts = np.asarray(trials.spikes)[:, :, heldout][observed].mean(axis=0)
    dtype = jnp.result_type(float)
    return ReadoutParams(
        weights=jnp.zeros((heldin.shape[0], heldout.shape[0]), dtype),
        bias=jnp.log(jnp.asarray(mean_counts, dtype) + config.log_offset),
    )


def fitter(config: Config) -> Fitter:
    """The GLM `Fitter`: each step is one damped Newton step for every held-out neuron.

    `info` holds `loss`, the penalised Poisson objective summed over held-out neurons.
    """

    def init_state(params: ReadoutParams, data: Trials) -> ReadoutState:
        del data
        return ReadoutState(params)

    def step(state: ReadoutState, data: Trials, key: jax.Array) -> tuple[ReadoutState, dict]:
        del key  # deterministic
        features, counts, observed = _design(config, data)
        weights, bias, values = jax.vmap(
            _newton_step, in_axes=(1, 0, None, 1, None, None), out_axes=(1, 0, 0)
        )(state.params.weights, state.params.bias, features, counts, observed, config.alpha)
        return ReadoutState(ReadoutParams(weights, bias)), {"loss": values.sum()}

    return Fitter(init_state, step)


def validation_loss(params: ReadoutParams, trials: Trials, key, config: Config, step):
    """Held-out Poisson negative log-likelihood per observed entry (log y! included).

    With held-out neurons: their GLM rates on `trials` (the co-smoothing score, as nlb_tools
    selects the kernel). Without: every neuron's rate predicted from its neighbouring bins
    (the smoothed spikes with the kernel's centre left out), a cross-validated score of
    `kernel_sd`. aux `{"nll"}`.
    """
    del key, step
    spikes = jnp.asarray(trials.spikes, dtype=jnp.result_type(float))
    heldin, heldout = _split_neurons(config, spikes.shape[2])
    if heldout.size:
        features = _features(spikes[:, :, heldin], trials.mask, trials.dt, config)
        rates, counts = jnp.exp(features @ params.weights + params.bias), spikes[:, :, heldout]
    else:
        smoothed = _smooth(
            spikes, trials.mask, trials.dt, config.kernel_sd, config.truncate, leave_out=True
        )
        rates, counts = smoothed + config.log_offset, spikes
    observed = jnp.asarray(trials.mask, spikes.dtype)[..., None]
    nll = rates - counts * jnp.log(rates) + jax.scipy.special.gammaln(counts + 1)
    nll = jnp.sum(nll * observed) / (jnp.sum(observed) * counts.shape[-1])
    return nll, {"nll": nll}


def posterior(
    params: ReadoutParams, trials: Trials, config: Config, key: jax.Array | None = None
) -> Posterior:
    """Smoothed held-in rates and GLM held-out rates of `trials`.

    `trials` holds either all the neurons the model was fitted on (the held-out ones are then
    ignored) or only the held-in neurons, in their original order.

    Returns a `Posterior` with `latents` `[trials, time, heldin]` the smoothed held-in rates,
    `rates` `[trials, time, all neurons]` (held-in: smoothed counts; held-out: GLM; in the
    fitted order when given all neurons, held-in then held-out when given the held-in ones),
    and extras `heldout_rates` `[trials, time, heldout]`.
    """
    del key  # deterministic
    num_heldin, num_heldout = params.weights.shape
    num_neurons = num_heldin + num_heldout
    if not isinstance(trials, Trials):
        raise ValueError(f"smoothing.posterior: `trials` must be lj.Trials, got {type(trials)}")
    heldin, heldout = _split_neurons(config, num_neurons)
    if trials.num_neurons == num_neurons:
        spikes = np.asarray(trials.spikes)[:, :, heldin]
    elif trials.num_neurons == num_heldin:
        spikes = np.asarray(trials.spikes)
    else:
        raise ValueError(
            f"smoothing.posterior: `trials` must hold all {num_neurons} neurons or the "
            f"{num_heldin} held-in ones, got {trials.num_neurons}"
        )
    spikes = jnp.asarray(spikes, dtype=jnp.result_type(float))
    smoothed = _smooth(spikes, trials.mask, trials.dt, config.kernel_sd, config.truncate)
    heldout_rates = jnp.exp(jnp.log(smoothed + config.log_offset) @ params.weights + params.bias)
    if trials.num_neurons == num_heldin:  # held-in then held-out, as `lj.evaluate` reads them
        rates = jnp.concatenate([smoothed, heldout_rates], axis=-1)
    else:
        rates = jnp.zeros(smoothed.shape[:2] + (num_neurons,), smoothed.dtype)
        rates = rates.at[:, :, heldin].set(smoothed).at[:, :, heldout].set(heldout_rates)
    return Posterior(latents=smoothed, rates=rates, extras={"heldout_rates": heldout_rates})
