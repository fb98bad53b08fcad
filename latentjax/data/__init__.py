"""The data layer: `Trials`, file I/O (`io`: npz, NWB) and splits. Imports no model."""

from latentjax.data import io
from latentjax.data.splits import forward_split, heldout_neurons, split
from latentjax.data.trials import Trials

__all__ = ["Trials", "forward_split", "heldout_neurons", "io", "split"]
