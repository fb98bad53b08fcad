"""Poisson spikes from a chaotic random network (the LFADS paper's "chaotic RNN" data).

    tau dx/dt = -x + gain J tanh(x) + input_weights u(t),     J_ij ~ N(0, 1/units)

with `gain` 1.5 (chaotic for gain > 1), `tau` in seconds, integrated by RK4 (`substeps` steps
per bin of `dt` seconds). Every unit is one recorded neuron, firing at

    rates = max_rate_hz * dt * (1 + tanh(x)) / 2     (expected counts per bin),
    spikes ~ Poisson(rates).

With `input_pulses=True` each trial receives one pulse, `u = pulse_amplitude` during one bin
at a random time in the middle half of the trial (`u = 0` elsewhere), as in the LFADS
inferred-input experiments.
"""

from __future__ import annotations

import numpy as np

from latentjax.data import Trials
from latentjax.datasets._dataset import (
    Dataset,
    as_float32,
    check_int,
    check_positive,
    condition_index,
    make_rng,
    poisson_counts,
)
from latentjax.datasets._integrate import integrate_bins

__all__ = ["chaotic_rnn"]


def chaotic_rnn(
    *,
    seed: int = 0,
    num_trials: int = 160,
    num_bins: int = 100,
    num_units: int = 50,
    dt: float = 0.01,
    tau: float = 0.025,
    gain: float = 1.5,
    substeps: int = 5,
    max_rate_hz: float = 30.0,
    input_pulses: bool = False,
    pulse_amplitude: float = 5.0,
    num_conditions: int | None = None,
) -> Dataset:
    """A chaotic tanh network whose units fire Poisson spikes, optionally kicked by pulses.

    Args:
      seed: seed of every random draw.
      num_trials: number of trials.
      num_bins: bins per trial.
      num_units: both the network size and the number of neurons.
      dt: seconds per bin; `tau`: the units' time constant in seconds.
      gain: scale of the recurrent weights (chaotic above 1).
      substeps: RK4 steps per bin.
      max_rate_hz: firing rate (spikes/s) of a unit at tanh(x) = 1.
      input_pulses: give each trial one input pulse at a random bin.
      pulse_amplitude: value of `u` during a pulse.
      num_conditions: if given, trials cycle through this many initial states (and
        `trials.conditions` labels them); by default each trial has its own.

    Returns:
      `Dataset` with truth `latents` `[trials, time, units]` (the unit states `x`), `rates`
      `[trials, time, units]` (counts per bin), `inputs` `[trials, time, 1]` (`u`, zeros
      without pulses) and `params`: `J` `[units, units]`, `gain`, `tau`, `input_weights`
      `[units, 1]`, `substeps`, `initial_states` `[trials, units]`.

    Examples:
      >>> data = chaotic_rnn(seed=0, num_trials=4, input_pulses=True)
      >>> data.truth["inputs"].shape
      (4, 100, 1)
    """
    name = "chaotic_rnn"
    rng = make_rng(name, seed)
    num_trials = check_int(name, "num_trials", num_trials)
    num_bins = check_int(name, "num_bins", num_bins, minimum=4)
    num_units = check_int(name, "num_units", num_units, minimum=2)
    dt = check_positive(name, "dt", dt)
    tau = check_positive(name, "tau", tau)
    gain = check_positive(name, "gain", gain)
    substeps = check_int(name, "substeps", substeps)
    max_rate_hz = check_positive(name, "max_rate_hz", max_rate_hz)
    pulse_amplitude = check_positive(name, "pulse_amplitude", pulse_amplitude)
    conditions = condition_index(name, num_trials, num_conditions)

    recurrent = rng.standard_normal((num_units, num_units)) / np.sqrt(num_units)
    input_weights = rng.standard_normal((num_units, 1))
    num_starts = num_trials if conditions is None else int(num_conditions)
    initial_states = rng.standard_normal((num_starts, num_units))
    if conditions is not None:
        initial_states = initial_states[conditions]

    inputs = np.zeros((num_trials, num_bins, 1))
    if input_pulses:
        pulse_bins = rng.integers(num_bins // 4, 3 * num_bins // 4, size=num_trials)
        inputs[np.arange(num_trials), pulse_bins, 0] = pulse_amplitude

    def vector_field(x, u):
        return (-x + gain * np.tanh(x) @ recurrent.T + u @ input_weights.T) / tau

    states = integrate_bins(vector_field, initial_states, num_bins, substeps, dt / substeps, inputs)
    rates = max_rate_hz * dt * (1.0 + np.tanh(states)) / 2.0
    spikes = poisson_counts(rng, rates)

    trials = Trials(spikes, dt, conditions=conditions)
    params = dict(
        J=recurrent,
        gain=gain,
        tau=tau,
        input_weights=input_weights,
        substeps=substeps,
        initial_states=initial_states,
    )
    truth = dict(latents=states, rates=rates, inputs=inputs, params=params)
    return Dataset(trials, as_float32(truth))
