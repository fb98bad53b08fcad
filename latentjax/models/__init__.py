"""Model families: one module each, the same contract (`Config`, `init`, `loss` or `fitter`,
`posterior`); `lj.fit` finds the family from the Config's module."""

from latentjax.models import lds, lfads, plds

__all__ = ["lds", "lfads", "plds"]
