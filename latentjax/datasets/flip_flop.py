"""Poisson spikes from a K-bit flip-flop memory (the fixed-point example of Sussillo & Barak
2013, and of FixedPointFinder).

Each of `num_bits` channels receives sparse pulses of sign +1 or -1 (a pulse with probability
`pulse_probability` per bin and channel); the channel's bit takes the sign of its latest
pulse and holds it until the next one (the initial bits are drawn at random):

    b_t[k] = sign of the latest pulse of channel k at or before bin t
    rates = exp(b_t @ readout + bias)     (expected counts per bin),   spikes ~ Poisson(rates)

The `2 ** num_bits` memory states are what a model of these trials must hold between pulses:
its autonomous dynamics need one stable fixed point per state.
"""

from __future__ import annotations

import numpy as np

from latentjax.data import Trials
from latentjax.datasets._dataset import (
    Dataset,
    as_float32,
    check_int,
    check_positive,
    check_range,
    log_linear_readout,
    make_rng,
    poisson_counts,
)

__all__ = ["flip_flop"]


def flip_flop(
    *,
    seed: int = 0,
    num_trials: int = 200,
    num_bins: int = 100,
    num_bits: int = 3,
    num_neurons: int = 40,
    dt: float = 0.01,
    pulse_probability: float = 0.04,
    baseline_hz: tuple[float, float] = (20.0, 40.0),
) -> Dataset:
    """A `num_bits` flip-flop memory read out by Poisson neurons.

    Args:
      seed: seed of every random draw.
      num_trials: number of trials.
      num_bins: bins per trial.
      num_neurons: observed neurons.
      num_bits: memory channels (`2 ** num_bits` memory states).
      dt: seconds per bin.
      pulse_probability: chance of a pulse per bin and channel, in (0, 1).
      baseline_hz: range (spikes/s) of the neurons' rates at zero input to the read-out.

    Returns:
      `Dataset` with truth `latents` `[trials, time, bits]` (the bits, +1 or -1), `rates`
      `[trials, time, neurons]` (counts per bin), `inputs` `[trials, time, bits]` (the
      pulses: +1, -1 or 0) and `params`: `readout` `[bits, neurons]`, `bias` `[neurons]`.

    Examples:
      >>> data = flip_flop(seed=0, num_trials=4)
      >>> sorted(np.unique(data.truth["latents"]).tolist())
      [-1.0, 1.0]
    """
    name = "flip_flop"
    rng = make_rng(name, seed)
    num_trials = check_int(name, "num_trials", num_trials)
    num_bins = check_int(name, "num_bins", num_bins, minimum=2)
    num_bits = check_int(name, "num_bits", num_bits)
    num_neurons = check_int(name, "num_neurons", num_neurons)
    dt = check_positive(name, "dt", dt)
    if not 0.0 < pulse_probability < 1.0:
        raise ValueError(
            f"lj.datasets.{name}: `pulse_probability` must be in (0, 1), got {pulse_probability}"
        )
    baseline_hz = check_range(name, "baseline_hz", baseline_hz)

    shape = (num_trials, num_bins, num_bits)
    signs = rng.choice([-1.0, 1.0], size=shape)
    inputs = np.where(rng.random(shape) < pulse_probability, signs, 0.0)
    start = rng.choice([-1.0, 1.0], size=(num_trials, 1, num_bits))
    # Bit t is the latest non-zero of (start, pulse_1, ..., pulse_t): index of the latest
    # pulse by a running maximum of the pulse bins.
    held = np.concatenate([start, inputs], axis=1)
    bins = np.arange(num_bins + 1)[None, :, None]
    latest = np.maximum.accumulate(np.where(held != 0.0, bins, 0), axis=1)
    bits = np.take_along_axis(held, latest, axis=1)[:, 1:]

    readout, bias = log_linear_readout(rng, num_bits, num_neurons, dt, baseline_hz)
    rates = np.exp(bits @ readout + bias)
    spikes = poisson_counts(rng, rates)
    truth = dict(latents=bits, rates=rates, inputs=inputs, params=dict(readout=readout, bias=bias))
    return Dataset(Trials(spikes, dt), as_float32(truth))
