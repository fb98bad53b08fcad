"""How a population runs in its compiled chunk: every member vmapped, groups of members, or
members one by one in concurrent streams.

`run_chunk` advances the members in groups of `group_size`: the groups one after another
(`lax.map` over groups, inside the one compiled program), the members of a group vmapped. A
group of every member is the plain vmapped population; groups of one run the members one by
one. With `streams` > 1 the members are split into that many parts, each advanced by its own
`run_chunk` call from its own host thread, so that the parts run side by side. The results
are the same to float32 rounding, not the speed:

- On CPU a vmapped population of a small model beats its members one by one (1.3-1.5x for
  the 32-unit RNN of benchmarks/population.md): vmapping turns many small operations into
  fewer, larger ones. A large model's matrix products already use every core, and vmapping
  them costs more than it saves: 8 members of LFADS `nlb_mc_maze` (batch 32, 100 trials x
  140 bins x 182 neurons) ran at 0.83x the speed of one after another.
- A large model's step does not keep two cores busy: its recurrences are chains of small
  operations, and XLA:CPU runs the independent loops of one program one after another (the
  four encoder loops of LFADS, seen in a trace). Two programs called from two host threads
  do run side by side. So on a CPU with several cores, "auto" runs a large model's members
  one by one in one stream per core (`streams`; LFADS `nlb_mc_maze`, batch 32, 2 cores:
  `scripts/bench_lfads.py` measures it against one `lj.fit` after another).
- On GPU and TPU vmapping fills the accelerator: always vmapped.

`choose` picks the layout from a cost rule on CPU: the matrix-product flops of one member's
training step (`member_step_flops`), above `SEQUENTIAL_FLOPS` one by one (in one stream per
core, `host_cores`), below vmapped.
XLA's `cost_analysis()` cannot size recurrent models: it counts a loop body once (a 10-step
`lax.scan` of a matrix product reports the flops of one product), so the flops are counted
on the step's jaxpr, each `scan` body times its length.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

__all__ = [
    "MODES",
    "SEQUENTIAL_FLOPS",
    "Grouping",
    "check_mode",
    "choose",
    "host_cores",
    "member_step_flops",
]

MODES = ("auto", "vmapped", "sequential", "concurrent")
"""The named settings of `TrainConfig.population_mode` (or a positive int: the group size)."""

SEQUENTIAL_FLOPS = 3e8
"""Matrix-product flops of one member's step above which, on CPU, members run one by one.

