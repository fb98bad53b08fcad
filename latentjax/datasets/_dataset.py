"""`Dataset`, the result of every generator, and the host-side helpers they share.

Generators run once, on the host, in NumPy (vectorised over trials), from one
`numpy.random.Generator` seeded by the caller's `seed`, so a seed fixes every draw.
Sizes are validated here and raise `ValueError` naming the generator and the argument.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from latentjax.data import Trials

__all__ = ["Dataset"]


class Dataset(NamedTuple):
    """Synthetic trials and the ground truth that generated them.

    Attributes:
      trials: the observed `Trials` (`spikes` `[trials, time, neurons]`).
      truth: dict of arrays; always `latents` `[trials, time, latents]` and `rates`
        `[trials, time, neurons]` (expected counts per bin for spiking data, the observation
        mean for continuous data), plus what the system has (`params`, `coupling`, ...).
    """

    trials: Trials
    truth: dict[str, Any]


def check_int(generator: str, name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int, or a `ValueError` naming `generator` and `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(
            f"lj.datasets.{generator}: `{name}` must be an integer >= {minimum}, got {value!r}"
        )
    return int(value)


def check_positive(generator: str, name: str, value: Any) -> float:
    """`value` as a finite float > 0, or a `ValueError` naming `generator` and `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < np.inf:
        raise ValueError(
            f"lj.datasets.{generator}: `{name}` must be a positive number, got {value!r}"
        )
    return float(value)


def check_range(generator: str, name: str, value: Any) -> tuple[float, float]:
    """A `(low, high)` pair with `0 < low <= high`, or a `ValueError`."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low, high = np.nan, np.nan
    if not 0 < low <= high < np.inf:
        raise ValueError(
            f"lj.datasets.{generator}: `{name}` must be a pair (low, high) with "
            f"0 < low <= high, got {value!r}"
        )
    return low, high


def make_rng(generator: str, seed: Any) -> np.random.Generator:
    """The one random generator of a dataset."""
    return np.random.default_rng(check_int(generator, "seed", seed, minimum=0))


def condition_index(
    generator: str, num_trials: int, num_conditions: int | None
) -> np.ndarray | None:
    """`[trials]` condition of each trial (round robin), or None for one condition per trial."""
    if num_conditions is None:
        return None
    num_conditions = check_int(generator, "num_conditions", num_conditions)
    if num_conditions > num_trials:
        raise ValueError(
            f"lj.datasets.{generator}: `num_conditions` ({num_conditions}) exceeds "
            f"`num_trials` ({num_trials})"
        )
    return np.arange(num_trials) % num_conditions


def log_linear_readout(
    rng: np.random.Generator, num_latents: int, num_neurons: int, dt: float, baseline_hz
) -> tuple[np.ndarray, np.ndarray]:
    """A random `readout` `[latents, neurons]` and `bias` `[neurons]` for unit-variance latents.

    `log rates = latents @ readout + bias`: the bias puts each neuron's baseline at a rate drawn
    uniformly from `baseline_hz` (spikes/s), i.e. `baseline_hz * dt` counts per bin; each
    neuron's readout is a random direction of length uniform in [0.5, 1], so for uncorrelated
    unit-variance latents its log rate has a standard deviation between 0.5 and 1.
    """
    directions = rng.standard_normal((num_latents, num_neurons))
    lengths = rng.uniform(0.5, 1.0, size=num_neurons)
    readout = directions / np.linalg.norm(directions, axis=0) * lengths
    bias = np.log(rng.uniform(*baseline_hz, size=num_neurons) * dt)
    return readout, bias


def poisson_counts(rng: np.random.Generator, rates: np.ndarray) -> np.ndarray:
    """Poisson counts (as float32 whole numbers) with mean `rates` (expected counts per bin)."""
    return rng.poisson(rates).astype(np.float32)


def as_float32(tree: Any) -> Any:
    """Float arrays of a (nested dict/tuple) truth as float32; ints and scalars kept."""
    if isinstance(tree, dict):
        return {k: as_float32(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(as_float32(v) for v in tree)
    if isinstance(tree, np.ndarray) and tree.dtype.kind == "f":
        return tree.astype(np.float32)
    return tree
