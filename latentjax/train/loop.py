"""The engine's loop: compiled chunks of steps for a whole population, host work in between.

One compiled program, `run_chunk`, advances every member of a population by `chunk_size`
steps (`lax.scan` over steps inside `vmap` over members, or over groups of members run one
group after another, or in parts run side by side from host threads: `grouping`), then
computes each member's validation loss and keeps its best parameters. The program depends
only on the static part of the config (knobs travel as traced arguments) and on array
shapes, so it is compiled once per shape and reused by later chunks and later fits. Between
chunks the host logs, shows progress, early-stops, runs population-based training and writes
checkpoints.

A single fit is a population of one: the same program, the same checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from latentjax.train.checkpoint import Checkpoints
from latentjax.train.config import with_knobs
from latentjax.train.fitter import Fitter
from latentjax.train.gradient import tree_where
from latentjax.train.grouping import Grouping, choose, member_step_flops
from latentjax.train.pbt import PBTConfig, exploit_explore, take_members
from latentjax.train.population import Population
from latentjax.train.run import MetricsLog, RunDir

__all__ = [
    "LoopState",
    "NonFiniteError",
    "Program",
    "TrainOutcome",
    "run_chunk",
    "train_population",
]


class NonFiniteError(RuntimeError):
    """Training stopped after too many consecutive non-finite steps (loss, gradient or
    state); the last checkpoint written before is intact."""


@dataclasses.dataclass(frozen=True)
class Program:
    """Everything static about a training run: the compile-time key of `run_chunk`.

    Attributes:
      make_fitter: `config -> Fitter`, called inside compiled code with knobs as tracers;
        must be hashable and equal across calls for the same family (a module-level
        function, or `gradient.FamilyGradientFitter`).
      config: the config with its knobs at their defaults (`config.static_config`).
      validation_loss: `(params, trials, key, config, step) -> (scalar, aux)`, or None.
      chunk_size: steps per compiled chunk.
      max_nonfinite: consecutive non-finite steps after which a member stops; a
        non-finite step on which the Fitter's info reports a failure (an entry named
        `*_failures` above 0, e.g. node's `solver_failures`: the fraction of trials whose ODE
        solve failed) stops it at once.
    """

    make_fitter: Callable[[Any], Fitter]
    config: Any
    validation_loss: Callable | None = None
    chunk_size: int = 100
    max_nonfinite: int = 20


class LoopState(NamedTuple):
    """One member's training state (every leaf gains a leading `[members]` axis).

    fitter_state: the Fitter's state (`.params` holds the parameters); key: the member's
    base PRNG key (step `t` uses `fold_in(key, t)`); step: steps taken; consecutive_nonfinite
    and nonfinite_steps: non-finite counters; best_params, best_valid, since_best: early
    stopping on the validation loss (`best_params` is None without validation data).
    """

    fitter_state: Any
    key: jax.Array
    step: jax.Array
    consecutive_nonfinite: jax.Array
    nonfinite_steps: jax.Array
    best_params: Any
    best_valid: jax.Array
    since_best: jax.Array


def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _init_member(program: Program, params, knobs, key, train) -> LoopState:
    config = with_knobs(program.config, knobs, validate=False)
    fitter_state = program.make_fitter(config).init(params, train)
    if not hasattr(fitter_state, "params"):
        raise ValueError(
            f"Fitter: the state returned by init must have a `params` field, got "
            f"{type(fitter_state).__name__}"
        )
    zero = jnp.zeros((), jnp.int32)
    state = LoopState(
        fitter_state=fitter_state,
        key=key,
        step=zero,
        consecutive_nonfinite=zero,
        nonfinite_steps=zero,
        best_params=None if program.validation_loss is None else params,
        best_valid=jnp.asarray(jnp.inf, jnp.float32),
        since_best=zero,
    )
    # weakly typed leaves (Python scalars in a Fitter's init) would come back strongly typed
    # from the first chunk and force a second compilation
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.result_type(leaf)), state)


@functools.partial(jax.jit, static_argnums=0)
def init_population(program: Program, params, knobs, keys, train) -> LoopState:
    """The initial `LoopState` of every member from `params`, `knobs` and `keys` (each with a
    leading `[members]` axis) and the training data."""
    member = functools.partial(_init_member, program)
    return jax.vmap(member, in_axes=(0, 0, 0, None))(params, knobs, keys, train)


def _validation_key(key, step):
    return jax.random.fold_in(jax.random.fold_in(key, 0x7FFFFFFF), step)


def _chunk_member(program: Program, state: LoopState, knobs, train, valid, stop_step):
    config = with_knobs(program.config, knobs, validate=False)
    fitter = program.make_fitter(config)

    def one_step(state: LoopState, _):
        active = (state.step < stop_step) & (state.consecutive_nonfinite < program.max_nonfinite)
        key = jax.random.fold_in(state.key, state.step)
        new_fitter_state, info = fitter.step(state.fitter_state, train, key)
        state_finite = _all_finite(new_fitter_state)
        nonfinite = ~jnp.isfinite(info["loss"]) | ~state_finite | (info.get("skipped", 0) > 0)
        scalars = {k: jnp.asarray(v, jnp.float32) for k, v in info.items() if jnp.ndim(v) == 0}
        scalars.pop("skipped", None)
        reported = functools.reduce(
            jnp.logical_or,
            [value > 0 for name, value in scalars.items() if name.endswith("_failures")],
            jnp.asarray(False),
        )
        fatal = nonfinite & reported  # the family says why the step failed: stop at once
        keep_new = active & state_finite & ~fatal
        fitter_state = tree_where(keep_new, new_fitter_state, state.fitter_state)
        counted = active & nonfinite
        consecutive = jnp.where(
            fatal, program.max_nonfinite, jnp.where(nonfinite, state.consecutive_nonfinite + 1, 0)
        )
        state = state._replace(
            fitter_state=fitter_state,
            step=state.step + active.astype(jnp.int32),
            consecutive_nonfinite=jnp.where(active, consecutive, state.consecutive_nonfinite),
            nonfinite_steps=state.nonfinite_steps + counted.astype(jnp.int32),
        )
        return state, (scalars, active & ~nonfinite, counted, active & fatal)

    steps_before = state.nonfinite_steps
    state, (infos, good, counted, fatal) = jax.lax.scan(
        one_step, state, None, length=program.chunk_size
    )

    def mean_over(steps, values):
        return jnp.where(steps.any(), jnp.where(steps, values, 0.0).sum() / steps.sum(), jnp.nan)

    # a family's failure counters (`*_failures`) count on failed steps too; the rest are means
    # over the steps that were applied
    summary = {
        name: mean_over(good | counted if name.endswith("_failures") else good, values)
        for name, values in infos.items()
    }
    summary["nonfinite_steps"] = state.nonfinite_steps - steps_before
    summary["consecutive_nonfinite"] = state.consecutive_nonfinite
    summary["reported_failure"] = fatal.any()
    # the counters of the step that stopped the member (there is at most one)
    summary["failure_counters"] = {
        name: jnp.where(fatal, values, 0.0).sum()
        for name, values in infos.items()
        if name.endswith("_failures")
    }

    if program.validation_loss is not None:
        params = state.fitter_state.params
        valid_loss, valid_aux = program.validation_loss(
            params, valid, _validation_key(state.key, state.step), config, state.step
        )
        improved = valid_loss < state.best_valid
        state = state._replace(
            best_params=tree_where(improved, params, state.best_params),
            best_valid=jnp.where(improved, valid_loss, state.best_valid),
            since_best=jnp.where(improved, 0, state.since_best + 1),
        )
        summary["valid_loss"] = valid_loss
        summary["since_best"] = state.since_best
        for name, value in valid_aux.items():
            if jnp.ndim(value) == 0:
                summary["valid_" + name] = jnp.asarray(value, jnp.float32)
    final = state.fitter_state.params if program.validation_loss is None else state.best_params
    summary["params_finite"] = _all_finite(final)
    summary["skipped_steps"] = state.nonfinite_steps
    return state, summary


@functools.partial(jax.jit, static_argnums=(0, 6))
def run_chunk(program: Program, state: LoopState, knobs, train, valid, stop_step, group_size=0):
    """Advance every member by `program.chunk_size` steps (members stop at `stop_step` or
    after `program.max_nonfinite` consecutive non-finite steps), then validate.

    `group_size` members are vmapped at a time, the groups one after another (`lax.map`; a
    last, smaller group is vmapped on its own); 0, or at least the population, vmaps every
    member (`grouping`). One member, or groups of one, run unbatched, one after another.

    Returns the new state and a summary of `[members]` arrays: the mean of each scalar of
    the Fitter's `info` over the chunk's finite steps (`*_failures` counters: over its failed
    steps too), `nonfinite_steps`, `consecutive_nonfinite`, `reported_failure` (a failure the
    Fitter reported stopped the member in this chunk) with `failure_counters` (the
    `*_failures` of that step), and with validation data
    `valid_loss` and `since_best`.
    """

    def member(state, knobs):
        return _chunk_member(program, state, knobs, train, valid, stop_step)

    members = len(state.key)
    if members == 1 or group_size == 1:  # unbatched: on CPU a vmap of size one costs ~15%
        return jax.lax.map(lambda args: member(*args), (state, knobs))
    if group_size == 0 or group_size >= members:
        return jax.vmap(member)(state, knobs)
    return jax.lax.map(lambda args: member(*args), (state, knobs), batch_size=group_size)


@functools.partial(jax.jit, static_argnums=1)
def _split_members(tree, sizes: tuple[int, ...]) -> tuple:
    """A tree of `[members, ...]` leaves -> one tree per part, of `sizes` members each."""
    bounds = np.cumsum((0, *sizes))
    return tuple(
        jax.tree.map(lambda x, start=start, stop=stop: x[start:stop], tree)
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    )


@jax.jit
def _join_members(parts: list) -> Any:
    return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *parts)


def _advance(program: Program, state: LoopState, knobs, train, valid, stop_step,
             grouping: Grouping, pool: ThreadPoolExecutor | None):  # fmt: skip
    """`run_chunk` of the whole population, or of `grouping.streams` parts side by side,
    each called and waited for by a thread of `pool` (XLA:CPU runs the independent loops of
    one program one after another, but two programs from two threads at once)."""
    if pool is None:
        return run_chunk(program, state, knobs, train, valid, stop_step, grouping.group_size)
    members = np.arange(len(state.key))
    sizes = tuple(len(part) for part in np.array_split(members, grouping.streams))

    def advance(part):
        state, knobs = part
        result = run_chunk(program, state, knobs, train, valid, stop_step, grouping.group_size)
        return jax.block_until_ready(result)

    return _join_members(list(pool.map(advance, _split_members((state, knobs), sizes))))


class TrainOutcome(NamedTuple):
    """params: final (or, with validation data, best) parameters, host arrays with a leading
    `[members]` axis; knobs: final knob values `{path: [members]}`; log: the metrics lines
    (each says which members have `failed`, stopped by failed steps, and their `failure`);
    grouping: how the members ran (`grouping.Grouping`)."""

    params: Any
    knobs: dict
    log: list
    grouping: Grouping


_NOT_LOGGED = (
    "consecutive_nonfinite",
    "reported_failure",
    "failure_counters",
    "params_finite",
    "skipped_steps",
)


def _failed_members(summary: dict, step: int, ending: bool, max_nonfinite: int) -> np.ndarray:
    """`[members]` bool: stopped by failed steps, or (at the end of training) with most of
    their steps skipped or non-finite final parameters."""
    failed = summary["consecutive_nonfinite"] >= max_nonfinite
    if ending:
        mostly_skipped = 2 * np.asarray(summary["skipped_steps"]) > step
        failed = failed | mostly_skipped | ~np.asarray(summary["params_finite"], bool)
    return failed


def _failure_reason(summary: dict, member: int, max_nonfinite: int, step: int) -> str:
    """Why a member failed: a failure the family reported on a non-finite step (its
    `*_failures` counters, e.g. node's `solver_failures`), its consecutive non-finite steps
    (with any counters of the chunk), most of its steps skipped, or non-finite parameters."""

    def counters(values: dict) -> str:
        return ", ".join(
            f"{name}={float(value[member]):.3g}"
            for name, value in values.items()
            if name.endswith("_failures") and np.nan_to_num(value[member]) > 0
        )

    if summary["reported_failure"][member]:
        return (
            f"the family reported a failure ({counters(summary['failure_counters'])}) on a "
            "step with a non-finite loss"
        )
    chunk = counters(summary)
    if summary["consecutive_nonfinite"][member] >= max_nonfinite:
        reason = f"{max_nonfinite} consecutive steps with a non-finite loss, gradient or state"
    elif not summary["params_finite"][member]:
        reason = "the final parameters are not finite (non-finite initial parameters?)"
    else:
        skipped = int(summary["skipped_steps"][member])
        reason = (
            f"{skipped} of {step} steps had a non-finite loss, gradient or state and were "
            "skipped: the model is mostly untrained"
        )
    return reason + (f" ({chunk})" if chunk else "")


def _line(step: int, summary: dict, knobs: dict, seconds: float, steps_done: int) -> dict:
    line = {
        "step": step,
        "time": time.time(),
        "steps_per_second": steps_done / seconds if seconds > 0 else math.nan,
    }
    for name, values in summary.items():
        if name in _NOT_LOGGED:
            continue
        line[name] = [_json_number(v) for v in np.asarray(values).tolist()]
    line["knobs"] = {path: np.asarray(v).tolist() for path, v in knobs.items()}
    return line


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _member_step(program: Program, fitter_state, knobs, train, key):
    config = with_knobs(program.config, knobs, validate=False)
    return program.make_fitter(config).step(fitter_state, train, key)


def _abstract(tree, leading: int) -> tuple:
    """(treedef, shapes and dtypes of the leaves without their first `leading` axes): a
    hashable description of `tree`."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(jax.ShapeDtypeStruct(x.shape[leading:], x.dtype) for x in leaves)


@functools.lru_cache(maxsize=64)
def _step_flops(program: Program, member: tuple, train: tuple) -> float:
    """`member_step_flops` of one member's step, cached by program and shapes (tracing a
    large model's step takes a second)."""
    fitter_state, knobs, key = jax.tree.unflatten(*member)
    step = functools.partial(_member_step, program)
    return member_step_flops(step, fitter_state, knobs, jax.tree.unflatten(*train), key)


def _grouping(program: Program, mode, population: Population, state, knobs, train) -> Grouping:
    """`grouping.choose` for this population; the cost rule traces one member's step."""

    def flops():
        member = _abstract((state.fitter_state, knobs, state.key), 1)
        return _step_flops(program, member, _abstract(train, 0))

    return choose(mode, population.padded_size, population.devices, flops)


def _restore(checkpoints: Checkpoints, step: int, state, knobs, padded_size: int, run_hash: str):
    record = checkpoints.record(step)
    if record["members"] != padded_size:
        raise ValueError(
            f"out: the checkpoint holds {record['members']} members (the population padded "
            f"to the device count when it was written); here it pads to {padded_size}; "
            "resume with the same number of devices"
        )
    if record["run_hash"] != run_hash:
        raise ValueError(
            f"out: the checkpoint in {checkpoints.directory} belongs to another config "
            "(hash mismatch); use another folder to start a new run"
        )
    restored, record = checkpoints.restore(step, {"loop": state, "knobs": knobs})
    return restored["loop"], restored["knobs"], record


def train_population(
    program: Program,
    params: Any,
    knobs: dict[str, np.ndarray],
    keys: np.ndarray,
    train: Any,
    valid: Any = None,
    *,
    steps: int,
    checkpoint_every: int,
    patience: int | None = None,
    run: RunDir | None = None,
    run_hash: str = "",
    progress: bool = True,
    pbt: PBTConfig | None = None,
    explored: tuple[str, ...] = (),
    devices=None,
    population_mode: str | int = "auto",
) -> TrainOutcome:
    """Train a population to `steps` steps (or until early stopping) and return it.

    Args:
      program: the static description of the compiled step (`Program`).
      params: initial parameters, host arrays with a leading `[members]` axis.
      knobs: `{knob path: [members] float32}`, every knob of the config.
      keys: `[members, 2]` uint32 PRNG keys of the loop.
      train: training `Trials`.
      valid: validation `Trials`, or None (no validation, no early stopping).
      steps: total steps per member.
      checkpoint_every: steps between checkpoints (with `run`).
      patience: validations without improvement before stopping (all members must be out
        of patience); None never stops early.
      run: the run folder; an existing checkpoint there is resumed.
      run_hash: the config hash stored with each checkpoint and checked on resume.
      progress: show a tqdm progress bar.
      pbt: exploit/explore between chunks over the knobs in `explored`; None switches it off.
      devices: devices to shard the population over (default: all).
      population_mode: "auto", "vmapped", "sequential" or a group size: how the members
        run in each chunk (`grouping.choose`; on several devices always one vmapped,
        sharded program); the choice is written to `population.json` in the run folder.

    Raises:
      NonFiniteError: every member hit `program.max_nonfinite` consecutive non-finite steps.
    """
    size = len(keys)
    population = Population(size, devices)
    train_device = population.replicate(train)
    valid_device = None if valid is None else population.replicate(valid)
    knobs_device = population.shard({k: np.asarray(v, np.float32) for k, v in knobs.items()})
    state = init_population(
        program, population.shard(params), knobs_device, population.shard(keys), train_device
    )

    grouping = _grouping(program, population_mode, population, state, knobs_device, train_device)
    step, finished = 0, False
    log = MetricsLog(None if run is None else run.metrics_path)
    checkpoints = None if run is None else Checkpoints(run.checkpoint_dir)
    if checkpoints is not None and (latest := checkpoints.latest_step()) is not None:
        try:
            state, knobs_device, record = _restore(
                checkpoints, latest, state, knobs_device, population.padded_size, run_hash
            )
        except BaseException:
            checkpoints.close()
            raise
        if latest > steps:
            checkpoints.close()
            raise ValueError(
                f"steps: the run in {run.path} has trained {latest} steps, more than the "
                f"{steps} asked for; load that model as it is (lj.load_run, or any "
                f"--steps >= {latest}), or write a run of {steps} steps to another folder"
            )
        step, finished = latest, record["finished"] and steps <= record["steps"]
        log = MetricsLog.resume(run.metrics_path, latest)
    if run is not None:
        run.write_population(grouping.record())

    failed = np.zeros(size, bool)
    # why each member failed, kept from the resumed metrics
    resumed = log.lines[-1] if log.lines else {}
    reasons: list[str | None] = list(resumed.get("failure", [None] * size))
    bar = tqdm(total=steps, initial=min(step, steps), disable=not progress, unit="step")
    pool = ThreadPoolExecutor(grouping.streams) if grouping.streams > 1 else None
    chunk_index = step // program.chunk_size
    last_checkpoint = None
    try:
        while step < steps and not finished:
            started = time.perf_counter()
            state, summary = _advance(
                program,
                state,
                knobs_device,
                train_device,
                valid_device,
                jnp.int32(steps),
                grouping,
                pool,
            )
            summary = population.to_host(summary)
            seconds = time.perf_counter() - started
            previous, step = step, min(step + program.chunk_size, steps)
            chunk_index += 1
            knobs_host = population.to_host(knobs_device)
            line = _line(step, summary, knobs_host, seconds, step - previous)

            if patience is not None and "since_best" in summary:
                finished = bool((summary["since_best"] >= patience).all())
            finished = finished or step >= steps
            failed = _failed_members(summary, step, finished, program.max_nonfinite)
            for member in np.flatnonzero(failed):
                if reasons[member] is None:  # the chunk where it failed says why
                    reasons[member] = _failure_reason(summary, member, program.max_nonfinite, step)
            line["failed"], line["failure"] = failed.tolist(), list(reasons)
            if failed.all() and not finished:  # no checkpoint of the failed state
                log.append(line)
                break

            if pbt is not None and not finished and chunk_index % pbt.interval == 0:
                scores = summary.get("valid_loss", summary["loss"])
                sources, new_knobs = exploit_explore(
                    scores, knobs_host, explored, pbt, generation=step
                )
                line["pbt_source"] = sources.tolist()
                state = take_members(state, population.shard(np.asarray(sources, np.int32)))
                knobs_host = new_knobs
                knobs_device = population.shard(
                    {k: np.asarray(v, np.float32) for k, v in new_knobs.items()}
                )
            log.append(line)
            bar.update(step - previous)
            losses = np.asarray(summary["loss"], float)
            if np.isfinite(losses).any():
                bar.set_postfix(loss=f"{np.nanmin(losses):.4g}")

            if checkpoints is not None and (
                finished or step // checkpoint_every > previous // checkpoint_every
            ):
                record = {
                    "run_hash": run_hash,
                    "steps": steps,
                    "finished": finished,
                    "members": population.padded_size,
                }
                checkpoints.save(step, {"loop": state, "knobs": knobs_device}, record)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
        if checkpoints is not None:
            checkpoints.wait()
            last_checkpoint = checkpoints.latest_step()
            checkpoints.close()
    final_line = log.lines[-1] if log.lines else {}
    if final_line.get("failed") and all(final_line["failed"]):
        where = (
            ""
            if last_checkpoint is None
            else f"; the last checkpoint (step {last_checkpoint}) is intact"
        )
        why = "; ".join(dict.fromkeys(r for r in final_line["failure"] if r))
        raise NonFiniteError(
            f"training failed at step {final_line['step']}: {why} (failed updates are "
            f"skipped){where}. Lower the learning rate, clip gradients "
            "(TrainConfig.grad_clip), check the data, or see the family's "
            "documentation of the failure it reports."
        )

    final = population.to_host(state.fitter_state.params if valid is None else state.best_params)
    return TrainOutcome(final, population.to_host(knobs_device), log.lines, grouping)
