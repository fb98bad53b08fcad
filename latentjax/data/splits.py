"""Splitting `Trials` by trials, neurons and time (Neural Latents Benchmark style).

- `split`: disjoint random subsets of trials (train / validation / test).
- `heldout_neurons`: held-in and held-out neurons (NLB co-smoothing).
- `forward_split`: the last bins of each trial held out (NLB forward prediction).

Every split keeps the original order of trials and neurons within each part.

Examples:
  >>> import numpy as np, latentjax as lj
  >>> trials = lj.Trials(np.zeros((10, 20, 6), dtype=int), dt=0.01)
  >>> train, test = lj.data.split(trials, (0.8, 0.2), seed=0)
  >>> heldin, heldout = lj.data.heldout_neurons(train, 2, seed=0)
  >>> observed, forward = lj.data.forward_split(heldin, 5)
  >>> len(train), len(test), heldout.num_neurons, forward.num_bins
  (8, 2, 2, 5)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from latentjax.data.trials import Trials

__all__ = ["forward_split", "heldout_neurons", "split"]


def split(trials: Trials, fractions: Sequence[float] = (0.8, 0.2), *, seed: int = 0):
    """Split trials at random into disjoint parts that together hold every trial.

    Part sizes are `fractions * num_trials` rounded so that they sum to `num_trials` (largest
    remainders first); every part must get at least one trial.

    Args:
      trials: `Trials` `[trials, time, neurons]`.
      fractions: positive fractions summing to 1, one per part.
      seed: seed of the random assignment (same seed, same parts).

    Returns:
      A tuple of `Trials`, one per fraction, trials in their original order.
    """
    _check_trials("split", trials)
    fractions = np.asarray(fractions, dtype=np.float64).reshape(-1)
    if fractions.size < 1 or not np.all(fractions > 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(
            f"split: `fractions` must be positive and sum to 1, got {fractions.tolist()}"
        )
    exact = fractions * trials.num_trials
    sizes = np.floor(exact).astype(int)
    by_remainder = np.argsort(-(exact - sizes), kind="stable")
    sizes[by_remainder[: trials.num_trials - sizes.sum()]] += 1
    if sizes.min() < 1:
        raise ValueError(
            f"split: {trials.num_trials} trials are too few for fractions {fractions.tolist()} "
            f"(part sizes {sizes.tolist()}); every part needs at least one trial"
        )
    order = np.random.default_rng(seed).permutation(trials.num_trials)
    parts = np.split(order, np.cumsum(sizes)[:-1])
    return tuple(trials[np.sort(part)] for part in parts)


def heldout_neurons(
    trials: Trials, n_heldout: int | float | None = None, *, seed: int = 0, neurons=None
) -> tuple[Trials, Trials]:
    """Held-in and held-out neurons, as in NLB co-smoothing.

    Args:
      trials: `Trials` `[trials, time, neurons]`.
      n_heldout: how many neurons to hold out at random: an int in `[1, neurons - 1]`, or a
        fraction in (0, 1) of the neurons (rounded, at least 1, leaving at least 1).
      seed: seed of the random choice.
      neurons: instead of `n_heldout`, the held-out neurons: a bool mask `[neurons]` or
        indices (e.g. `lj.io.nwb_heldout_units(path)`).

    Returns:
      `(heldin, heldout)`: `Trials` with the held-in and held-out neurons, in original order.
    """
    _check_trials("heldout_neurons", trials)
    num_neurons = trials.num_neurons
    if (n_heldout is None) == (neurons is None):
        raise ValueError("heldout_neurons: give either `n_heldout` or `neurons`")
    if neurons is not None:
        heldout = _neuron_mask(neurons, num_neurons)
    else:
        count = _heldout_count(n_heldout, num_neurons)
        chosen = np.random.default_rng(seed).choice(num_neurons, size=count, replace=False)
        heldout = np.zeros(num_neurons, dtype=bool)
        heldout[chosen] = True
    if heldout.all() or not heldout.any():
        raise ValueError(
            f"heldout_neurons: hold out at least one and at most {num_neurons - 1} of the "
            f"{num_neurons} neurons, got {int(heldout.sum())}"
        )
    return trials.select_neurons(~heldout), trials.select_neurons(heldout)


def forward_split(trials: Trials, n_forward: int) -> tuple[Trials, Trials]:
    """Hold out the last `n_forward` observed bins of every trial (NLB forward prediction).

    Trials may have different lengths (padding marked by `mask`): each trial's forward part is
    the `n_forward` bins that end at its last observed bin.

    Args:
      trials: `Trials` `[trials, time, neurons]`.
      n_forward: bins to hold out, `1 <= n_forward < time`.

    Returns:
      `(observed, forward)`: `observed` `[trials, time - n_forward, neurons]` with `mask` False
      past each trial's observed part; `forward` `[trials, n_forward, neurons]`.
    """
    _check_trials("forward_split", trials)
    if isinstance(n_forward, bool) or not isinstance(n_forward, (int, np.integer)):
        raise ValueError(f"forward_split: `n_forward` must be an int, got {n_forward!r}")
    n_forward = int(n_forward)
    mask = np.asarray(trials.mask)
    if not 1 <= n_forward < trials.num_bins:
        raise ValueError(
            f"forward_split: `n_forward` must be in [1, {trials.num_bins - 1}], got {n_forward}"
        )
    ends = trials.num_bins - np.argmax(mask[:, ::-1], axis=1)
    ends[~mask.any(axis=1)] = 0
    if ends.min() <= n_forward:
        trial = int(np.argmin(ends))
        raise ValueError(
            f"forward_split: trial {trial} has {ends[trial]} bins up to its last observed one; "
            f"holding out n_forward={n_forward} leaves none observed"
        )
    forward_bins = ends[:, None] - n_forward + np.arange(n_forward)
    observed_length = trials.num_bins - n_forward
    observed_mask = mask[:, :observed_length] & (
        np.arange(observed_length) < (ends - n_forward)[:, None]
    )

    def pick_bins(array, bins):
        index = bins.reshape(bins.shape + (1,) * (array.ndim - 2))
        return np.take_along_axis(np.asarray(array), index, axis=1)

    observed = trials.replace(
        spikes=np.asarray(trials.spikes)[:, :observed_length],
        times=np.asarray(trials.times)[:, :observed_length],
        mask=observed_mask,
        behavior=None if trials.behavior is None else trials.behavior[:, :observed_length],
    )
    forward = trials.replace(
        spikes=pick_bins(trials.spikes, forward_bins),
        times=pick_bins(trials.times, forward_bins),
        mask=pick_bins(mask, forward_bins),
        behavior=None if trials.behavior is None else pick_bins(trials.behavior, forward_bins),
    )
    return observed, forward


def _check_trials(function: str, trials) -> None:
    if not isinstance(trials, Trials):
        raise ValueError(f"{function}: `trials` must be a Trials, got {type(trials).__name__}")


def _heldout_count(n_heldout, num_neurons: int) -> int:
    if isinstance(n_heldout, bool):
        raise ValueError(f"heldout_neurons: `n_heldout` must be a number, got {n_heldout!r}")
    if isinstance(n_heldout, (int, np.integer)):
        count = int(n_heldout)
    elif isinstance(n_heldout, (float, np.floating)) and 0 < n_heldout < 1:
        count = min(max(int(round(n_heldout * num_neurons)), 1), num_neurons - 1)
    else:
        raise ValueError(
            "heldout_neurons: `n_heldout` must be an int count or a fraction in (0, 1), "
            f"got {n_heldout!r}"
        )
    if not 1 <= count < num_neurons:
        raise ValueError(
            f"heldout_neurons: `n_heldout` must be in [1, {num_neurons - 1}] for "
            f"{num_neurons} neurons, got {count}"
        )
    return count


def _neuron_mask(neurons, num_neurons: int) -> np.ndarray:
    neurons = np.asarray(neurons)
    if neurons.dtype == bool:
        if neurons.shape != (num_neurons,):
            raise ValueError(
                f"heldout_neurons: a bool `neurons` mask must have shape ({num_neurons},), "
                f"got {neurons.shape}"
            )
        return neurons
    if neurons.ndim != 1 or neurons.dtype.kind not in "iu":
        raise ValueError("heldout_neurons: `neurons` must be a bool mask or integer indices")
    if neurons.size and (neurons.min() < 0 or neurons.max() >= num_neurons):
        raise ValueError(
            f"heldout_neurons: `neurons` indices must be in [0, {num_neurons - 1}], "
            f"got {neurons.min()}..{neurons.max()}"
        )
    if len(np.unique(neurons)) != neurons.size:
        raise ValueError("heldout_neurons: `neurons` indices repeat")
    mask = np.zeros(num_neurons, dtype=bool)
    mask[neurons] = True
    return mask
