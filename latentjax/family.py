"""The model-family contract (`Family`) and the one registry that `lj.fit`, `lj.infer`,
`lj.sweep`, `lj.evaluate`, the report and the command line all read.

A family is any object (usually a module) with these names:

- `Config`: a frozen dataclass of hyperparameters; its type selects the family. Sizes and
  choices are static under `jit`; continuous knobs (`latentjax.train.knob`) may vary inside
  one compiled population. A gradient-trained family keeps its loop settings in a field
  `train: latentjax.train.TrainConfig`.
- `init(key, config, trials) -> params`: a pytree (data-dependent initialisation allowed).
- either `loss(params, batch, key, config, step) -> (scalar, aux)` (trained by AdamW on the
  engine) or `fitter(config) -> latentjax.train.Fitter` (EM, SVI, MCMC).
- `validation_loss(params, trials, key, config, step) -> (scalar, aux)`: the score on
  held-out trials that early stopping, best-parameter keeping and PBT watch (gradient
  families: their loss without training-only terms; EM, SVI and MCMC families: the held-out
  negative log-likelihood per observed entry). Pure, jittable, vmappable.
- `posterior(params, trials, config, key, **options) -> Posterior`.

Optional names:

- `figures(posterior, trials) -> {name: matplotlib Figure}`: family figures for the report.
- `diagnostics(posterior) -> {name: float}`: family numbers for `lj.evaluate` (MCMC R-hat).
- `uses_optimizer: bool`: a `fitter` family whose Fitter reads the optimiser settings of
  `TrainConfig` (learning rate, batch size, ...); others make a sweep over them an error.
- `heldin_neurons(config, num_neurons) -> indices or None`: the neurons (of the
  `num_neurons` fitted on) that `posterior` may also be given alone: the held-in neurons of
  a model fitted with held-out ones. `lj.infer` checks new trials against the fitted data
  and accepts exactly these two neuron sets.
- `dynamics(params, config, posterior) -> latentjax.results.LearnedDynamics`: the model's
  autonomous dynamics (a flow or a map on its state) with the states it visited on the
  trials of `posterior`, for `lj.geometry.fixed_points(result, posterior)` (node, seqvae,
  LFADS).
- `causal_filter(params, config, *, continuous) -> latentjax.results.CausalFilter`: causal
  inference one bin at a time, for `lj.decode.stream` (lds, plds). A family whose
  `posterior` takes `causal=True` (past bins only) serves `lj.infer(..., causal=True)`.
- `adapt(config, train) -> Config`: data-dependent defaults filled in from the training
  data before anything is built (node: `time_scale` None from the trials' spans); the run
  records the adapted config. After it, `train.steps` None becomes
  `latentjax.train.auto_steps` of the number of training trials for every family.
- `multi_session: bool`: `init`, `loss` and `validation_loss` accept a tuple of `Trials`
  (one per session, neuron counts may differ) and `posterior` takes `session=s`.

Registering makes a family available everywhere, the command line included:

Examples:
    >>> import latentjax as lj
    >>> lj.family.get("lds").name
    'lds'
    >>> "gpfa" in lj.family.names()
    True

and `lj.family.register("my_model", my_module, data="lorenz")` adds one (README: "Adding a
model family" has a complete module).

The command line finds families registered by an imported module: `latentjax fit
my_package.my_model` imports `my_package.my_model` (which registers itself), and installed
packages may list their families under the entry-point group `latentjax.families`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Family",
    "Registration",
    "causal_families",
    "get",
    "has_causal_posterior",
    "hook",
    "names",
    "of_config",
    "register",
    "resolve",
]


@runtime_checkable
class Family(Protocol):
    """What every model family offers (see the module docstring for the optional names).

    `loss` (gradient) or `fitter` (EM, SVI, MCMC) is required too; a Protocol cannot say
    "one of two", so `register` checks it.
    """

    Config: type
    init: Callable[..., Any]
    validation_loss: Callable[..., Any]
    posterior: Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Registration:
    """A registered family.

    Attributes:
      name: the name used on the command line (`latentjax fit NAME`).
      family: the module (or object) holding the family's functions.
      data: the built-in dataset the command line uses when no `--data` is given.
    """

    name: str
    family: Any
    data: str = "lorenz"

    @property
    def config_type(self) -> type:
        return self.family.Config

    @property
    def trained_by_gradient(self) -> bool:
        return not callable(getattr(self.family, "fitter", None))

    @property
    def uses_optimizer(self) -> bool:
        return self.trained_by_gradient or bool(getattr(self.family, "uses_optimizer", False))

    @property
    def multi_session(self) -> bool:
        return bool(getattr(self.family, "multi_session", False))


_BUILT_IN = {
    "lds": ("latentjax.models.lds", "lds"),
    "plds": ("latentjax.models.plds", "plds"),
    "hmm": ("latentjax.models.hmm", "nascar"),
    "slds": ("latentjax.models.slds", "nascar"),
    "gpfa": ("latentjax.models.gpfa", "lorenz"),
    "smoothing": ("latentjax.models.smoothing", "lorenz"),
    "lfads": ("latentjax.models.lfads", "lorenz"),
    "seqvae": ("latentjax.models.seqvae", "lorenz"),
    "node": ("latentjax.models.node", "lorenz"),
    "contrastive": ("latentjax.models.contrastive", "lorenz"),
    "coupled_lds": ("latentjax.multiregion.coupled_lds", "multiregion"),
    "hlds": ("latentjax.multiregion.hlds", "multiregion"),
    "dlag": ("latentjax.multiregion.dlag", "multiregion"),
    "gnn": ("latentjax.multiregion.gnn", "multiregion"),
    "attention": ("latentjax.multiregion.attention", "multiregion"),
}
"""Built-in families: name -> (module, default dataset), imported on first use."""

_REGISTRY: dict[str, Registration] = {}
_BY_CONFIG: dict[type, Registration] = {}
_loaded = False


def _missing(family: Any) -> list[str]:
    missing = [n for n in ("Config", "init", "posterior") if not _has(family, n)]
    if not _has(family, "loss") and not _has(family, "fitter"):
        missing.append("loss or fitter")
    if _has(family, "Config") and not (
        isinstance(family.Config, type) and dataclasses.is_dataclass(family.Config)
    ):
        missing.append("Config (a dataclass)")
    return missing


def _has(family: Any, name: str) -> bool:
    value = getattr(family, name, None)
    return isinstance(value, type) if name == "Config" else callable(value)


def register(name: str, family: Any, *, data: str = "lorenz") -> Registration:
    """Register `family` under `name` (replacing an earlier registration of that name).

    Args:
      name: command-line name, a Python identifier.
      family: a module or object with the `Family` names (see the module docstring).
      data: built-in dataset (optionally with sizes, `"lorenz:num_trials=40"`) that suits
        the family, used by the command line when no `--data` is given.

    Raises:
      ValueError: `name` is not an identifier, or `family` lacks part of the contract.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register: `name` must be a Python identifier, got {name!r}")
    missing = _missing(family)
    if missing:
        raise ValueError(
            f"register: the family {name!r} ({getattr(family, '__name__', family)!r}) lacks "
            f"{', '.join(missing)}; see latentjax.family for the contract"
        )
    registration = Registration(name, family, data)
    old = _REGISTRY.get(name)
    if old is not None:
        _BY_CONFIG.pop(old.config_type, None)
    _REGISTRY[name] = registration
    _BY_CONFIG[family.Config] = registration
    return registration


