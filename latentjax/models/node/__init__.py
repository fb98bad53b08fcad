"""Latent neural ODE for irregularly sampled trials (Rubanova et al. 2019), on diffrax.

Forward and backward GRUs over (observation, time gap) pairs infer a Gaussian posterior over
each trial's latent state at its middle observation (`anchor="middle"`, the default; or at its
first, `anchor="first"`); an MLP vector field, solved by diffrax forward and backward from
there on the trial's own time grid (`Trials.times`, masked bins ignored), carries it to every
observation; a Poisson or Gaussian read-out scores the observed bins. `posterior(...,
times=...)` evaluates latents and rates at any times (`refine_steps` refines each trial's
anchor state to its MAP first), and `vector_field` returns the learned flow for
`lj.geometry`.

Examples:
    Training takes minutes, so doctests skip the lines that fit and infer:

    >>> import latentjax as lj
    >>> data = lj.datasets.lorenz(seed=0)
    >>> sparse = lj.datasets.subsample(data.trials, 0.3)
    >>> result = lj.fit(lj.models.node.Config(), sparse)   # doctest: +SKIP
    >>> post = lj.infer(result, sparse, times=data.trials.times)          # doctest: +SKIP
"""

from latentjax.models.node.config import ANCHORS, Config
from latentjax.models.node.family import adapt, dynamics, init, loss, posterior, validation_loss
from latentjax.models.node.solve import SolverError
from latentjax.models.node.vector_field import vector_field

__all__ = [
    "ANCHORS",
    "Config",
    "SolverError",
    "adapt",
    "dynamics",
    "init",
    "loss",
    "posterior",
    "validation_loss",
    "vector_field",
]
