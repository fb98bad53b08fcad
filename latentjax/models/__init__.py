"""Model families: one module each, the same contract (`Config`, `init`, `loss` or `fitter`,
`posterior`); `lj.fit` finds the family from the Config's module."""

from latentjax.models import gpfa
from latentjax.models import lfads
from latentjax.models import lds, plds
from latentjax.models import node, seqvae

__all__ = ["gpfa", "lds", "lfads", "plds", "node", "seqvae"]
