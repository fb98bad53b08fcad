"""`fit`, `infer`, `sweep`, `load_run`: one entry point for every model family.

A *family* is the module that defines a Config class, or the nearest package above it
(`latentjax.models.lfads` for `latentjax.models.lfads.config.Config`), or anything registered
with `register_family`; it offers `Config`, `init(key, config, trials) -> params`,
`posterior(params, trials, config, key, **options) -> Posterior`, and either
`loss(params, batch, key, config, step) -> (scalar, aux)` (trained by gradient; optional
`validation_loss` with the same signature) or `fitter(config) -> Fitter` (EM, SVI, MCMC).

    >>> import latentjax as lj
    >>> train, test = lj.data.split(lj.datasets.lds(seed=0).trials)  # doctest: +SKIP
    >>> config = lj.models.lds.Config(latent_dim=3)                   # doctest: +SKIP
    >>> result = lj.fit(config, train, out="runs/lds")                # doctest: +SKIP
    >>> posterior = lj.infer(result, test)                            # doctest: +SKIP
    >>> config = lj.models.lfads.Config()                             # doctest: +SKIP
    >>> grid = {"train.learning_rate": [1e-3, 1e-2]}
    >>> population = lj.sweep(config, train, seeds=(0, 1), grid=grid)  # doctest: +SKIP

Populations on several devices and hosts: `sweep` shards the population axis over every
device JAX sees (a `jax.sharding.Mesh` with axis "population"). To use several hosts, run the
same script on each with `jax.distributed.initialize()` called first; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from latentjax.data import Trials
from latentjax.results import FitResult, Posterior
from latentjax.train.checkpoint import Checkpoints
from latentjax.train.config import (
    TrainConfig,
    check_grid,
    knob_values,
    static_config,
    with_knobs,
)
from latentjax.train.gradient import FamilyGradientFitter
from latentjax.train.loop import Program, init_population, train_population
from latentjax.train.pbt import PBTConfig
from latentjax.train.run import (
    MetricsLog,
    RunDir,
    config_from_json,
    config_to_json,
    describe_trials,
    digest,
    member_history,
)

__all__ = ["fit", "infer", "load_run", "register_family", "sweep"]

_FAMILIES: dict[type, Any] = {}


def register_family(config_type: type, family: Any) -> None:
    """Make `family` (a module or any object with the family functions) the family of
    `config_type`, for families defined outside latentjax or outside the Config's module."""
    if not isinstance(config_type, type):
        raise ValueError(f"register_family: `config_type` must be a class, got {config_type!r}")
    _check_family(family, config_type.__name__)
    _FAMILIES[config_type] = family


def _missing_functions(family: Any) -> list[str]:
    missing = [f for f in ("init", "posterior") if not callable(getattr(family, f, None))]
    if not callable(getattr(family, "loss", None)) and not callable(
        getattr(family, "fitter", None)
    ):
        missing.append("loss or fitter")
    return missing


def _check_family(family: Any, name: str) -> None:
    missing = _missing_functions(family)
    if missing:
        raise ValueError(
            f"the family of {name} ({getattr(family, '__name__', family)!r}) lacks "
            f"{', '.join(missing)}; see latentjax.api for the family contract"
        )


