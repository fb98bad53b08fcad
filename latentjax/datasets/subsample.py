"""Irregular sampling: keep a random subset of each trial's bins, with their times.

Continuous-time models (latent neural ODEs) read observations at irregular `times`. So
`subsample` compacts each trial's kept bins to the front of the time axis, in order, with
their original `times`; trials that keep fewer bins than the longest are padded at the end
with `mask` False. The time axis shrinks to the most bins any trial keeps. With
`return_index=True` it also returns, for every slot, the original bin it came from (-1 in
padding), so ground truth at kept bins is `np.take_along_axis(truth, index[..., None], 1)`
and the dropped bins (where a model's predictions can be scored) are the original bins not
in `index`, at times `original.times`.
"""

from __future__ import annotations

import numbers

import numpy as np

from latentjax.data import Trials
from latentjax.datasets._dataset import check_int

__all__ = ["subsample"]


def subsample(
    trials: Trials, keep: float, *, seed: int = 0, return_index: bool = False
) -> Trials | tuple[Trials, np.ndarray]:
    """Drop bins at random, keeping a fraction `keep` of each trial's observed bins.

    Each trial keeps `max(1, round(keep * observed))` of its observed bins (none if it has
    none), drawn without replacement; dropped and already-unobserved bins are removed and the
    kept ones compacted to the front (see the module doc).

    Args:
      trials: `Trials` `[trials, time, neurons]`.
      keep: fraction of observed bins kept per trial, in (0, 1].
      seed: seed of the random choice.
      return_index: also return `index` `[trials, kept]` int, the original bin of each slot
        (-1 in padding).

    Returns:
      `Trials` `[trials, kept, neurons]` with irregular `times` and `mask` (False in padding),
      and `index` if asked for. `behavior` and `conditions` follow the kept bins and trials.

    Examples:
      >>> import numpy as np, latentjax as lj
      >>> trials = lj.Trials(np.zeros((2, 10, 3)), dt=0.1)
      >>> sparse, index = subsample(trials, 0.5, seed=0, return_index=True)
      >>> sparse.spikes.shape, bool(np.allclose(sparse.times, index * 0.1))
      ((2, 5, 3), True)
    """
    if not isinstance(trials, Trials):
        raise ValueError(
            f"lj.datasets.subsample: `trials` must be a Trials, got {type(trials).__name__}"
        )
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real) or not 0 < keep <= 1:
        raise ValueError(f"lj.datasets.subsample: `keep` must lie in (0, 1], got {keep!r}")
    rng = np.random.default_rng(check_int("subsample", "seed", seed, minimum=0))

    mask = np.asarray(trials.mask)
    observed = mask.sum(axis=1)
    num_kept = np.where(observed > 0, np.maximum(1, np.round(keep * observed)), 0).astype(int)
    # A random priority per observed bin; each trial keeps its num_kept highest, in time order.
    priority = np.where(mask, rng.random(mask.shape), -1.0)
    rank = np.argsort(np.argsort(-priority, axis=1), axis=1)
    chosen = rank < num_kept[:, None]
    width = int(num_kept.max())
    # Stable sort puts chosen bins first, in their original order.
    order = np.argsort(~chosen, axis=1, kind="stable")[:, :width]
    new_mask = np.arange(width) < num_kept[:, None]
    index = np.where(new_mask, order, -1)

    def gather(array):
        return np.take_along_axis(array, order.reshape(order.shape + (1,) * (array.ndim - 2)), 1)

    behavior = None if trials.behavior is None else gather(np.asarray(trials.behavior))
    sparse = trials.replace(
        spikes=gather(np.asarray(trials.spikes)),
        times=np.where(new_mask, gather(np.asarray(trials.times)), 0.0),
        mask=new_mask,
        behavior=behavior,
    )
    return (sparse, index) if return_index else sparse
