"""Populations tuned to angles: a ring (head-direction-like) and a torus (grid-cell-like).

Each angle wanders smoothly: its angular velocity `omega` (rad/s) is an Ornstein-Uhlenbeck
process with time constant `velocity_time_constant` and stationary standard deviation
`angular_speed`, sampled exactly per bin, and

    theta[t+1] = theta[t] + omega[t] dt  (mod 2 pi),    theta[0] ~ Uniform(0, 2 pi).

Neurons have von Mises tuning (spikes/s) with concentration `kappa`:

    ring:   rate_i = baseline_hz + peak_hz exp(kappa (cos(theta - phi_i) - 1))
    torus:  rate_i = baseline_hz
                     + peak_hz exp(kappa (cos(a - phi_i) - 1) + kappa (cos(b - psi_i) - 1))

rates = rate * dt expected counts per bin; spikes ~ Poisson(rates). Ring preferred angles
`phi` are evenly spread (random offset, small jitter); torus preferred pairs are uniform on
the torus. The latents `(cos, sin)` of each angle are also the trials' `behavior` (the
tracked head direction or position).
"""

from __future__ import annotations

import numpy as np

from latentjax.data import Trials
from latentjax.datasets._dataset import (
    Dataset,
    as_float32,
    check_int,
    check_positive,
    make_rng,
    poisson_counts,
)

__all__ = ["ring", "torus"]


def random_walk_angles(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    dt: float,
    angular_speed: float,
    velocity_time_constant: float,
) -> np.ndarray:
    """Angles `[trials, time, *rest]` in [0, 2 pi) driven by an Ornstein-Uhlenbeck velocity."""
    decay = np.exp(-dt / velocity_time_constant)
    kicks = rng.standard_normal(shape) * angular_speed * np.sqrt(1.0 - decay**2)
    velocity = np.empty(shape)
    velocity[:, 0] = rng.standard_normal(velocity[:, 0].shape) * angular_speed
    for t in range(1, shape[1]):
        velocity[:, t] = decay * velocity[:, t - 1] + kicks[:, t]
    start = rng.uniform(0.0, 2 * np.pi, size=velocity[:, :1].shape)
    steps = np.concatenate([start, velocity[:, :-1] * dt], axis=1)
    return np.mod(np.cumsum(steps, axis=1), 2 * np.pi)


def _check_tuning(name, num_trials, num_bins, num_neurons, dt, kwargs):
    sizes = (
        check_int(name, "num_trials", num_trials),
        check_int(name, "num_bins", num_bins, minimum=2),
        check_int(name, "num_neurons", num_neurons),
        check_positive(name, "dt", dt),
    )
    for key, value in kwargs.items():
        check_positive(name, key, value)
    return sizes


def _angle_dataset(rng, angles, log_tuning, dt, params, angle_name) -> Dataset:
    """Spikes at `rates = (baseline + peak exp(log_tuning)) dt`; latents (cos, sin) per angle."""
    rates = (params["baseline_hz"] + params["peak_hz"] * np.exp(log_tuning)) * dt
    spikes = poisson_counts(rng, rates)
    per_angle = angles.reshape(*angles.shape[:2], -1)
    latents = np.stack([np.cos(per_angle), np.sin(per_angle)], axis=-1)
    latents = latents.reshape(*angles.shape[:2], -1)
    trials = Trials(spikes, dt, behavior=latents.astype(np.float32))
    truth = {angle_name: angles, "latents": latents, "rates": rates, "params": params}
    return Dataset(trials, as_float32(truth))


