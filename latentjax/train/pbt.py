"""Population-based training: exploit and explore on the population axis between chunks.

Every `interval` chunks the members are ranked by their score (validation loss when there
are validation data, else the chunk's mean training loss; non-finite scores rank last). Each
member in the worst `fraction` copies the whole training state (parameters, optimiser state,
step, early-stopping record) of a member drawn from the best `fraction` (exploit), keeping its
own PRNG key, and multiplies each explored knob by a factor drawn from `perturb_factors`
(explore), clipped to `bounds`. The random choices depend only on `seed` and the step, so a
resumed run repeats them. Each member's knob history is in its `FitResult.history`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

__all__ = ["PBTConfig", "exploit_explore", "take_members"]


@dataclasses.dataclass(frozen=True)
class PBTConfig:
    """Settings of population-based training (`lj.sweep(..., pbt=PBTConfig())`).

    Attributes:
      interval: chunks between exploit/explore rounds.
      fraction: the share of the population that is replaced (worst) and copied (best).
      perturb_factors: the factors an explored knob is multiplied by, one drawn per knob.
      bounds: `{knob path: (low, high)}` limits of explored knobs.
      seed: seed of the random choices.
    """

    interval: int = 1
    fraction: float = 0.25
    perturb_factors: tuple[float, ...] = (0.8, 1.25)
    bounds: dict | None = None
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"PBTConfig: `interval` must be a positive int, got {self.interval!r}")
        if not 0 < self.fraction <= 0.5:
            raise ValueError(f"PBTConfig: `fraction` must be in (0, 0.5], got {self.fraction}")
        if not self.perturb_factors or min(self.perturb_factors) <= 0:
            raise ValueError("PBTConfig: `perturb_factors` must be positive numbers")


def exploit_explore(
    scores, knobs: dict, explored, config: PBTConfig, *, generation: int
) -> tuple[np.ndarray, dict]:
    """One PBT round on the host.

    Args:
      scores: `[members]` losses (lower is better; NaN and Inf rank last).
      knobs: `{path: [members]}` current knob values (every knob).
      explored: the knob paths to perturb.
      config: PBT settings.
      generation: a number unique to this round (the step), mixed into the seed.

    Returns:
      `sources` `[members]` int: the member whose state each member takes (itself when it is
      kept), and the new knobs `{path: [members]}`.
    """
    scores = np.where(np.isfinite(scores), np.asarray(scores, float), np.inf)
    size = len(scores)
    count = max(1, int(round(config.fraction * size))) if size > 1 else 0
    rng = np.random.default_rng([config.seed, generation])
    ranking = np.argsort(scores, kind="stable")
    best, worst = ranking[:count], ranking[size - count :]
    sources = np.arange(size)
    sources[worst] = rng.choice(best, size=count)
    new_knobs = {
        path: np.asarray(values, np.float64)[sources].copy() for path, values in knobs.items()
    }
    bounds = config.bounds or {}
    for path in explored:
        factors = rng.choice(np.asarray(config.perturb_factors, float), size=count)
        values = new_knobs[path]
        values[worst] = values[worst] * factors
        if path in bounds:
            low, high = bounds[path]
            values[worst] = np.clip(values[worst], low, high)
    return sources, new_knobs


@functools.partial(jax.jit, donate_argnums=0)
def take_members(state, sources):
    """Every member takes the training state of member `sources[i]`, keeping its own key."""
    taken = jax.tree.map(lambda leaf: leaf[sources], state)
    return taken._replace(key=state.key)
