"""Synthetic systems with ground truth, and irregular subsampling.

Every generator is `NAME(*, seed=0, **sizes) -> Dataset(trials, truth)`; `truth` holds
`latents` `[trials, time, latents]`, `rates` `[trials, time, neurons]` (expected counts per
bin, or the observation mean for continuous data) and what the system has.

Examples:
    >>> import latentjax as lj
    >>> data = lj.datasets.lorenz(seed=0, num_trials=8)
    >>> data.trials.spikes.shape
    (8, 100, 30)
"""

from latentjax.datasets._dataset import Dataset
from latentjax.datasets.chaotic_rnn import chaotic_rnn
from latentjax.datasets.flip_flop import flip_flop
from latentjax.datasets.linear import lds, plds
from latentjax.datasets.lorenz import lorenz
from latentjax.datasets.manifolds import ring, torus
from latentjax.datasets.multiregion import multiregion
from latentjax.datasets.nascar import nascar
from latentjax.datasets.registry import available, generate
from latentjax.datasets.subsample import subsample

__all__ = [
    "Dataset",
    "available",
    "chaotic_rnn",
    "flip_flop",
    "generate",
    "lds",
    "lorenz",
    "multiregion",
    "nascar",
    "plds",
    "ring",
    "subsample",
    "torus",
]