def family_of(config: Any) -> Any:
    """The family module of a Config instance."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(
            f"config must be a family's Config instance (a dataclass), got {type(config).__name__}"
        )
    config_type = type(config)
    if config_type not in _FAMILIES:
        # The family is the module defining the Config, or the nearest package above it
        # (a family written as a package, e.g. `models/lfads/config.py`).
        parts = config_type.__module__.split(".")
        modules = [importlib.import_module(".".join(parts[:n])) for n in range(len(parts), 0, -1)]
        family = next((m for m in modules if not _missing_functions(m)), modules[0])
        _check_family(family, config_type.__name__)
        _FAMILIES[config_type] = family
    return _FAMILIES[config_type]


def _train_config(config: Any) -> TrainConfig:
    train = getattr(config, "train", None)
    return train if isinstance(train, TrainConfig) else TrainConfig()


def _check_trials(name: str, trials: Any, *, required: bool) -> None:
    if trials is None and not required:
        return
    if not isinstance(trials, Trials):
        raise ValueError(f"`{name}` must be lj.Trials, got {type(trials).__name__}")


class _Member(NamedTuple):
    seed: int
    config: Any


def _members(config: Any, seeds: Sequence[int], grid: dict[str, list[float]]) -> list[_Member]:
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    return [_Member(seed, with_knobs(config, combo)) for seed in seeds for combo in combos]


def _program(family: Any, config: Any, with_validation: bool) -> Program:
    train = _train_config(config)
    if callable(getattr(family, "fitter", None)):
        make_fitter = family.fitter
    elif isinstance(getattr(config, "train", None), TrainConfig):
        make_fitter = FamilyGradientFitter(family.loss)
    else:
        raise ValueError(
            f"config: {type(config).__name__} is trained by gradient (its family has `loss`) "
            "and needs a field `train: latentjax.train.TrainConfig`"
        )
    validation_loss = None
    if with_validation:
        validation_loss = getattr(family, "validation_loss", None) or getattr(family, "loss", None)
        if validation_loss is None:
            raise ValueError(
                f"valid: the family {family.__name__} has no `validation_loss` (or `loss`) to "
                "evaluate validation trials with; pass valid=None"
            )
    static = static_config(config)
    try:
        hash(static)
    except TypeError as error:
        raise ValueError(
            f"config: {type(config).__name__} must be hashable (a frozen dataclass whose fields "
            f"are numbers, strings, tuples or frozen dataclasses): {error}"
        ) from error
    return Program(
        make_fitter=make_fitter,
        config=static,
        validation_loss=validation_loss,
        chunk_size=train.chunk_size,
        max_nonfinite=train.max_nonfinite,
    )


def _records(config, seeds, grid, pbt, steps, train, valid) -> tuple[dict, dict]:
    config_json = config_to_json(config)
    hashed = config_to_json(config)
    if isinstance(getattr(config, "train", None), TrainConfig):
        hashed["fields"]["train"]["fields"].pop("steps")  # a run may be extended
    population = {
        "seeds": list(seeds),
        "grid": grid,
        "pbt": None if pbt is None else config_to_json(pbt),
    }
    config_record = {
        "config": config_json,
        "population": population,
        "steps": steps,
        "hash": digest({"config": hashed, "population": population}),
    }
    return config_record, {"train": describe_trials(train), "valid": describe_trials(valid)}


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def _member_results(members, params, knobs, log, failed, run_dir, pbt) -> list[FitResult]:
    results = []
    for index, member in enumerate(members):
        config = member.config
        if pbt is not None:
            config = with_knobs(config, {p: float(v[index]) for p, v in knobs.items()})
        history = member_history(log, index)
        history["seed"] = np.asarray(member.seed)
        history["failed"] = np.asarray(bool(failed[index]))
        results.append(
            FitResult(
                params=jax.tree.map(lambda x, i=index: jax.numpy.asarray(x[i]), params),
                config=config,
                history=history,
                run_dir=run_dir,
            )
        )
    return results


def _train(config, train, valid, *, seeds, grid, steps, out, progress, pbt, devices):
    family = family_of(config)
    _check_trials("train", train, required=True)
    _check_trials("valid", valid, required=False)
    if isinstance(seeds, (int, np.integer)):
        seeds = (seeds,)
    seeds = tuple(seeds)
    if not seeds or not all(isinstance(s, (int, np.integer)) for s in seeds):
        raise ValueError(f"seeds must be a non-empty sequence of ints, got {seeds!r}")
    seeds = tuple(int(s) for s in seeds)
    grid = check_grid(config, grid)
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"steps must be a positive int or None, got {steps!r}")
    if pbt is not None and not isinstance(pbt, PBTConfig):
        raise ValueError(f"pbt must be a latentjax.train.PBTConfig, got {type(pbt).__name__}")
    if pbt is not None and not grid:
        raise ValueError("pbt: give a `grid` of knobs for population-based training to explore")
    loop_settings = _train_config(config)
    if steps is not None and isinstance(getattr(config, "train", None), TrainConfig):
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, steps=int(steps))
        )
    steps = int(steps or loop_settings.steps)

    members = _members(config, seeds, grid)
    params, keys = [], []
    for member in members:
        init_key, loop_key = jax.random.split(jax.random.PRNGKey(member.seed))
        params.append(family.init(init_key, member.config, train))
        keys.append(np.asarray(loop_key))
    knobs = _stack([knob_values(m.config) for m in members])

    run = None
    if out is not None:
        run = RunDir(out)
        config_record, data_record = _records(config, seeds, grid, pbt, steps, train, valid)
        run.open(config_record, data_record)
    outcome = train_population(
        _program(family, config, valid is not None),
        _stack(params),
        knobs,
        np.stack(keys),
        train,
        valid,
        steps=steps,
        checkpoint_every=loop_settings.checkpoint_every,
        patience=loop_settings.patience,
        run=run,
        run_hash="" if run is None else config_record["hash"],
        progress=progress,
        pbt=pbt,
        explored=tuple(grid),
        devices=devices,
    )
    return _member_results(
        members,
        outcome.params,
        outcome.knobs,
        outcome.log,
        outcome.failed,
        None if run is None else run.path,
        pbt,
    )


def fit(config, train, *, valid=None, seed=0, steps=None, out=None, progress=True) -> FitResult:
    """Fit one model of the family of `config` to `train`.

    Args:
      config: a family's `Config`; its type selects the family.
      train: training `Trials` `[trials, time, neurons]`.
      valid: validation `Trials`; with them the loss on `valid` is computed after every
        chunk, the best parameters are kept and `TrainConfig.patience` stops early.
      seed: seeds the initialisation, the step keys and the data order.
      steps: total steps (EM iterations); default `config.train.steps`.
      out: run folder; written (config.json, data.json, metrics.jsonl, checkpoints/) and, if
        it already holds this run, resumed from its latest checkpoint.
      progress: show a progress bar.

    Returns:
      `FitResult` with `params`, `config`, `history` (`step`, `loss`, `valid_loss`,
      `grad_norm`, `steps_per_second`, `nonfinite_steps`, knob values, ...) and `run_dir`.

    Raises:
      ValueError: invalid arguments, or `out` holds a different run.
      latentjax.train.NonFiniteError: `TrainConfig.max_nonfinite` consecutive non-finite steps.
    """
    (result,) = _train(
        config,
        train,
        valid,
        seeds=(seed,),
        grid=None,
        steps=steps,
        out=out,
        progress=progress,
        pbt=None,
        devices=None,
    )
    return result


def sweep(
    config,
    train,
    *,
    valid=None,
    seeds=(0,),
    grid=None,
    steps=None,
    out=None,
    progress=True,
    pbt: PBTConfig | None = None,
    devices=None,
) -> list[FitResult]:
    """Train a population (every seed x every combination of `grid` knob values) as one
    vmapped program, sharded over `devices` (default: every device JAX sees, several hosts
    included after `jax.distributed.initialize()`).

    Args:
      config, train, valid, steps, out, progress: as in `fit`.
      seeds: one member per seed and grid combination.
      grid: `{knob path: [values]}`, e.g. `{"train.learning_rate": [1e-3, 3e-3]}`; only
        continuous knobs (fields declared with `latentjax.train.knob`) can vary.
      pbt: population-based training over the grid knobs (`latentjax.train.PBTConfig`).
      devices: the devices to shard the population over; the population is padded to a
        multiple of their number.

    Returns:
      One `FitResult` per member, seeds outermost, then grid combinations in order; each
      config holds the member's (final) knob values and `history` their trajectory.
    """
    return _train(
        config,
        train,
        valid,
        seeds=seeds,
        grid=grid,
        steps=steps,
        out=out,
        progress=progress,
        pbt=pbt,
        devices=devices,
    )


def infer(result: FitResult, trials, *, seed=0, **options) -> Posterior:
    """The family's posterior of `trials` under a fitted model.

    Args:
      result: a `FitResult` from `fit`, `sweep` or `load_run`.
      trials: `Trials` `[trials, time, neurons]` with the neurons the model was fitted on.
      seed: seeds sampling-based posteriors.
      **options: passed to the family's `posterior`.

    Returns:
      `Posterior` with `latents` `[trials, time, latents]` and `rates` `[trials, time, neurons]`.
    """
    if not isinstance(result, FitResult):
        raise ValueError(f"result must be a FitResult, got {type(result).__name__}")
    _check_trials("trials", trials, required=True)
    family = family_of(result.config)
    return family.posterior(
        result.params, trials, result.config, jax.random.PRNGKey(seed), **options
    )


def _dummy_trials(record: dict | None) -> Trials | None:
    if record is None:
        return None
    num_trials, num_bins, _ = record["shape"]
    return Trials(
        np.zeros(record["shape"], np.dtype(record["dtypes"]["spikes"])),
        record["dt"],
        behavior=None
        if record["behavior_dims"] is None
        else np.zeros((num_trials, num_bins, record["behavior_dims"])),
        conditions=np.zeros(num_trials, int) if record["has_conditions"] else None,
        condition_names=record["condition_names"],
        regions=record["regions"],
        neuron_ids=record["neuron_ids"],
        continuous=record["continuous"],
    )


def _params_like(family, member: _Member, trials: Trials):
    key = jax.random.PRNGKey(member.seed)
    try:
        return jax.eval_shape(lambda k: family.init(k, member.config, trials), key)
    except Exception:  # init runs host code (NumPy, scikit-learn): call it on the dummy
        params = family.init(key, member.config, trials)
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.result_type(x)), params)


def load_run(run_dir) -> FitResult | list[FitResult]:
    """The fit saved in a run folder (a list, one per member, for a sweep of several).

    Rebuilds the config from `config.json`, the parameter structure from the family's `init`
    on placeholder trials of the shapes in `data.json`, and restores the latest checkpoint.
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ValueError(f"run_dir must be a path, got {type(run_dir).__name__}")
    run = RunDir(run_dir)
    config_record, data_record = run.read()
    config = config_from_json(config_record["config"])
    family = family_of(config)
    population = config_record["population"]
    pbt = None if population["pbt"] is None else config_from_json(population["pbt"])
    members = _members(config, population["seeds"], population["grid"])
    train, valid = _dummy_trials(data_record["train"]), _dummy_trials(data_record["valid"])

    checkpoints = Checkpoints(run.checkpoint_dir)
    latest = checkpoints.latest_step()
    if latest is None:
        raise ValueError(f"run_dir: {run.path} holds no complete checkpoint")
    padded = checkpoints.record(latest)["members"]
    members_padded = members + [members[-1]] * (padded - len(members))

    program = _program(family, config, valid is not None)
    params = jax.tree.map(
        lambda *likes: jax.ShapeDtypeStruct((padded, *likes[0].shape), likes[0].dtype),
        *[_params_like(family, m, train) for m in members_padded],
    )
    knobs = _stack([knob_values(m.config) for m in members_padded])
    knobs = {k: np.asarray(v, np.float32) for k, v in knobs.items()}
    keys = np.zeros((padded, 2), np.uint32)
    state = jax.eval_shape(
        lambda p, k, s: init_population(program, p, k, s, train), params, knobs, keys
    )
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        {"loop": state, "knobs": jax.eval_shape(lambda k: k, knobs)},
    )
    restored, _ = checkpoints.restore(latest, like)
    checkpoints.close()
    loop = restored["loop"]
    final = loop.fitter_state.params if valid is None else loop.best_params
    log = MetricsLog.read(run.metrics_path, latest)
    knobs_final = {k: np.asarray(v) for k, v in restored["knobs"].items()}
    results = _member_results(
        members,
        jax.tree.map(np.asarray, final),
        knobs_final,
        log,
        np.zeros(len(members), bool),
        run.path,
        pbt,
    )
    return results[0] if len(results) == 1 else results
