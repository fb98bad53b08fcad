"""The data layer: `Trials`, file I/O and splits. Imports no model."""

from latentjax.data.trials import Trials

__all__ = ["Trials"]