Calibrated on a 2-core AMD EPYC (scripts/bench_population.py, benchmarks/population.md): the
32-unit RNN (minibatches of 16, 50 bins, 30 neurons) takes 9.8e6 flops per step and gains
1.3-1.5x from vmapping; LFADS `nlb_mc_maze` at batch 32 (140 bins, 182 neurons) takes 9.1e9
and lost in issue #19's measurement (8 members vmapped at 0.83x of one by one). Our own runs
of it, at load average 8 on 2 cores, were too noisy to settle it (4 members: vmapped 1.65,
sequential 0.96 s per member-step; 8 members: 0.94 and 1.23). The threshold is the geometric
mean of the two workloads; none between them has been measured yet (LFADS `tiny` on 100-bin
Lorenz: 4.3e7; LFADS `lorenz`: 4.4e9)."""


class Grouping(NamedTuple):
    """The layout of a population in `run_chunk`.

    mode: "vmapped" (one group of every member), "sequential" (groups of one), "groups" or
    "concurrent" (groups of one in several streams); group_size: members per group; reason:
    why; member_step_flops: the cost the rule read (None when it was not needed); platform:
    the devices' platform ("cpu", "gpu", "tpu"); streams: parts of the population advanced
    side by side, each by its own call from its own host thread (1: one call)."""

    mode: str
    group_size: int
    reason: str
    member_step_flops: float | None
    platform: str
    streams: int = 1

    def record(self) -> dict:
        """A JSON-ready form (what `population.json` in the run folder holds)."""
        return {**self._asdict(), "sequential_flops": SEQUENTIAL_FLOPS}


def check_mode(value: Any, where: str = "TrainConfig") -> None:
    """Raise ValueError unless `value` is one of `MODES` or a positive int."""
    if isinstance(value, str) and value in MODES:
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return
    raise ValueError(
        f"{where}: `population_mode` must be one of {MODES} or a positive int (members per "
        f"group), got {value!r}"
    )


def host_cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _sub_jaxprs(params: dict) -> list:
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jax.extend.core.Jaxpr):
                found.append(item)
    return found


def _matmul_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            contracted = math.prod(eqn.invars[0].aval.shape[d] for d in contract)
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted
        inner = [_matmul_flops(sub) for sub in _sub_jaxprs(eqn.params)]
        if not inner:
            continue
        if eqn.primitive.name == "cond":
            total += max(inner)  # one branch runs
        else:  # a scan's body runs `length` times; a while loop's is counted once
            total += sum(inner) * eqn.params.get("length", 1)
    return total


def member_step_flops(step: Callable, *args) -> float:
    """Matrix-product flops of `step(*args)` (one member's training step, traced, not run):
    `2 * prod(output shape) * prod(contracted sizes)` per `dot_general`, scan bodies times
    their length, the costlier branch of a `cond`."""
    return _matmul_flops(jax.make_jaxpr(step)(*args).jaxpr)


def choose(mode: str | int, size: int, devices: list, flops: Callable[[], float],
           cores: int | None = None) -> Grouping:  # fmt: skip
    """The layout of a population of `size` members on `devices` for the setting `mode`.

    One member runs unbatched. "auto": vmapped on GPU/TPU or sharded over several devices; on
    one CPU one by one when `flops()` (one member's step, `member_step_flops`) is above
    `SEQUENTIAL_FLOPS`, in `min(cores, size)` concurrent streams when `cores` (default
    `host_cores()`) is above one, and vmapped below. "vmapped", "sequential", "concurrent"
    (one stream per core) or an int group size are taken as given, except that a population
    sharded over several devices is always one vmapped program.

    Examples:
      >>> cpu = jax.devices("cpu")[:1]
      >>> choose("auto", 8, cpu, lambda: 3e10, cores=2)[:2], choose(3, 8, cpu, float).group_size
      (('concurrent', 1), 3)
    """
    check_mode(mode, "choose")
    platform = devices[0].platform
    cores = host_cores() if cores is None else cores
    streams = min(cores, size)
    if len(devices) > 1:
        return Grouping("vmapped", size, f"sharded over {len(devices)} devices", None, platform)
    if size == 1:
        return Grouping("sequential", 1, "one member (unbatched)", None, platform)
    if mode == "vmapped":
        return Grouping("vmapped", size, "population_mode='vmapped'", None, platform)
    if mode == "sequential":
        return Grouping("sequential", 1, "population_mode='sequential'", None, platform)
    if mode == "concurrent":
        reason = f"population_mode='concurrent': {streams} streams ({cores} cores)"
        return Grouping("concurrent", 1, reason, None, platform, streams)
    if isinstance(mode, int):
        group = min(mode, size)
        named = "vmapped" if group == size else "sequential" if group == 1 else "groups"
        return Grouping(named, group, f"population_mode={mode}", None, platform)
    if platform != "cpu":
        return Grouping("vmapped", size, f"auto: {platform}", None, platform)
    cost = float(flops())
    if cost > SEQUENTIAL_FLOPS:
        reason = f"auto: {cost:.3g} flops per member step > {SEQUENTIAL_FLOPS:.3g} on CPU"
        if streams > 1:
            reason += f", {streams} streams ({cores} cores)"
            return Grouping("concurrent", 1, reason, cost, platform, streams)
        return Grouping("sequential", 1, reason, cost, platform)
    reason = f"auto: {cost:.3g} flops per member step <= {SEQUENTIAL_FLOPS:.3g} on CPU"
    return Grouping("vmapped", size, reason, cost, platform)
