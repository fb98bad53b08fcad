"""Poisson spikes driven by the Lorenz attractor (the LFADS paper's synthetic benchmark).

    dx/ds = sigma (y - x),   dy/ds = x (rho - z) - y,   dz/ds = x y - beta z

with sigma = 10, rho = 28, beta = 8/3, in dimensionless Lorenz time `s`. One bin of `dt`
seconds spans `ode_time_per_bin` Lorenz time units (RK4, `substeps` steps per bin). Each
trajectory starts from a random point, runs a burn-in so it lies on the attractor, then is
sampled once per bin. The 3-D state is standardised per dimension (over all trials and bins)
to the latents `z`, and

    log rates = z @ readout + bias,     spikes ~ Poisson(rates)

with rates in expected counts per bin and each neuron's baseline drawn from `baseline_hz`.
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
    condition_index,
    log_linear_readout,
    make_rng,
    poisson_counts,
)
from latentjax.datasets._integrate import integrate_bins

__all__ = ["lorenz", "lorenz_vector_field"]

SIGMA, RHO, BETA = 10.0, 28.0, 8.0 / 3.0


def lorenz_vector_field(state: np.ndarray, sigma=SIGMA, rho=RHO, beta=BETA) -> np.ndarray:
    """`d state / ds` of the Lorenz system for `state` `[..., 3]` (in Lorenz time units)."""
    x, y, z = state[..., 0], state[..., 1], state[..., 2]
    return np.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z], axis=-1)


def lorenz(
    *,
    seed: int = 0,
    num_trials: int = 160,
    num_bins: int = 100,
    num_neurons: int = 30,
    dt: float = 0.01,
    ode_time_per_bin: float = 0.025,
    substeps: int = 5,
    burn_in: float = 10.0,
    num_conditions: int | None = None,
    baseline_hz=(5.0, 20.0),
) -> Dataset:
    """Lorenz-attractor latents read out to Poisson spikes (LFADS benchmark).

    Args:
      seed: seed of every random draw.
      num_trials: number of trials (`spikes` is `[trials, time, neurons]`).
      num_bins: bins per trial.
      num_neurons: observed neurons.
      dt: seconds per bin (sets the counts per bin of a rate in Hz).
      ode_time_per_bin: Lorenz time units per bin (0.025 x 100 bins: about three loops).
      substeps: RK4 steps per bin.
      burn_in: Lorenz time units integrated from a random start before bin 0.
      num_conditions: if given, trials cycle through this many distinct trajectories (repeats
        differ only in their spikes) and `trials.conditions` labels them; by default every
        trial has its own trajectory.
      baseline_hz: range of the neurons' baseline rates, spikes/s.

    Returns:
      `Dataset` with truth `latents` `[trials, time, 3]` (standardised state), `rates`
      `[trials, time, neurons]` (counts per bin) and `params`: `sigma`, `rho`, `beta`,
      `ode_time_per_bin`, `substeps`, `mean` and `scale` `[3]` (state = latents * scale +
      mean), `initial_states` `[trials, 3]` (state at bin 0), `readout` `[3, neurons]`, `bias`
      `[neurons]`.

    Examples:
      >>> data = lorenz(seed=0, num_trials=8)
      >>> data.trials.spikes.shape, data.truth["latents"].shape
      ((8, 100, 30), (8, 100, 3))
    """
    name = "lorenz"
    rng = make_rng(name, seed)
    num_trials = check_int(name, "num_trials", num_trials)
    num_bins = check_int(name, "num_bins", num_bins, minimum=2)
    num_neurons = check_int(name, "num_neurons", num_neurons)
    dt = check_positive(name, "dt", dt)
    ode_time_per_bin = check_positive(name, "ode_time_per_bin", ode_time_per_bin)
    substeps = check_int(name, "substeps", substeps)
    burn_in = check_positive(name, "burn_in", burn_in)
    baseline_hz = check_range(name, "baseline_hz", baseline_hz)
    conditions = condition_index(name, num_trials, num_conditions)

    num_trajectories = num_trials if conditions is None else int(num_conditions)
    step = ode_time_per_bin / substeps
    starts = rng.uniform([-15.0, -15.0, 5.0], [15.0, 15.0, 40.0], size=(num_trajectories, 3))

    def vector_field(state, _drive):
        return lorenz_vector_field(state)

    burn_in_bins = int(np.ceil(burn_in / ode_time_per_bin))
    settled = integrate_bins(vector_field, starts, burn_in_bins + 1, substeps, step)[:, -1]
    states = integrate_bins(vector_field, settled, num_bins, substeps, step)
    if conditions is not None:
        states = states[conditions]

    mean = states.reshape(-1, 3).mean(axis=0)
    scale = states.reshape(-1, 3).std(axis=0)
    latents = (states - mean) / scale
    readout, bias = log_linear_readout(rng, 3, num_neurons, dt, baseline_hz)
    rates = np.exp(latents @ readout + bias)
    spikes = poisson_counts(rng, rates)

    trials = Trials(spikes, dt, conditions=conditions)
    params = dict(
        sigma=SIGMA,
        rho=RHO,
        beta=BETA,
        ode_time_per_bin=ode_time_per_bin,
        substeps=substeps,
        mean=mean,
        scale=scale,
        initial_states=states[:, 0],
        readout=readout,
        bias=bias,
    )
    truth = dict(latents=latents, rates=rates, params=params)
    return Dataset(trials, as_float32(truth))
