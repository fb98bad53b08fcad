"""Linear dynamical systems with Gaussian (`lds`) or Poisson (`plds`) observations.

Latents follow a stable linear-Gaussian system with rotational dynamics,

    x_1 ~ N(m0, S0),     x_{t+1} = A x_t + w_t,   w_t ~ N(0, Q),

where `A = U diag(rho R(theta_1), rho R(theta_2), ...) U^T` (2x2 rotations by random angles,
spectral radius `rho`, random orthogonal `U`), `Q = (1 - rho^2) I`, `m0 = 0` and `S0 = I`, so
the latents are stationary with unit covariance. Observations:

    lds:   y_t = C x_t + d + v_t,  v_t ~ N(0, R)     (continuous; rates = C x_t + d, the mean)
    plds:  y_t ~ Poisson(exp(C x_t + d))             (rates in expected counts per bin)

Parameter layouts follow state-space convention: `A` `[latents, latents]`, `C`
`[neurons, latents]`, `d` `[neurons]`, `R` `[neurons, neurons]`.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import ortho_group

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

__all__ = ["lds", "plds", "rotational_dynamics", "sample_linear_gaussian"]


def rotational_dynamics(
    rng: np.random.Generator, num_latents: int, spectral_radius: float
) -> np.ndarray:
    """A random `[latents, latents]` matrix: rotations scaled by `spectral_radius`, all of
    whose eigenvalues have modulus `spectral_radius` (one real one when `num_latents` is odd)."""
    blocks = np.zeros((num_latents, num_latents))
    for i in range(0, num_latents - 1, 2):
        angle = rng.uniform(0.05, 0.5)
        blocks[i : i + 2, i : i + 2] = [
            [np.cos(angle), -np.sin(angle)],
            [np.sin(angle), np.cos(angle)],
        ]
    if num_latents % 2:
        blocks[-1, -1] = 1.0
    basis = ortho_group.rvs(num_latents, random_state=rng) if num_latents > 1 else np.eye(1)
    return spectral_radius * basis @ blocks @ basis.T


def sample_linear_gaussian(
    rng: np.random.Generator, params: dict, num_trials: int, num_bins: int
) -> np.ndarray:
    """Latents `[trials, time, latents]` of `x_{t+1} = A x_t + N(0, Q)`, `x_1 ~ N(m0, S0)`."""
    num_latents = params["A"].shape[0]
    noise_factor = np.linalg.cholesky(params["Q"])
    latents = np.empty((num_trials, num_bins, num_latents))
    latents[:, 0] = rng.multivariate_normal(params["m0"], params["S0"], size=num_trials)
    noise = rng.standard_normal((num_trials, num_bins, num_latents)) @ noise_factor.T
    for t in range(1, num_bins):
        latents[:, t] = latents[:, t - 1] @ params["A"].T + noise[:, t]
    return latents


def _latent_params(name: str, rng, num_latents: int, spectral_radius: float) -> dict:
    if not 0 < spectral_radius < 1:
        raise ValueError(
            f"lj.datasets.{name}: `spectral_radius` must lie in (0, 1) for stable dynamics, "
            f"got {spectral_radius!r}"
        )
    return dict(
        A=rotational_dynamics(rng, num_latents, spectral_radius),
        Q=(1.0 - spectral_radius**2) * np.eye(num_latents),
        m0=np.zeros(num_latents),
        S0=np.eye(num_latents),
    )


def lds(
    *,
    seed: int = 0,
    num_trials: int = 100,
    num_bins: int = 100,
    num_latents: int = 4,
    num_neurons: int = 30,
    dt: float = 0.01,
    spectral_radius: float = 0.95,
    observation_noise: float = 0.5,
) -> Dataset:
    """A stable rotational linear-Gaussian system with Gaussian observations.

    Args:
      seed: seed of every random draw.
      num_trials: number of trials.
      num_bins: bins per trial.
      num_latents: latent dimensions.
      num_neurons: observed neurons.
      dt: seconds per bin.
      spectral_radius: modulus of every eigenvalue of `A`, in (0, 1).
      observation_noise: typical standard deviation of the observation noise; `R` is diagonal
        with variances uniform in `[0.5, 1.5] * observation_noise**2`.

    Returns:
      `Dataset` whose trials are continuous (`continuous=True`), with truth `latents`
      `[trials, time, latents]`, `rates` `[trials, time, neurons]` = `C x + d` (the
      observation mean) and `params` `A, Q, C, d, R, m0, S0` (layouts in the module doc).

    Examples:
      >>> data = lds(seed=0, num_trials=5)
      >>> data.trials.continuous, data.truth["params"]["C"].shape
      (True, (30, 4))
    """
    name = "lds"
    rng = make_rng(name, seed)
    num_trials = check_int(name, "num_trials", num_trials)
    num_bins = check_int(name, "num_bins", num_bins, minimum=2)
    num_latents = check_int(name, "num_latents", num_latents)
    num_neurons = check_int(name, "num_neurons", num_neurons)
    dt = check_positive(name, "dt", dt)
    spectral_radius = check_positive(name, "spectral_radius", spectral_radius)
    observation_noise = check_positive(name, "observation_noise", observation_noise)

    params = _latent_params(name, rng, num_latents, spectral_radius)
    params["C"] = rng.standard_normal((num_neurons, num_latents)) / np.sqrt(num_latents)
    params["d"] = rng.standard_normal(num_neurons)
    params["R"] = np.diag(rng.uniform(0.5, 1.5, num_neurons) * observation_noise**2)
    latents = sample_linear_gaussian(rng, params, num_trials, num_bins)
    rates = latents @ params["C"].T + params["d"]
    noise = rng.standard_normal(rates.shape) * np.sqrt(np.diag(params["R"]))
    observations = (rates + noise).astype(np.float32)

    trials = Trials(observations, dt, continuous=True)
    truth = dict(latents=latents, rates=rates, params=params)
    return Dataset(trials, as_float32(truth))


def plds(
    *,
    seed: int = 0,
    num_trials: int = 100,
    num_bins: int = 100,
    num_latents: int = 4,
    num_neurons: int = 50,
    dt: float = 0.01,
    spectral_radius: float = 0.95,
    baseline_hz=(5.0, 20.0),
) -> Dataset:
    """A stable rotational linear-Gaussian system observed through Poisson spikes (exp link).

    Args:
      seed: seed of every random draw.
      num_trials: number of trials.
      num_bins: bins per trial.
      num_latents: latent dimensions.
      num_neurons: observed neurons.
      dt: seconds per bin.
      spectral_radius: modulus of every eigenvalue of `A`, in (0, 1).
      baseline_hz: range of the neurons' baseline rates (spikes/s): `d = log(baseline * dt)`.

    Returns:
      `Dataset` with truth `latents`, `rates` = `exp(C x + d)` (expected counts per bin) and
      `params` `A, Q, C, d, m0, S0`; each row of `C` has length in [0.5, 1], so a log rate
      has a standard deviation between 0.5 and 1.

    Examples:
      >>> data = plds(seed=0, num_trials=5)
      >>> data.trials.spikes.shape
      (5, 100, 50)
    """
    name = "plds"
    rng = make_rng(name, seed)
    num_trials = check_int(name, "num_trials", num_trials)
    num_bins = check_int(name, "num_bins", num_bins, minimum=2)
    num_latents = check_int(name, "num_latents", num_latents)
    num_neurons = check_int(name, "num_neurons", num_neurons)
    dt = check_positive(name, "dt", dt)
    spectral_radius = check_positive(name, "spectral_radius", spectral_radius)
    baseline_hz = check_range(name, "baseline_hz", baseline_hz)

    params = _latent_params(name, rng, num_latents, spectral_radius)
    readout, params["d"] = log_linear_readout(rng, num_latents, num_neurons, dt, baseline_hz)
    params["C"] = readout.T
    latents = sample_linear_gaussian(rng, params, num_trials, num_bins)
    rates = np.exp(latents @ params["C"].T + params["d"])
    spikes = poisson_counts(rng, rates)

    trials = Trials(spikes, dt)
    truth = dict(latents=latents, rates=rates, params=params)
    return Dataset(trials, as_float32(truth))
