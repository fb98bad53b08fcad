"""`TrainConfig` (optimiser and loop settings) and the knobs of a Config.

A *knob* is a continuous hyperparameter that a population may vary (learning rate, KL and L2
weights, dropout rates): a dataclass field declared with `metadata={"knob": True}`. Knobs are
addressed by dotted paths through nested configs (`"train.learning_rate"`). Inside compiled
code the engine replaces every knob by a traced scalar, so one program serves every member
of a population and every knob value; family code must use knobs only arithmetically.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from latentjax.train.grouping import check_mode

__all__ = [
    "OPTIMIZER_FIELDS",
    "TrainConfig",
    "auto_steps",
    "check_grid",
    "check_knobs",
    "knob",
    "knob_values",
    "static_config",
    "with_knobs",
]

SCHEDULES = ("constant", "cosine", "linear")

OPTIMIZER_FIELDS = (
    "train.learning_rate",
    "train.weight_decay",
    "train.batch_size",
    "train.grad_clip",
    "train.schedule",
    "train.warmup_steps",
    "train.final_lr_fraction",
)
"""The `TrainConfig` fields only a gradient Fitter reads (EM families ignore them)."""


KNOB_DOMAINS = {
    "real": (lambda value: True, "a finite number"),
    "positive": (lambda value: value > 0, "> 0"),
    "nonnegative": (lambda value: value >= 0, ">= 0"),
    "probability": (lambda value: 0 <= value < 1, "in [0, 1)"),
}
"""What a knob's `domain` allows: (test, description for the error)."""


def knob(default: float, domain: str = "real") -> Any:
    """A dataclass field for a continuous hyperparameter that populations may vary.

    `domain` ("real", "positive", "nonnegative" or "probability" for [0, 1)) is checked by
    `check_knobs` and `check_grid` at the API boundary, before anything is written.
    """
    if domain not in KNOB_DOMAINS:
        raise ValueError(f"knob: `domain` must be one of {sorted(KNOB_DOMAINS)}, got {domain!r}")
    return dataclasses.field(default=default, metadata={"knob": True, "domain": domain})


def _knob_domains(config: Any, prefix: str = "") -> dict[str, str]:
    domains = {}
    for field in dataclasses.fields(config):
        path = prefix + field.name
        if field.metadata.get("knob"):
            domains[path] = field.metadata.get("domain", "real")
        elif _is_config(value := getattr(config, field.name)):
            domains.update(_knob_domains(value, path + "."))
    return domains


def _check_knob_value(path: str, value: Any, domain: str, where: str) -> None:
    allowed, description = KNOB_DOMAINS[domain]
    number = not isinstance(value, bool) and isinstance(value, (int, float))
    if not number or not math.isfinite(value) or not allowed(value):
        raise ValueError(f"{where}: `{path}` must be {description}, got {value!r}")


