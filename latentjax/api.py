"""`fit`, `infer`, `sweep`, `load_run`, `best`: one entry point for every model family.

The family of a config is the registered family whose `Config` it is (`latentjax.family`
holds the contract and the one registry). Training data are one `Trials`, or a sequence of
`Trials` (one per session, neuron counts may differ) for families that fit several sessions.

Examples:
    >>> import latentjax as lj
    >>> data = lj.datasets.lds(seed=0, num_trials=20, num_bins=30, num_latents=2)
    >>> train, test = lj.data.split(data.trials, (0.8, 0.2), seed=0)
    >>> config = lj.models.lds.Config(latent_dim=2, train=lj.train.TrainConfig(steps=20))
    >>> result = lj.fit(config, train, out="runs/lds", progress=False)
    >>> lj.infer(result, test).latents.shape                     # [trials, time, latents]
    (4, 30, 2)
    >>> population = lj.sweep(config, train, valid=test, grid={"latent_dim": [1, 2]},
    ...                       progress=False)
    >>> lj.best(population).config.latent_dim in (1, 2)
    True

A sweep's grid may name any Config field: continuous knobs (`latentjax.train.knob`: learning
rates, KL weights, ...) form one vmapped program; every combination of the other fields
(sizes, `latent_dim`, choices) is a separate compiled group, with its own run folder
`out/group-<i>` under a `sweep.json` that `load_run` reads.

Populations on several devices and hosts: `sweep` shards the population axis over every
device JAX sees (a `jax.sharding.Mesh` with axis "population"). To use several hosts, run the
same script on each with `jax.distributed.initialize()` called first; nothing else changes.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from latentjax import family as families
from latentjax.configs import update_config
from latentjax.data import Trials
from latentjax.data.conform import conform, signature, signature_of_record
from latentjax.results import FitResult, Posterior
from latentjax.train.checkpoint import Checkpoints
from latentjax.train.config import (
    OPTIMIZER_FIELDS,
    TrainConfig,
    auto_steps,
    check_grid,
    check_knobs,
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

__all__ = ["best", "fit", "infer", "load_run", "sweep"]

_SWEEP_RECORD = "sweep.json"


def _train_config(config: Any) -> TrainConfig:
    train = getattr(config, "train", None)
    return train if isinstance(train, TrainConfig) else TrainConfig()


def _as_data(name: str, data: Any, registration, *, sessions: int | None = None):
    """`Trials`, or a tuple of `Trials` (several sessions), checked; None stays None."""
    if data is None or isinstance(data, Trials):
        if sessions is not None and data is not None and sessions != 1:
            raise ValueError(f"`{name}` must hold {sessions} sessions like `train`, got one Trials")
        if data is not None and not np.asarray(data.mask).any():
            raise ValueError(f"`{name}`: every bin is masked (`mask` all False): no data")
        return data
    if isinstance(data, Sequence) and not isinstance(data, str):
        data = tuple(data)
        if not data or not all(isinstance(t, Trials) for t in data):
            raise ValueError(
                f"`{name}` must be lj.Trials or a non-empty sequence of lj.Trials (sessions)"
            )
        if not registration.multi_session:
            raise ValueError(
                f"`{name}`: the family {registration.name!r} fits one session; pass one "
                f"lj.Trials (families that fit several sessions: "
                f"{', '.join(n for n in families.names() if families.get(n).multi_session)})"
            )
        if sessions is not None and len(data) != sessions:
            raise ValueError(
                f"`{name}` must hold {sessions} sessions like `train`, got {len(data)}"
            )
        for index, session in enumerate(data):
            if not np.asarray(session.mask).any():
                raise ValueError(f"`{name}[{index}]`: every bin is masked (`mask` all False)")
        return data
    raise ValueError(
        f"`{name}` must be lj.Trials (or a sequence of them), got {type(data).__name__}"
    )


def _num_sessions(data) -> int:
    return len(data) if isinstance(data, tuple) else 1


def _describe(data) -> dict | None:
    """What `data.json` holds of one `Trials`, or of several sessions."""
    if isinstance(data, tuple):
        sessions = [describe_trials(t) for t in data]
        return {"sessions": sessions, "fingerprint": digest([s["fingerprint"] for s in sessions])}
    return describe_trials(data)


class _Member(NamedTuple):
    seed: int
    config: Any


def _combinations(grid: Mapping[str, list]) -> list[dict]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _members(config: Any, seeds: Sequence[int], grid: dict[str, list[float]]) -> list[_Member]:
    return [
        _Member(seed, with_knobs(config, combo)) for seed in seeds for combo in _combinations(grid)
    ]


def _field_exists(config: Any, path: str) -> bool:
    head, _, rest = path.partition(".")
    names = {f.name for f in dataclasses.fields(config)}
    if head not in names:
        return False
    value = getattr(config, head)
    if not rest:
        return True
    return dataclasses.is_dataclass(value) and _field_exists(value, rest)


def _split_grid(registration, config, grid) -> tuple[dict, dict]:
    """(knob grid, structural grid) of a sweep's `grid`; unknown or unused fields raise."""
    if grid is None:
        return {}, {}
    if not isinstance(grid, Mapping):
        raise ValueError(
            f"grid must map Config fields to lists of values, got {type(grid).__name__}"
        )
    knobs = knob_values(config)
    knob_grid, structural = {}, {}
    for path, values in grid.items():
        if not isinstance(path, str) or not _field_exists(config, path):
            raise ValueError(
                f"grid: {path!r} is not a field of {type(config).__name__}; knobs are "
                f"{sorted(knobs)}, other fields form separate compiled groups"
            )
        if path in OPTIMIZER_FIELDS and not registration.uses_optimizer:
            raise ValueError(
                f"grid: the family {registration.name!r} is fitted by its own Fitter (EM, "
                f"SVI or MCMC) and does not use {path!r}; a sweep over it would change nothing"
            )
        if path in knobs:
            knob_grid[path] = values
            continue
        values = (
            [values]
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence)
            else list(values)
        )
        if not values:
            raise ValueError(f"grid: {path!r} has no values")
        structural[path] = values
    return check_grid(config, knob_grid), structural


