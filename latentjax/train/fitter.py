"""The `Fitter` protocol: an optimisation algorithm as a pair of pure functions.

Like an optax `GradientTransformation`: `init(params, data) -> state` and
`step(state, data, key) -> (state, info)`. EM for an LDS, Adam on an ELBO, SVI and NUTS are
all Fitters, so one engine (`latentjax.train.loop`) drives them all. `state.params` holds the
current parameters; `info` is a dict of scalars that includes `"loss"` (what early stopping and
logging watch; EM reports the negative log-likelihood).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["Fitter"]


class Fitter(NamedTuple):
    """`init(params, data) -> state`; `step(state, data, key) -> (state, info)`, both pure."""

    init: Callable[[Any, Any], Any]
    step: Callable[[Any, Any, Any], tuple[Any, dict]]
