"""Neural Latents Benchmark metrics: bits per spike (co-bps, fp-bps) and PSTH R².

Conventions follow `nlb_tools/evaluation.py` (Pei et al. 2021):

- bits per spike: the Poisson log-likelihood of the predicted rates minus that of a null model
  predicting each neuron's mean count over the evaluated bins, divided by the total spike count
  and by log 2:

      bps = [log p(y | rates) - log p(y | mean_n)] / (sum y) / log 2

  Bins with NaN spikes or masked out are left out (of the likelihoods, the neuron means and the
  spike total); rates that are exactly 0 are replaced by 1e-9 before the log; NaN or negative
  rates in evaluated bins are an error.
- PSTH R²: per condition, the trial average of the predicted rates against the trial average of
  Gaussian-smoothed spikes (70 ms s.d. in the benchmark), stacked over conditions and time;
  R² per neuron (`sklearn.metrics.r2_score`), averaged over neurons.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import r2_score

from latentjax.metrics._checks import (
    as_array,
    as_number,
    check_finite_where,
    check_same_shape,
    observed_bins,
)

__all__ = ["bits_per_spike", "co_bps", "fp_bps", "psth_r2"]

RATE_FLOOR = 1e-9
"""Value that replaces rates of exactly zero before the log (as nlb_tools does)."""

PSTH_KERNEL_SD = 0.07
"""Standard deviation (seconds) of the Gaussian that smooths spikes into PSTHs in the NLB."""


def _poisson_log_likelihood(rates: np.ndarray, spikes: np.ndarray) -> float:
    """Sum of Poisson log-likelihoods without the `log(y!)` term (it cancels in differences)."""
    return float(np.sum(spikes * np.log(rates) - rates))


def bits_per_spike(rates, spikes, *, mask=None) -> float:
    """Bits per spike of predicted rates, the NLB definition.

    Args:
      rates: `[trials, time, neurons]` predicted expected counts per bin (non-negative). Any
        number of leading axes is accepted; the last axis is neurons.
      spikes: observed counts, the shape of `rates`; NaN marks bins left out.
      mask: bool over the leading axes (`[trials, time]`), True where a bin is evaluated.

    Returns:
      Bits per spike (float): 0 for the mean-rate model, higher is better.

    Examples:
      >>> import numpy as np
      >>> spikes = np.random.default_rng(0).poisson(2.0, size=(10, 20, 3))
      >>> neuron_means = np.broadcast_to(spikes.mean(axis=(0, 1)), spikes.shape)
      >>> bits_per_spike(neuron_means, spikes)
      0.0
    """
    return _bits_per_spike("bits_per_spike", ("rates", "spikes"), rates, spikes, mask)


def _bits_per_spike(function: str, names: tuple[str, str], rates, spikes, mask) -> float:
    """`bits_per_spike`, its errors naming `function` and the arguments `names`."""
    rates_name, spikes_name = names
    rates = as_array(function, rates_name, rates)
    spikes = as_array(function, spikes_name, spikes)
    if spikes.ndim < 2:
        raise ValueError(
            f"{function}: `{spikes_name}` must be [..., neurons], got shape {spikes.shape}"
        )
    check_same_shape(function, names, rates, spikes)
    evaluated = observed_bins(function, mask, spikes.shape[:-1])[..., None] & ~np.isnan(spikes)
    check_finite_where(function, spikes_name, spikes, evaluated)
    check_finite_where(function, rates_name, rates, evaluated)
    if (rates[evaluated] < 0).any():
        raise ValueError(f"{function}: `{rates_name}` holds negative values in evaluated bins")
    if (spikes[evaluated] < 0).any():
        raise ValueError(f"{function}: `{spikes_name}` holds negative counts in evaluated bins")

    counts = np.where(evaluated, spikes, 0.0)
    total_spikes = counts.sum()
    if total_spikes <= 0:
        raise ValueError(
            f"{function}: `{spikes_name}` holds no spike in the evaluated bins "
            "(those `mask` keeps, not NaN)"
        )
    leading_axes = tuple(range(spikes.ndim - 1))
    bins_per_neuron = evaluated.sum(axis=leading_axes)
    neuron_means = counts.sum(axis=leading_axes) / np.maximum(bins_per_neuron, 1)

    y = spikes[evaluated]
    model_rates = rates[evaluated]
    null_rates = np.broadcast_to(neuron_means, spikes.shape)[evaluated]
    model_rates = np.where(model_rates == 0, RATE_FLOOR, model_rates)
    null_rates = np.where(null_rates == 0, RATE_FLOOR, null_rates)
    gain = _poisson_log_likelihood(model_rates, y) - _poisson_log_likelihood(null_rates, y)
    return float(gain / total_spikes / np.log(2))


def co_bps(rates_heldout, spikes_heldout, *, mask=None) -> float:
    """Co-smoothing bits per spike: `bits_per_spike` on held-out neurons.

    Args:
      rates_heldout: `[trials, time, heldout_neurons]` rates predicted for neurons the model
        never saw, from the held-in neurons of the same trials.
      spikes_heldout: `[trials, time, heldout_neurons]` their observed counts.
      mask: `[trials, time]` bool, True where evaluated.
    """
    return _bits_per_spike(
        "co_bps", ("rates_heldout", "spikes_heldout"), rates_heldout, spikes_heldout, mask
    )


def fp_bps(rates_forward, spikes_forward, *, mask=None) -> float:
    """Forward-prediction bits per spike: `bits_per_spike` on bins past the end of the input.

    Args:
      rates_forward: `[trials, forward_bins, neurons]` rates predicted for the bins after each
        trial's observed window (held-in and held-out neurons together, as the NLB does).
      spikes_forward: `[trials, forward_bins, neurons]` the counts observed there.
      mask: `[trials, forward_bins]` bool, True where evaluated.
    """
    return _bits_per_spike(
        "fp_bps", ("rates_forward", "spikes_forward"), rates_forward, spikes_forward, mask
    )


def smooth_spikes(spikes: np.ndarray, observed: np.ndarray, kernel_sd_bins: float) -> np.ndarray:
    """Gaussian smoothing over time of each trial, ignoring unobserved bins.

    A normalised convolution: the kernel (truncated at 3 s.d., as nlb_tools' window of 6 s.d.)
    is renormalised over the observed bins it covers, so trial edges and gaps are not dimmed.

    Args:
      spikes: `[trials, time, neurons]`.
      observed: `[trials, time]` bool.
      kernel_sd_bins: kernel standard deviation in bins (0: no smoothing).

    Returns:
      `[trials, time, neurons]` smoothed spikes (0 where no observed bin is in reach).
    """
    if kernel_sd_bins == 0:
        return np.where(observed[..., None], spikes, 0.0)

    def smooth(x):
        return gaussian_filter1d(x, kernel_sd_bins, axis=1, mode="constant", truncate=3.0)

    numerator = smooth(np.where(observed[..., None], spikes, 0.0))
    denominator = smooth(observed.astype(np.float64))[..., None]
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def psth_r2(rates, spikes, conditions, *, dt=None, kernel_sd=PSTH_KERNEL_SD, mask=None) -> float:
    """R² of condition-averaged predicted rates against condition PSTHs of smoothed spikes.

    For each condition, the predicted PSTH is the mean of `rates` over its trials and the true
    PSTH the mean of the Gaussian-smoothed `spikes` (NLB: 70 ms s.d.), each over the observed
    bins at each time; (condition, time) rows are stacked and R² is computed per neuron and
    averaged (`sklearn.metrics.r2_score`, as nlb_tools' `eval_psth`).

    Args:
      rates: `[trials, time, neurons]` predicted expected counts per bin.
      spikes: `[trials, time, neurons]` observed counts (same unit as `rates`).
      conditions: `[trials]` condition label of each trial.
      dt: seconds per bin; needed to smooth (`kernel_sd > 0`).
      kernel_sd: smoothing s.d. in seconds; 0 averages unsmoothed spikes.
      mask: `[trials, time]` bool, True where observed.

    Returns:
      Mean PSTH R² over neurons (float, at most 1).

    Examples:
      >>> import numpy as np
      >>> spikes = np.random.default_rng(0).poisson(1.0, size=(6, 20, 2)).astype(float)
      >>> conditions = np.array([0, 1, 0, 1, 0, 1])
      >>> psth = np.stack([spikes[conditions == c].mean(axis=0) for c in conditions])
      >>> psth_r2(psth, spikes, conditions, kernel_sd=0)
      1.0
    """
    function = "psth_r2"
    rates = as_array(function, "rates", rates, ndim=3)
    spikes = as_array(function, "spikes", spikes, ndim=3)
    check_same_shape(function, ("rates", "spikes"), rates, spikes)
    try:
        conditions = np.asarray(conditions)
    except ValueError as err:
        raise ValueError(f"{function}: `conditions` must be an array [trials]: {err}") from err
    if conditions.shape != spikes.shape[:1]:
        raise ValueError(
            f"{function}: `conditions` must have shape [trials] = {spikes.shape[:1]}, "
            f"got {conditions.shape}"
        )
    if conditions.dtype.kind == "f" and not np.isfinite(conditions).all():
        raise ValueError(f"{function}: `conditions` holds NaN or Inf labels")
    kernel_sd = as_number(function, "kernel_sd", kernel_sd)
    if not (np.isfinite(kernel_sd) and kernel_sd >= 0):
        raise ValueError(f"{function}: `kernel_sd` must be >= 0 seconds, got {kernel_sd}")
    dt = None if dt is None else as_number(function, "dt", dt)
    if kernel_sd > 0 and (dt is None or not (np.isfinite(dt) and dt > 0)):
        raise ValueError(
            f"{function}: pass `dt` (seconds per bin, > 0) to smooth spikes with a "
            f"{kernel_sd} s Gaussian, or kernel_sd=0 for unsmoothed PSTHs; got dt={dt}"
        )
    observed = observed_bins(function, mask, spikes.shape[:2]) & ~np.isnan(spikes).any(axis=2)
    check_finite_where(function, "rates", rates, observed[..., None])
    check_finite_where(function, "spikes", spikes, observed[..., None])

    smoothed = smooth_spikes(spikes, observed, kernel_sd / dt if kernel_sd > 0 else 0.0)
    true_rows, predicted_rows = [], []
    for condition in np.unique(conditions):
        in_condition = conditions == condition
        weights = observed[in_condition][..., None]
        trials_per_bin = weights.sum(axis=0)
        covered = trials_per_bin[:, 0] > 0
        true_sum = np.where(weights, smoothed[in_condition], 0.0).sum(axis=0)
        predicted_sum = np.where(weights, rates[in_condition], 0.0).sum(axis=0)
        true_rows.append(true_sum[covered] / trials_per_bin[covered])
        predicted_rows.append(predicted_sum[covered] / trials_per_bin[covered])
    true_psth, predicted_psth = np.concatenate(true_rows), np.concatenate(predicted_rows)
    if len(true_psth) < 2:
        raise ValueError(f"{function}: fewer than 2 observed (condition, time) bins (`mask`)")
    return float(r2_score(true_psth, predicted_psth))