def _program(registration, config: Any, with_validation: bool, steps: int | None = None) -> Program:
    family = registration.family
    train = _train_config(config)
    if not registration.trained_by_gradient:
        make_fitter = family.fitter
    elif isinstance(getattr(config, "train", None), TrainConfig):
        make_fitter = FamilyGradientFitter(family.loss)
    else:
        raise ValueError(
            f"config: {type(config).__name__} is trained by gradient (its family has `loss`) "
            "and needs a field `train: latentjax.train.TrainConfig`"
        )
    if with_validation and not callable(getattr(family, "validation_loss", None)):
        raise ValueError(
            f"valid: the family {registration.name!r} has no `validation_loss` to score "
            "validation trials with"
        )
    static = static_config(config)
    if isinstance(getattr(static, "train", None), TrainConfig):
        # how members are grouped is an argument of `run_chunk`, not part of the program
        static = dataclasses.replace(
            static, train=dataclasses.replace(static.train, population_mode="auto")
        )
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
        validation_loss=family.validation_loss if with_validation else None,
        chunk_size=min(train.chunk_size, steps or train.chunk_size),  # no idle steps
        max_nonfinite=train.max_nonfinite,
    )


def _records(config, seeds, grid, pbt, steps, train, valid) -> tuple[dict, dict]:
    config_json = config_to_json(config)
    hashed = config_to_json(config)
    if isinstance(getattr(config, "train", None), TrainConfig):
        hashed["fields"]["train"]["fields"].pop("steps")  # a run may be extended
        hashed["fields"]["train"]["fields"].pop("population_mode")  # same results, any mode
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
    return config_record, {"train": _describe(train), "valid": _describe(valid)}


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def _member_results(members, params, knobs, log, run_dir, pbt, data, grouping) -> list[FitResult]:
    """One FitResult per member; `history["failed"]` and `history["failure"]` (why, or "")
    come from the last metrics line (a member stopped by failed steps); `population_mode`
    and `group_size` from `grouping` (the record of `population.json`, or None)."""
    last = log[-1] if log else {}
    failed = last.get("failed", [False] * len(members))
    reasons = last.get("failure", [None] * len(members))
    results = []
    for index, member in enumerate(members):
        config = member.config
        if pbt is not None:
            config = with_knobs(config, {p: float(v[index]) for p, v in knobs.items()})
        history = member_history(log, index)
        history["seed"] = np.asarray(member.seed)
        history["failed"] = np.asarray(bool(failed[index]))
        history["failure"] = np.asarray(reasons[index] or "")
        if grouping is not None:
            history["population_mode"] = np.asarray(grouping["mode"])
            history["group_size"] = np.asarray(grouping["group_size"])
        results.append(
            FitResult(
                params=jax.tree.map(lambda x, i=index: jax.numpy.asarray(x[i]), params),
                config=config,
                history=history,
                run_dir=run_dir,
                data=data,
            )
        )
    return results


