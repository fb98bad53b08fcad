"""What fitting and inference return: `FitResult` and `Posterior`, and what a family's
`dynamics` and `causal_filter` hooks return: `LearnedDynamics`, `CausalFilter`.

Both are plain containers that know nothing of the family that made them, so metrics,
geometry, plots and reports can read them without importing any model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["CausalFilter", "FitResult", "LearnedDynamics", "Posterior"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Posterior:
    """Inferred latent state of a batch of trials.

    Attributes:
      latents: `[trials, time, latents]` posterior mean of the latent state.
      rates: `[trials, time, neurons]` expected counts per bin (same unit as `Trials.spikes`),
        or None for families without an observation model.
      extras: family-specific arrays (`covariances`, `factors`, `inputs`, `coupling`, ...),
        also readable as attributes: `posterior.covariances`.
      family: the registered name of the family that made it (set by `lj.infer`), so the
        report and `lj.evaluate` can call that family's hooks; static under `jit`.
    """

    latents: Any
    rates: Any = None
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    family: str | None = dataclasses.field(default=None, metadata={"static": True})

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"Posterior has no field {name!r}; extras: {sorted(extras)}")

    def to_numpy(self) -> dict[str, np.ndarray]:
        """All arrays as a flat dict of NumPy arrays (what `posterior.npz` holds)."""
        arrays = {"latents": np.asarray(self.latents)}
        if self.rates is not None:
            arrays["rates"] = np.asarray(self.rates)
        arrays.update({k: np.asarray(v) for k, v in self.extras.items() if v is not None})
        return arrays

    @classmethod
    def from_numpy(cls, arrays: Mapping[str, Any]) -> Posterior:
        arrays = dict(arrays)
        latents = arrays.pop("latents")
        rates = arrays.pop("rates", None)
        return cls(latents=latents, rates=rates, extras=arrays)


@dataclasses.dataclass(frozen=True)
class FitResult:
    """A fitted model.

    Attributes:
      params: the family's parameter pytree (for a population member, that member's slice).
      config: the family's `Config` (frozen dataclass); its type selects the family.
      history: dict of arrays logged during fitting (`loss`, `valid_loss` or
        `log_likelihood`, `step`, ...).
      run_dir: the run folder, or None when fitted without `out=`.
      data: what the fit kept of its training data (`shape`, `dt`, `regions`,
        `neuron_ids`, or `sessions` of them): `infer` and `evaluate` check new trials
        against it.
    """

    params: Any
    config: Any
    history: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    run_dir: str | None = None
    data: Mapping[str, Any] | None = None


class LearnedDynamics(NamedTuple):
    """A fitted model's autonomous dynamics, as `lj.geometry.fixed_points` takes them.

    Attributes:
      function: pure `function(state [D], *args) -> [D]`, defined at module level so that
        repeated calls with new parameters (in `args`) reuse one compilation.
      kind: "flow" (`function` is `dx/dt`) or "map" (`function` is the next state).
      args: the parameters `function` takes after the state (a tuple of pytrees).
      states: `[trials, time, D]` the states the model visited on the inferred trials.
      latents: `points [P, D] -> [P, latent_dim]`, the latents (as in `Posterior.latents`)
        of states.
    """

    function: Callable[..., Any]
    kind: str
    args: tuple
    states: Any
    latents: Callable[[Any], Any]


class CausalFilter(NamedTuple):
    """A fitted model's causal inference one bin at a time: what a family's optional
    `causal_filter(params, config, *, continuous)` hook returns, for `lj.decode.stream` and
    the family's own `posterior(..., causal=True)` (a `lax.scan` of the same `step`).

    Attributes:
      step: pure `step(constants, state, counts [N], observed) -> (state, latents [K])`:
        bin t's counts (or signals) update the state; `observed` (a bool scalar) False
        makes the bin a pure prediction (padding, missing bins). Defined at module level
        (or a `functools.partial` of one with static settings), so one compilation serves
        every set of parameters of a shape.
      constants: the arrays `step` reads (parameters and what is precomputed from them).
      state: the state before the first bin (a pytree of arrays).
      num_neurons: the counts per bin that `step` takes.
    """

    step: Callable[..., Any]
    constants: Any
    state: Any
    num_neurons: int