def check_knobs(config: Any) -> None:
    """Raise ValueError naming the first knob of `config` (nested configs included) whose
    value is not a finite number in its domain (a learning rate <= 0, a dropout rate of 1.5)."""
    domains = _knob_domains(config)
    for path, value in knob_values(config).items():
        _check_knob_value(path, value, domains[path], type(config).__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser and loop settings shared by every gradient-trained family.

    Attributes:
      learning_rate: peak learning rate of AdamW (knob).
      weight_decay: decoupled weight decay of AdamW (knob).
      batch_size: trials per minibatch, drawn without replacement from a per-epoch
        permutation; None (or a size above the number of trials) uses every trial at every
        step.
      steps: optimisation steps (EM iterations for Fitter families); None sizes them to
        the data when `lj.fit`/`lj.sweep` start (`auto_steps`: 2000 at 100 trials, growing
        as trials^(2/3)), and the run records the number used.
      grad_clip: clip gradients to this global norm; None leaves them alone.
      schedule: learning-rate decay after warm-up: "constant", "cosine" or "linear" (to
        `final_lr_fraction` of the peak at `steps`).
      warmup_steps: linear warm-up of the learning rate from 0.
      final_lr_fraction: learning rate at the last step, as a fraction of the peak.
      chunk_size: steps per compiled chunk; the host logs, validates, early-stops and
        checkpoints between chunks.
      checkpoint_every: steps between checkpoints (rounded up to whole chunks); a checkpoint
        is always written at the end.
      patience: stop after this many validations (one per chunk) without improvement of the
        validation loss; None never stops early.
      max_nonfinite: a member stops, marked failed, after this many consecutive steps whose
        loss, gradient or new state was not finite (each such update is skipped), or at once
        on such a step whose info reports a failure (`*_failures` > 0, e.g. node's failed
        ODE solves); the others go on, and when every member has failed, `NonFiniteError`.
      population_mode: how the members of a population run on one device: "vmapped" (one
        vmapped program), "sequential" (one member after another), "concurrent" (one member
        after another in each of one stream per CPU core, the streams side by side), an int
        (vmapped groups of that many members, one group after another) or "auto"
        (`grouping.choose`: on CPU concurrent for large models, else vmapped). The results
        agree to float32 rounding, so it is left out of the run's hash: a run may resume in
        another mode.
    """

    learning_rate: float = knob(1e-3, "positive")
    weight_decay: float = knob(0.0, "nonnegative")
    batch_size: int | None = None
    steps: int | None = 1000
    grad_clip: float | None = None
    schedule: str = "constant"
    warmup_steps: int = 0
    final_lr_fraction: float = 0.0
    chunk_size: int = 100
    checkpoint_every: int = 1000
    patience: int | None = None
    max_nonfinite: int = 20
    population_mode: str | int = "auto"

    def __post_init__(self):
        positive = {"chunk_size": self.chunk_size}
        if self.steps is not None:
            positive["steps"] = self.steps
        positive["checkpoint_every"] = self.checkpoint_every
        positive["max_nonfinite"] = self.max_nonfinite
        if self.batch_size is not None:
            positive["batch_size"] = self.batch_size
        if self.patience is not None:
            positive["patience"] = self.patience
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TrainConfig: `{name}` must be a positive int, got {value!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"TrainConfig: `schedule` must be one of {SCHEDULES}, got {self.schedule!r}"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig: `grad_clip` must be > 0 or None, got {self.grad_clip}")
        check_mode(self.population_mode)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(
                f"TrainConfig: `warmup_steps` must be an int >= 0, got {self.warmup_steps!r}"
            )


def auto_steps(num_trials: int) -> int:
    """Training steps for `num_trials` training trials when `TrainConfig.steps` is None.

    `2000 * (num_trials / 100) ** (2/3)`, within [500, 20000], rounded to 100: a power law
    through two measurements on Lorenz spikes with 70% of bins dropped. On 100 trials the
    sequential VAE's rate R² at the dropped bins peaked near 2000 steps (0.50; 0.33 at 3000
    and -0.06 at 4000 steps, overfitting; a one-off run with the defaults, not a committed
    benchmark); on 1600 trials its best validation step lay at 11000 to 13300
    (benchmarks/node.md).

    Examples:
      >>> auto_steps(100), auto_steps(1600), auto_steps(10)
      (2000, 12700, 500)
    """
    if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
        raise ValueError(f"auto_steps: `num_trials` must be a positive int, got {num_trials!r}")
    steps = 2000 * (num_trials / 100) ** (2 / 3)
    return int(min(max(round(steps, -2), 500), 20000))


def _is_config(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def knob_values(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every knob of `config` (nested configs included) as `{dotted path: value}`."""
    values = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        path = prefix + field.name
        if field.metadata.get("knob"):
            values[path] = value
        elif _is_config(value):
            values.update(knob_values(value, path + "."))
    return values


def with_knobs(config: Any, values: Mapping[str, Any], *, validate: bool = True) -> Any:
    """A copy of `config` with the knobs at the given dotted paths replaced.

    With `validate=True` the copies are built by `dataclasses.replace` (running the config's
    own checks); with `validate=False` (inside compiled code, where the values are tracers)
    the fields are set directly, so a config's `__post_init__` never sees a tracer.
    """
    own, nested = {}, {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            own[head] = value
    for head, inner in nested.items():
        own[head] = with_knobs(getattr(config, head), inner, validate=validate)
    if validate:
        return dataclasses.replace(config, **own)
    clone = copy.copy(config)
    for name, value in own.items():
        object.__setattr__(clone, name, value)
    return clone


def _knob_defaults(config: Any, prefix: str = "") -> dict[str, Any]:
    defaults = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        path = prefix + field.name
        if field.metadata.get("knob"):
            defaults[path] = value if field.default is dataclasses.MISSING else field.default
        elif _is_config(value):
            defaults.update(_knob_defaults(value, path + "."))
    return defaults


def static_config(config: Any) -> Any:
    """`config` with every knob set to its declared default.

    This is the compile-time (hashable) part of a config: two configs that differ only in
    knob values share one compiled program, the knobs being passed as traced arguments.
    """
    return with_knobs(config, _knob_defaults(config))


def check_grid(config: Any, grid: Mapping[str, Any] | None) -> dict[str, list[float]]:
    """Validate a population grid `{knob path: [values]}` against the knobs of `config`."""
    if grid is None:
        return {}
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must map knob names to lists of values, got {type(grid).__name__}")
    knobs, domains = knob_values(config), _knob_domains(config)
    checked = {}
    for path, values in grid.items():
        if path not in knobs:
            raise ValueError(
                f"grid: {path!r} is not a knob of {type(config).__name__}; knobs are "
                f"{sorted(knobs)} (sizes and choices cannot vary inside one population)"
            )
        values = list(values) if not isinstance(values, (int, float)) else [values]
        if not values:
            raise ValueError(f"grid: {path!r} has no values")
        for value in values:
            _check_knob_value(path, value, domains[path], "grid")
        checked[path] = [float(v) for v in values]
    return checked