def adapted(registration, config, train):
    """`config` with its data-dependent defaults filled in from the training data: the
    family's optional `adapt(config, train)` hook (node's time scale), then `train.steps`
    None as `latentjax.train.auto_steps` of the number of training trials (all sessions)."""
    adapt = getattr(registration.family, "adapt", None)
    if adapt is not None:
        config = adapt(config, train)
    loop = getattr(config, "train", None)
    if isinstance(loop, TrainConfig) and loop.steps is None:
        sessions = train if isinstance(train, tuple) else (train,)
        steps = auto_steps(sum(t.num_trials for t in sessions))
        config = dataclasses.replace(config, train=dataclasses.replace(loop, steps=steps))
    return config


def _train_group(
    registration, config, train, valid, *, seeds, grid, steps, out, progress, pbt, devices
) -> list[FitResult]:
    """One compiled population: every seed x every combination of the knob `grid`."""
    family = registration.family
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
    try:
        outcome = train_population(
            _program(registration, config, valid is not None, steps),
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
            population_mode=loop_settings.population_mode,
        )
    finally:
        if run is not None:
            run.close()  # the folder's lock, also when training raises
    return _member_results(
        members,
        outcome.params,
        outcome.knobs,
        outcome.log,
        None if run is None else run.path,
        pbt,
        signature(train),
        outcome.grouping.record(),
    )


def _check_seeds(seeds) -> tuple[int, ...]:
    if isinstance(seeds, (int, np.integer)):
        seeds = (seeds,)
    seeds = tuple(seeds)
    if not seeds or not all(isinstance(s, (int, np.integer)) for s in seeds):
        raise ValueError(f"seeds must be a non-empty sequence of ints, got {seeds!r}")
    return tuple(int(s) for s in seeds)


def _sweep_order(seeds, grid, structural) -> list[tuple[int, int]]:
    """(group, member within the group) of each member in the documented order: seeds
    outermost, then the combinations of the whole grid in the order its keys were given."""
    knob_keys = [k for k in grid if k not in structural]
    group_combos = _combinations(structural)
    knob_combos = _combinations({k: grid[k] for k in knob_keys})
    order = []
    for s in range(len(seeds)):
        for combo in _combinations(grid):
            group = group_combos.index({k: combo[k] for k in structural})
            knob = knob_combos.index({k: combo[k] for k in knob_keys})
            order.append((group, s * len(knob_combos) + knob))
    return order


def _train(config, train, valid, *, seeds, grid, steps, out, progress, pbt, devices):
    registration = families.of_config(config)
    if train is None:
        raise ValueError("`train` must be lj.Trials (or a sequence of them), got None")
    train = _as_data("train", train, registration)
    valid = _as_data("valid", valid, registration, sessions=_num_sessions(train))
    if valid is not None:
        valid = conform("valid", valid, signature(train))
    seeds = _check_seeds(seeds)
    config = adapted(registration, config, train)
    check_knobs(config)
    knob_grid, structural = _split_grid(registration, config, grid)
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 1):
        raise ValueError(f"steps must be a positive int or None, got {steps!r}")
    if pbt is not None and not isinstance(pbt, PBTConfig):
        raise ValueError(f"pbt must be a latentjax.train.PBTConfig, got {type(pbt).__name__}")
    if pbt is not None and not knob_grid:
        raise ValueError("pbt: give a `grid` of knobs for population-based training to explore")
    if pbt is not None and structural:
        raise ValueError(
            f"pbt: exploit/explore runs inside one compiled population; the grid fields "
            f"{sorted(structural)} are not knobs"
        )
    options = dict(
        seeds=seeds, grid=knob_grid, steps=steps, progress=progress, pbt=pbt, devices=devices
    )
    if not structural:
        return _train_group(registration, config, train, valid, out=out, **options)

    groups = []
    for index, combo in enumerate(_combinations(structural)):
        group_config = update_config(config, combo)
        group_out = None if out is None else os.path.join(out, f"group-{index}")
        groups.append((combo, group_config, group_out))
    order = _sweep_order(seeds, dict(grid), structural)
    if out is not None:
        _write_sweep_record(out, groups, order)
    results = [
        _train_group(registration, group_config, train, valid, out=group_out, **options)
        for _, group_config, group_out in groups
    ]
    return [results[g][m] for g, m in order]


