"""LFADS: latent factor analysis via dynamical systems (Pandarinath et al. 2018), in Flax.

A bidirectional-GRU encoder infers each trial's initial condition, a controller infers
time-varying inputs (Gaussian or AR(1) prior), and a clipped-GRU generator produces factors
that a per-session read-out maps to rates (Poisson) or continuous signals (Gaussian, Gamma,
zero-inflated Gamma). AutoLFADS augmentations (coordinated dropout, sample validation) guard
against identity overfitting; its hyperparameter search is `lj.sweep` with PBT over the knobs.
`Config(causal=True)` is the real-time variant (forward-only encoders, no initial condition
from the data): `lj.infer(..., causal=True)` and `lj.decode.stream` run it.

Examples:
    Training takes minutes, so doctests skip the last two lines:

    >>> import latentjax as lj
    >>> train, test = lj.data.split(lj.datasets.lorenz(seed=0).trials, (0.8, 0.2))
    >>> config = lj.models.lfads.Config.preset("lorenz")
    >>> result = lj.fit(config, train)                     # doctest: +SKIP
    >>> post = lj.infer(result, test, n_samples=20)        # doctest: +SKIP
"""

from latentjax.models.lfads.config import Config
from latentjax.models.lfads.family import (
    StreamConstants,
    causal_filter,
    dynamics,
    heldin_neurons,
    init,
    loss,
    posterior,
    validation_loss,
)

multi_session = True
"""`lj.fit(config, [session_a, session_b])`: one core, a read-in and read-out per session."""

__all__ = [
    "Config",
    "StreamConstants",
    "causal_filter",
    "dynamics",
    "heldin_neurons",
    "init",
    "loss",
    "multi_session",
    "posterior",
    "validation_loss",
]
