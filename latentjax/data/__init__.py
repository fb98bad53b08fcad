"""The data layer: `Trials`, file I/O (`io`: npz, NWB), splits, and continuous recordings
(`chop` into windows, `merge` back). Imports no model."""

from latentjax.data import io
from latentjax.data.chop import chop, merge, window_starts
from latentjax.data.splits import forward_split, heldout_neurons, split
from latentjax.data.trials import Trials

__all__ = [
    "Trials",
    "chop",
    "forward_split",
    "heldout_neurons",
    "io",
    "merge",
    "split",
    "window_starts",
]