def _write_sweep_record(out, groups, order) -> None:
    record = {
        "groups": [
            {"dir": os.path.basename(group_out), "settings": config_to_json(dict(combo))}
            for combo, _, group_out in groups
        ],
        "order": order,
    }
    path = os.path.join(out, _SWEEP_RECORD)
    if os.path.exists(path):
        with open(path) as file:
            if json.load(file) != json.loads(json.dumps(record)):
                raise ValueError(f"out: {out} holds a sweep over other groups; use another folder")
        return
    os.makedirs(out, exist_ok=True)
    with open(path + ".tmp", "w") as file:
        json.dump(record, file, indent=1)
    os.replace(path + ".tmp", path)


def fit(config, train, *, valid=None, seed=0, steps=None, out=None, progress=True) -> FitResult:
    """Fit one model of the family of `config` to `train`.

    Args:
      config: a family's `Config`; its type selects the family.
      train: training `Trials` `[trials, time, neurons]`, or a sequence of `Trials` (one per
        session; neuron counts may differ) for families that fit several sessions.
      valid: validation `Trials` (as many sessions as `train`); with them the family's
        `validation_loss` is computed after every chunk, the best parameters are kept and
        `TrainConfig.patience` stops early.
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
    """Train a population: every seed x every combination of `grid` values.

    Knobs (`latentjax.train.knob` fields) vary inside one vmapped program, sharded over
    `devices` (default: every device JAX sees, several hosts included after
    `jax.distributed.initialize()`); each combination of the other grid fields is its own
    compiled group.

    Args:
      config: as in `fit`.
      train: as in `fit`.
      valid: as in `fit`.
      seeds: one member per seed and grid combination.
      grid: `{Config field path: [values]}`, e.g. `{"train.learning_rate": [1e-3, 3e-3]}` or
        `{"latent_dim": [2, 4, 8]}`. A field the family does not have, or does not use (the
        optimiser settings of an EM family), raises.
      steps: as in `fit`.
      out: as in `fit`.
      progress: as in `fit`.
      pbt: population-based training over the grid knobs (`latentjax.train.PBTConfig`).
      devices: the devices to shard the population over; the population is padded to a
        multiple of their number.

    Returns:
      One `FitResult` per member, seeds outermost, then grid combinations in order; each
      config holds the member's (final) values and `history` their trajectory.
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


def best(results: Sequence[FitResult], *, score: str = "valid_loss") -> FitResult:
    """The member of a sweep with the lowest `score` (default the held-out loss: the
    validation negative log-likelihood per entry for EM families), failed members excluded.

    Latent-dimension selection is `best(sweep(config, train, valid=valid,
    grid={"latent_dim": [...]}))`.
    """
    results = list(results)
    if not results or not all(isinstance(r, FitResult) for r in results):
        raise ValueError("best: `results` must be a non-empty list of FitResult (from sweep)")
    scores = []
    for result in results:
        if score not in result.history:
            raise ValueError(
                f"best: the results have no {score!r} in their history (fit with `valid=` for "
                f"valid_loss); names: {sorted(result.history)}"
            )
        values = np.asarray(result.history[score], float)
        failed = bool(np.asarray(result.history.get("failed", False)))
        finite = values[np.isfinite(values)]
        scores.append(np.inf if failed or not finite.size else finite.min())
    if not np.isfinite(scores).any():
        raise ValueError(f"best: no member has a finite {score!r}")
    return results[int(np.argmin(scores))]


