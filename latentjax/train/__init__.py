"""The training engine: compiled loops, populations, checkpoints. Knows no model family."""

from latentjax.train.fitter import Fitter

__all__ = ["Fitter"]
