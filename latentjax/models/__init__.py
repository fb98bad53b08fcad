"""Model families: one module each, the same contract (`Config`, `init`, `loss` or `fitter`,
`posterior`); `lj.fit` finds the family from the Config's module."""

from latentjax.models import (
    contrastive,
    gpfa,
    hmm,
    lds,
    lfads,
    node,
    plds,
    seqvae,
    slds,
    smoothing,
)

__all__ = [
    "contrastive",
    "gpfa",
    "hmm",
    "lds",
    "lfads",
    "plds",
    "node",
    "seqvae",
    "slds",
    "smoothing",
]