def infer(
    result: FitResult, trials, *, seed=0, causal: bool = False, **options
) -> Posterior | list[Posterior]:
    """The family's posterior of `trials` under a fitted model.

    Args:
      result: a `FitResult` from `fit`, `sweep` or `load_run`.
      trials: `Trials` `[trials, time, neurons]` with the neurons the model was fitted on; for
        a multi-session fit, a sequence with one `Trials` per session (or one `Trials` and
        `session=s`).
      seed: seeds sampling-based posteriors.
      causal: the latents of bin t from bins up to t only (filtering, what a real-time
        decoder knows: `lj.decode.stream` gives the same one bin at a time); families
        whose `posterior` takes `causal` (`causal_families()`), a ValueError for others.
      **options: passed to the family's `posterior`.

    Returns:
      `Posterior` with `latents` `[trials, time, latents]` and `rates` `[trials, time, neurons]`
      (a list of them, one per session, for a sequence of sessions).
    """
    if not isinstance(result, FitResult):
        raise ValueError(f"result must be a FitResult, got {type(result).__name__}")
    registration = families.of_config(result.config)
    if not isinstance(causal, bool):
        raise ValueError(f"infer: `causal` must be True or False, got {causal!r}")
    if causal:
        if not families.has_causal_posterior(registration.family):
            raise ValueError(
                f"infer: `causal=True`: the family {registration.name!r} has no causal "
                f"posterior; families with one: {', '.join(families.causal_families())}"
            )
        options["causal"] = True
    trials = _as_data("trials", trials, registration)
    trials = fitted_neurons("trials", trials, result, options.get("session"))
    key = jax.random.PRNGKey(seed)
    if isinstance(trials, tuple):
        return [
            _posterior(registration, result, session_trials, key, session=s, **options)
            for s, session_trials in enumerate(trials)
        ]
    return _posterior(registration, result, trials, key, **options)


def fitted_neurons(name: str, trials, result: FitResult, session: int | None = None):
    """`trials` (or sessions of them) checked against the data `result` was fitted on, the
    neurons in the fitted order (`latentjax.data.conform`): a ValueError naming `name` for
    other neurons, another bin size or other regions. `session`: one `Trials` of that
    session of a multi-session fit."""
    record = result.data
    if record is None:
        return trials
    heldin = getattr(families.of_config(result.config).family, "heldin_neurons", None)
    accepted = None if heldin is None else functools.partial(heldin, result.config)
    if session is not None and record is not None and "sessions" in record:
        sessions = record["sessions"]
        if not isinstance(session, int) or not 0 <= session < len(sessions):
            raise ValueError(
                f"session must be an int in [0, {len(sessions)}) (the fitted sessions), "
                f"got {session!r}"
            )
        record = sessions[session]
    return conform(name, trials, record, accepted)


def _posterior(registration, result, trials, key, **options) -> Posterior:
    posterior = registration.family.posterior(result.params, trials, result.config, key, **options)
    return dataclasses.replace(posterior, family=registration.name)


def _dummy_trials(record: dict | None):
    if record is None:
        return None
    if "sessions" in record:
        return tuple(_dummy_trials(session) for session in record["sessions"])
    num_trials, num_bins, _ = record["shape"]
    # placeholder values with some variance, so that host-code inits (PCA, factor analysis)
    # called on them to learn the parameter shapes do not meet a singular matrix
    rng = np.random.default_rng(0)
    values = (
        rng.normal(size=record["shape"])
        if record["continuous"]
        else rng.poisson(1.0, record["shape"])
    )
    return Trials(
        values.astype(np.dtype(record["dtypes"]["spikes"])),
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


def _params_like(family, member: _Member, trials):
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
    A sweep over structural fields (`sweep.json`) is read group by group.
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise ValueError(f"run_dir must be a path, got {type(run_dir).__name__}")
    sweep_path = os.path.join(run_dir, _SWEEP_RECORD)
    if os.path.exists(sweep_path):
        with open(sweep_path) as file:
            record = json.load(file)
        groups = [_load_group(os.path.join(run_dir, g["dir"])) for g in record["groups"]]
        return [groups[g][m] for g, m in record["order"]]
    results = _load_group(run_dir)
    return results[0] if len(results) == 1 else results


def _load_group(run_dir) -> list[FitResult]:
    run = RunDir(run_dir)
    config_record, data_record = run.read()
    config = config_from_json(config_record["config"])
    registration = families.of_config(config)
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

    program = _program(registration, config, valid is not None)
    params = jax.tree.map(
        lambda *likes: jax.ShapeDtypeStruct((padded, *likes[0].shape), likes[0].dtype),
        *[_params_like(registration.family, m, train) for m in members_padded],
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
    return _member_results(
        members,
        jax.tree.map(np.asarray, final),
        knobs_final,
        log,
        run.path,
        pbt,
        signature_of_record(data_record["train"]),
        run.read_population(),
    )
