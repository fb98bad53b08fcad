"""The training engine: compiled loops, populations, checkpoints. Knows no model family.

- `Fitter`: the protocol, `init(params, data) -> state`, `step(state, data, key) -> (state, info)`.
- `gradient_fitter`: a Fitter from any pure loss and AdamW (clipping, schedules, weight decay).
- `TrainConfig`: optimiser and loop settings (`auto_steps`: steps sized to the data);
  `knob` declares a population-variable field.
- `schedules`: KL / L2 ramps and learning-rate decay as pure functions of the step.
- `train_population`: the compiled chunk loop behind `lj.fit` and `lj.sweep`.
- `grouping`: a population vmapped, in groups, one member after another or in one stream per
  core (on CPU, chosen from the cost of one member's step; `TrainConfig.population_mode`).
- `PBTConfig`: population-based training; `NonFiniteError`: too many non-finite steps.
"""

from latentjax.train import grouping, schedules
from latentjax.train.checkpoint import Checkpoints
from latentjax.train.config import (
    TrainConfig,
    auto_steps,
    knob,
    knob_values,
    static_config,
    with_knobs,
)
from latentjax.train.fitter import Fitter
from latentjax.train.gradient import FamilyGradientFitter, GradientState, gradient_fitter
from latentjax.train.loop import NonFiniteError, Program, run_chunk, train_population
from latentjax.train.pbt import PBTConfig
from latentjax.train.population import Population
from latentjax.train.run import RunDir

__all__ = [
    "Checkpoints",
    "FamilyGradientFitter",
    "Fitter",
    "GradientState",
    "NonFiniteError",
    "PBTConfig",
    "Population",
    "Program",
    "RunDir",
    "TrainConfig",
    "auto_steps",
    "gradient_fitter",
    "grouping",
    "knob",
    "knob_values",
    "run_chunk",
    "schedules",
    "static_config",
    "train_population",
    "with_knobs",
]
