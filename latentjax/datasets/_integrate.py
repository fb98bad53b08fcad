"""Fixed-step RK4 integration of an ODE for a batch of trials, sampled once per bin."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def rk4_step(vector_field: Callable, state: np.ndarray, drive, step: float) -> np.ndarray:
    """One classical Runge-Kutta step of `dx/dt = vector_field(x, drive)` for `[trials, dims]`."""
    k1 = vector_field(state, drive)
    k2 = vector_field(state + 0.5 * step * k1, drive)
    k3 = vector_field(state + 0.5 * step * k2, drive)
    k4 = vector_field(state + step * k3, drive)
    return state + step / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def integrate_bins(
    vector_field: Callable,
    initial_states: np.ndarray,
    num_bins: int,
    substeps: int,
    step: float,
    drive: np.ndarray | None = None,
) -> np.ndarray:
    """States `[trials, bins, dims]` at the start of each bin.

    Each bin spans `substeps` RK4 steps of size `step`; `drive` `[trials, bins, inputs]` (or
    None) is held constant within a bin and passed as `vector_field(state, drive_bin)`. Bin 0
    holds `initial_states` `[trials, dims]`.
    """
    states = np.empty((initial_states.shape[0], num_bins, initial_states.shape[1]))
    state = np.asarray(initial_states, dtype=np.float64)
    for t in range(num_bins):
        states[:, t] = state
        drive_bin = None if drive is None else drive[:, t]
        for _ in range(substeps):
            state = rk4_step(vector_field, state, drive_bin, step)
    return states