def ring(
    *,
    seed: int = 0,
    num_trials: int = 100,
    num_bins: int = 100,
    num_neurons: int = 40,
    dt: float = 0.01,
    kappa: float = 3.0,
    peak_hz: float = 30.0,
    baseline_hz: float = 1.0,
    angular_speed: float = 2.0,
    velocity_time_constant: float = 0.5,
) -> Dataset:
    """Head-direction-like ring: an angle doing a smooth random walk, von Mises tuned neurons.

    Args:
      seed: seed of every random draw.
      num_trials: number of trials.
      num_bins: bins per trial.
      num_neurons: observed neurons.
      dt: seconds per bin.
      kappa: tuning concentration; `peak_hz`, `baseline_hz`: tuning rates (spikes/s).
      angular_speed: stationary std of the angular velocity (rad/s).
      velocity_time_constant: seconds over which the angular velocity decorrelates.

    Returns:
      `Dataset` with truth `angle` `[trials, time]` (rad), `latents` `[trials, time, 2]` =
      (cos, sin) of the angle, `rates` (counts per bin) and `params` (`preferred` `[neurons]`
      rad and the tuning and velocity settings).

    Examples:
      >>> data = ring(seed=0, num_trials=4)
      >>> data.truth["angle"].shape, data.trials.behavior.shape
      ((4, 100), (4, 100, 2))
    """
    tuning = dict(kappa=kappa, peak_hz=peak_hz, baseline_hz=baseline_hz)
    walk = dict(angular_speed=angular_speed, velocity_time_constant=velocity_time_constant)
    rng = make_rng("ring", seed)
    num_trials, num_bins, num_neurons, dt = _check_tuning(
        "ring", num_trials, num_bins, num_neurons, dt, {**tuning, **walk}
    )
    spacing = 2 * np.pi / num_neurons
    preferred = rng.uniform(0, 2 * np.pi) + spacing * (
        np.arange(num_neurons) + rng.uniform(-0.25, 0.25, num_neurons)
    )
    preferred = np.mod(preferred, 2 * np.pi)
    angle = random_walk_angles(rng, (num_trials, num_bins), dt, **walk)
    log_tuning = kappa * (np.cos(angle[..., None] - preferred) - 1.0)
    params = dict(preferred=preferred, **tuning, **walk)
    return _angle_dataset(rng, angle, log_tuning, dt, params, "angle")


def torus(
    *,
    seed: int = 0,
    num_trials: int = 100,
    num_bins: int = 100,
    num_neurons: int = 100,
    dt: float = 0.01,
    kappa: float = 3.0,
    peak_hz: float = 40.0,
    baseline_hz: float = 1.0,
    angular_speed: float = 2.0,
    velocity_time_constant: float = 0.5,
) -> Dataset:
    """Grid-cell-like torus: two wandering angles, neurons tuned to a bump on the torus.

    Args:
      seed: seed of every random draw.
      num_trials: number of trials.
      num_bins: bins per trial.
      num_neurons: observed neurons.
      dt: seconds per bin.
      kappa: tuning concentration along each angle; `peak_hz`, `baseline_hz`: rates
        (spikes/s).
      angular_speed: stationary std of each angular velocity (rad/s).
      velocity_time_constant: seconds over which the angular velocities decorrelate.

    Returns:
      `Dataset` with truth `angles` `[trials, time, 2]` (rad), `latents` `[trials, time, 4]` =
      (cos a, sin a, cos b, sin b), `rates` (counts per bin) and `params` (`preferred`
      `[neurons, 2]` rad and the tuning and velocity settings).

    Examples:
      >>> data = torus(seed=0, num_trials=4)
      >>> data.truth["angles"].shape, data.truth["latents"].shape
      ((4, 100, 2), (4, 100, 4))
    """
    tuning = dict(kappa=kappa, peak_hz=peak_hz, baseline_hz=baseline_hz)
    walk = dict(angular_speed=angular_speed, velocity_time_constant=velocity_time_constant)
    rng = make_rng("torus", seed)
    num_trials, num_bins, num_neurons, dt = _check_tuning(
        "torus", num_trials, num_bins, num_neurons, dt, {**tuning, **walk}
    )
    preferred = rng.uniform(0, 2 * np.pi, size=(num_neurons, 2))
    angles = random_walk_angles(rng, (num_trials, num_bins, 2), dt, **walk)
    log_tuning = kappa * (np.cos(angles[..., None, :] - preferred) - 1.0).sum(axis=-1)
    params = dict(preferred=preferred, **tuning, **walk)
    return _angle_dataset(rng, angles, log_tuning, dt, params, "angles")