def _load_built_in() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name, (module, data) in _BUILT_IN.items():
        if name not in _REGISTRY:
            register(name, importlib.import_module(module), data=data)
    for entry in entry_points(group="latentjax.families"):
        if entry.name not in _REGISTRY:
            register(entry.name, entry.load())


def names() -> list[str]:
    """Every registered family name, built-in ones first."""
    _load_built_in()
    return sorted(_REGISTRY, key=lambda name: (name not in _BUILT_IN, list(_REGISTRY).index(name)))


def get(name: str) -> Registration:
    """The registration of `name`; ValueError listing the known names if there is none."""
    _load_built_in()
    if name not in _REGISTRY:
        raise ValueError(f"unknown family {name!r}; choose from {', '.join(names())}")
    return _REGISTRY[name]


def resolve(name: str) -> Registration:
    """`get(name)`, or else import the module `name` and return the family it registered
    (or the module itself when it is a family); what the command line calls."""
    _load_built_in()
    if name in _REGISTRY:
        return _REGISTRY[name]
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        raise ValueError(
            f"unknown family {name!r}; choose from {', '.join(names())}, or name a module "
            f"that registers one ({error})"
        ) from None
    found = [r for r in _REGISTRY.values() if getattr(r.family, "__name__", "") == name]
    found += [r for r in _REGISTRY.values() if r.family.__module__ == name] if not found else []
    if found:
        return found[0]
    if not _missing(module):
        return register(name.rpartition(".")[2], module)
    raise ValueError(f"the module {name!r} registers no family (call latentjax.family.register)")


def of_config(config: Any) -> Registration:
    """The registration of the family whose `Config` type `config` is an instance of."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(
            f"config must be a family's Config instance (a dataclass), got {type(config).__name__}"
        )
    _load_built_in()
    registration = _BY_CONFIG.get(type(config))
    if registration is None:
        raise ValueError(
            f"config: {type(config).__module__}.{type(config).__qualname__} is the Config of "
            "no registered family; register its family with latentjax.family.register"
        )
    return registration


def hook(name: str | None, hook_name: str) -> Callable | None:
    """The optional hook `hook_name` (`figures`, `diagnostics`) of the family registered as
    `name`, or None (no such family, or no such hook)."""
    _load_built_in()
    registration = _REGISTRY.get(name) if name is not None else None
    return None if registration is None else getattr(registration.family, hook_name, None)


def has_causal_posterior(family: Any) -> bool:
    """Whether `family.posterior` takes the keyword `causal` (filtering on past bins)."""
    try:
        parameters = inspect.signature(family.posterior).parameters
    except (TypeError, ValueError):
        return False
    return "causal" in parameters


def causal_families() -> list[str]:
    """The registered families with a causal posterior (`lj.infer(..., causal=True)`).

    Examples:
      >>> import latentjax as lj
      >>> "lds" in lj.family.causal_families()
      True
    """
    return [name for name in names() if has_causal_posterior(get(name).family)]
