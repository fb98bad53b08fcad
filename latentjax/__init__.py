"""latentjax: latent dynamics of neural populations in JAX.

Examples:
    >>> import latentjax as lj
    >>> data = lj.datasets.lorenz(seed=0)
    >>> data.trials.shape      # [trials, time, neurons]
    (160, 100, 30)
"""

from latentjax import (
    data,
    datasets,
    decode,
    family,
    geometry,
    metrics,
    models,
    multiregion,
    plot,
    train,
)
from latentjax.api import best, fit, infer, load_run, sweep
from latentjax.data import Trials, io
from latentjax.evaluate import evaluate
from latentjax.results import FitResult, Posterior

__version__ = "0.1.0"

__all__ = [
    "FitResult",
    "Posterior",
    "Trials",
    "best",
    "data",
    "datasets",
    "decode",
    "evaluate",
    "family",
    "fit",
    "geometry",
    "infer",
    "io",
    "load_run",
    "metrics",
    "models",
    "multiregion",
    "plot",
    "sweep",
    "train",
]
