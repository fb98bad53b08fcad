"""The dataset generators by name, for `latentjax datasets` and name-driven code."""

from __future__ import annotations

from collections.abc import Callable

from latentjax.datasets._dataset import Dataset
from latentjax.datasets.chaotic_rnn import chaotic_rnn
from latentjax.datasets.flip_flop import flip_flop
from latentjax.datasets.linear import lds, plds
from latentjax.datasets.lorenz import lorenz
from latentjax.datasets.manifolds import ring, torus
from latentjax.datasets.multiregion import multiregion
from latentjax.datasets.nascar import nascar

__all__ = ["GENERATORS", "available", "generate"]

GENERATORS: dict[str, Callable[..., Dataset]] = {
    "lorenz": lorenz,
    "chaotic_rnn": chaotic_rnn,
    "flip_flop": flip_flop,
    "lds": lds,
    "plds": plds,
    "multiregion": multiregion,
    "ring": ring,
    "torus": torus,
    "nascar": nascar,
}


def available() -> dict[str, str]:
    """Name -> one-line description (the first line of the generator's docstring).

    Examples:
      >>> "lorenz" in available()
      True
    """
    return {name: make.__doc__.strip().splitlines()[0] for name, make in GENERATORS.items()}


def generate(name: str, *, seed: int = 0, **sizes) -> Dataset:
    """The dataset `name` (a key of `available()`), e.g. `generate("ring", num_neurons=60)`."""
    if name not in GENERATORS:
        raise ValueError(
            f"lj.datasets.generate: `name` must be one of {sorted(GENERATORS)}, got {name!r}"
        )
    return GENERATORS[name](seed=seed, **sizes)
