"""The "NASCAR" switching linear system (Linderman et al. 2017): a 2-D latent traces an oval
track under four discrete states, each with its own affine dynamics.

Track: two straight lines y = +1 and y = -1 for |x| <= 2, joined by half circles of radius 1
around (2, 0) and (-2, 0). The state of bin t is set by the latent of bin t-1 (a recurrent
switching system with hard boundaries):

    x > 2: state 0 (right turn)   x < -2: state 1 (left turn)
    else y > 0: state 2 (top, moving left)   else: state 3 (bottom, moving right)

Dynamics z_t = A_k z_{t-1} + b_k + N(0, q I): the turns rotate by `speed` radians a bin about
their centre c (A = R, b = (I - R) c); the straights move by `speed` a bin and pull y back
to +-1 (A = diag(1, 0.9)). Observations:

    gaussian:  y_t = C z_t + d + N(0, diag(r))    (continuous; rates = C z_t + d)
    poisson:   y_t ~ Poisson(exp(C z_t / s + d))  (s the latents' standard deviation)
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

__all__ = ["nascar", "nascar_params"]

_OBSERVATIONS = ("gaussian", "poisson")


def _rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def nascar_params(speed: float = 0.15) -> dict:
    """The four states' dynamics: `A` `[4, 2, 2]`, `b` `[4, 2]` (layout of the module doc)."""
    rotation = _rotation(speed)
    straight = np.diag([1.0, 0.9])
    centres = (np.array([2.0, 0.0]), np.array([-2.0, 0.0]))
    dynamics = np.stack([rotation, rotation, straight, straight])
    biases = np.stack(
        [
            (np.eye(2) - rotation) @ centres[0],
            (np.eye(2) - rotation) @ centres[1],
            np.array([-speed, 0.1]),
            np.array([speed, -0.1]),
        ]
    )
    return dict(A=dynamics, b=biases)


def _state_of(latents: np.ndarray) -> np.ndarray:
    x, y = latents[..., 0], latents[..., 1]
    return np.where(x > 2, 0, np.where(x < -2, 1, np.where(y > 0, 2, 3)))


def nascar(
    *,
    seed: int = 0,
    num_trials: int = 50,
    num_bins: int = 100,
    num_neurons: int | None = None,
    observations: str = "poisson",
    dt: float = 0.05,
    speed: float = 0.15,
    dynamics_noise: float = 0.02,
    observation_noise: float = 0.2,
    baseline_hz=(10.0, 40.0),
) -> Dataset:
    """A 2-D latent on an oval track with four switching affine dynamics (NASCAR).

    Args:
      seed: seed of every random draw.
      num_trials: number of trials (each starts at a random point of the track).
      num_bins: bins per trial.
      num_neurons: observed neurons; default 30 for Poisson, 10 for Gaussian observations.
      observations: "poisson" (spike counts, exp link) or "gaussian" (continuous signals).
      dt: seconds per bin.
      speed: distance along the track per bin (a lap is about 14.3 / speed bins).
      dynamics_noise: standard deviation q of the latent noise per bin.
      observation_noise: standard deviation of the Gaussian observation noise.
      baseline_hz: range of the Poisson neurons' baseline rates (spikes/s).

    Returns:
      `Dataset` with truth `latents` `[trials, time, 2]`, `states` `[trials, time]` (int),
      `rates` `[trials, time, neurons]` (expected counts per bin, or the Gaussian mean) and
      `params` `A` `[4, 2, 2]`, `b` `[4, 2]`, `C` `[neurons, 2]`, `d` `[neurons]`.

    Examples:
      >>> data = nascar(seed=0, num_trials=4)
      >>> data.trials.spikes.shape, data.truth["states"].shape
      ((4, 100, 30), (4, 100))
      >>> nascar(seed=0, num_trials=4, observations="gaussian").trials.num_neurons
      10
    """
    name = "nascar"
    rng = make_rng(name, seed)
    num_trials = check_int(name, "num_trials", num_trials)
    num_bins = check_int(name, "num_bins", num_bins, minimum=2)
    if observations not in _OBSERVATIONS:
        raise ValueError(
            f"lj.datasets.nascar: `observations` must be one of {_OBSERVATIONS}, "
            f"got {observations!r}"
        )
    if num_neurons is None:
        num_neurons = 30 if observations == "poisson" else 10
    num_neurons = check_int(name, "num_neurons", num_neurons)
    dt = check_positive(name, "dt", dt)
    speed = check_positive(name, "speed", speed)
    if speed > 1:
        raise ValueError(f"lj.datasets.nascar: `speed` must be at most 1, got {speed!r}")
    dynamics_noise = check_positive(name, "dynamics_noise", dynamics_noise)
    observation_noise = check_positive(name, "observation_noise", observation_noise)
    baseline_hz = check_range(name, "baseline_hz", baseline_hz)

    params = nascar_params(speed)
    lap = int(np.ceil((8 + 2 * np.pi) / speed))
    burn_in = rng.integers(0, lap, size=num_trials)
    steps = lap + num_bins
    path = np.empty((num_trials, steps, 2))
    path[:, 0] = np.array([0.0, 1.0]) + dynamics_noise * rng.standard_normal((num_trials, 2))
    noise = dynamics_noise * rng.standard_normal((num_trials, steps, 2))
    for t in range(1, steps):
        state = _state_of(path[:, t - 1])
        drift = np.einsum("bij,bj->bi", params["A"][state], path[:, t - 1]) + params["b"][state]
        path[:, t] = drift + noise[:, t]
    window = burn_in[:, None] + np.arange(num_bins)[None]
    latents = np.take_along_axis(path, window[..., None], axis=1)
    previous = np.take_along_axis(path, np.maximum(window - 1, 0)[..., None], axis=1)
    states = _state_of(previous)
    states[burn_in == 0, 0] = _state_of(latents[burn_in == 0, 0])

    if observations == "gaussian":
        params["C"] = rng.standard_normal((num_neurons, 2)) / np.sqrt(2)
        params["d"] = rng.standard_normal(num_neurons)
        rates = latents @ params["C"].T + params["d"]
        signals = rates + observation_noise * rng.standard_normal(rates.shape)
        trials = Trials(signals.astype(np.float32), dt, continuous=True)
    else:
        readout, params["d"] = log_linear_readout(rng, 2, num_neurons, dt, baseline_hz)
        scale = latents.reshape(-1, 2).std(0)
        params["C"] = readout.T / scale
        rates = np.exp(latents @ params["C"].T + params["d"])
        trials = Trials(poisson_counts(rng, rates), dt)
    truth = dict(latents=latents, states=states, rates=rates, params=params)
    return Dataset(trials, as_float32(truth))
