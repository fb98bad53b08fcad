"""Solving the latent ODE of one trial on its own (irregular) time grid with diffrax.

Time: a trial's clock starts at its anchor time `t_a` (its first or middle observed time, see
`encoder`); the field is solved in ODE time `s = time_scale * (t - t_a)`, from the state at
`s = 0`: forward for `s > 0` and backward for `s < 0` (`integrate_both_ways`).

Padding and unobserved bins: `Trials` sets their times to 0, which would break the increasing
grid a solver saves on. `fill_times` gives each such bin the time of the last observed bin
before it (the first observed time for leading ones), so the grid is non-decreasing, the
solve ends at the last observation, and unobserved bins cost no solver steps; the likelihood
then ignores them through `mask`.

Failures: every solve runs with diffrax's `throw=False`; `integrate` returns whether it failed
and the ODE time it reached, and the family either raises `SolverError` (naming the trial, the
time and `max_steps`) or masks the failing trials.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from latentjax.models.node.config import Config

__all__ = [
    "Solution",
    "SolverError",
    "fill_times",
    "integrate",
    "integrate_both_ways",
    "integrate_segments",
    "raise_on_failure",
]


class SolverError(RuntimeError):
    """An ODE solve failed (too many steps, or a step size that collapsed)."""


class Solution(NamedTuple):
    """states: `[time, latent_dim]` at the requested times (zeros if failed); failed: bool;
    max_steps_reached: bool (the cause of a failure); reached: ODE time the solver reached;
    end: ODE time it was asked to reach (of the failed direction, for a two-way solve)."""

    states: jax.Array
    failed: jax.Array
    max_steps_reached: jax.Array
    reached: jax.Array
    end: jax.Array


def fill_times(times, mask):
    """Grid of one trial: `times` `[time]` with unobserved bins given the last observed time.

    Returns `(filled [time], t_first)`; `filled` is non-decreasing where `times` increases over
    observed bins. A trial with no observed bin gets zeros.
    """
    first = jnp.argmax(mask)
    t_first = jnp.where(mask.any(), times[first], 0.0)
    filled = jax.lax.cummax(jnp.where(mask, times, -jnp.inf))
    return jnp.where(jnp.isfinite(filled), filled, t_first), t_first


def _solver(config: Config):
    return {
        "tsit5": diffrax.Tsit5,
        "dopri5": diffrax.Dopri5,
        "kvaerno5": diffrax.Kvaerno5,
        "euler": diffrax.Euler,
        "heun": diffrax.Heun,
    }[config.solver]()


def _controller(config: Config):
    if config.step_size is not None:
        return diffrax.ConstantStepSize()
    return diffrax.PIDController(rtol=config.rtol, atol=config.atol)


def _adjoint(config: Config):
    if config.adjoint == "forward":
        return diffrax.ForwardMode()
    if config.adjoint == "backsolve":
        return diffrax.BacksolveAdjoint(
            solver=_solver(config), stepsize_controller=_controller(config)
        )
    return diffrax.RecursiveCheckpointAdjoint()


def integrate(field: Callable, field_params, initial_state, ts, config: Config) -> Solution:
    """Solve `dz/ds = field(field_params, z)` from `z(0) = initial_state` and save at `ts`.

    Args:
      field: pure `(params, state [K]) -> [K]`; its parameters travel as diffrax `args`, so
        both adjoints differentiate them.
      field_params: the field's parameter pytree.
      initial_state: `[K]` state at ODE time 0.
      ts: `[time]` ODE times, monotone away from 0 (all >= 0 non-decreasing for a forward
        solve, all <= 0 non-increasing for a backward one); the solve ends at `ts[-1]`.
      config: solver, step size, tolerances, `max_steps`, adjoint.

    The solve runs in normalised time `u = s / ts[-1]` over `[0, 1]`, `dz/du = ts[-1] *
    field(z)`, with the saved times clipped to `[0, 1]`: under jit XLA may compute `ts[-1]`
    a rounding error apart from the same entry of `ts` (as a separate fusion), and a saved
    time past the end of its solve would fail diffrax. A zero-length solve (`ts[-1] == 0`)
    has a zero field.
    """
    span = ts[-1]
    safe_span = jnp.where(span == 0, 1.0, span)
    dt0 = None
    if config.step_size is not None:
        dt0 = jnp.where(span == 0, 1.0, config.step_size / jnp.abs(safe_span))
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda u, z, args: args[1] * field(args[0], z)),
        _solver(config),
        t0=jnp.zeros_like(span),
        t1=jnp.ones_like(span),
        dt0=dt0,
        y0=initial_state,
        args=(field_params, span),
        saveat=diffrax.SaveAt(ts=jnp.clip(ts / safe_span, 0.0, 1.0), t1=True),
        stepsize_controller=_controller(config),
        adjoint=_adjoint(config),
        max_steps=config.max_steps,
        throw=False,
    )
    failed = solution.result != diffrax.RESULTS.successful
    states = jnp.where(failed, 0.0, solution.ys[:-1])
    return Solution(
        states=states,
        failed=failed,
        max_steps_reached=solution.result == diffrax.RESULTS.max_steps_reached,
        reached=solution.ts[-1] * span,
        end=span,
    )


def integrate_both_ways(field: Callable, field_params, state, ts, config: Config) -> Solution:
    """Solve from `z(0) = state` to every time of the non-decreasing grid `ts` `[time]`, which
    may start before 0: a forward solve for `ts >= 0` and a backward one for `ts < 0` (a
    zero-length solve when one side is empty). Failure fields describe the failed direction
    (the forward one if both failed)."""
    forward = integrate(field, field_params, state, jnp.maximum(ts, 0.0), config)
    backward = integrate(field, field_params, state, jnp.minimum(ts, 0.0)[::-1], config)
    states = jnp.where((ts >= 0)[:, None], forward.states, backward.states[::-1])
    failed = forward.failed | backward.failed
    return Solution(
        states=jnp.where(failed, 0.0, states),
        failed=failed,
        **{
            name: jnp.where(forward.failed, getattr(forward, name), getattr(backward, name))
            for name in ("max_steps_reached", "reached", "end")
        },
    )


def integrate_segments(field: Callable, field_params, states, anchors, active, ts,
                       config: Config) -> tuple[Solution, jax.Array]:  # fmt: skip
    """Multiple shooting: solve from several anchor states and read each time from the solve
    of its nearest anchor.

    Args:
      field: as `integrate`.
      field_params: as `integrate`.
      config: as `integrate`.
      states: `[segments, K]` states at the anchors.
      anchors: `[segments]` non-decreasing ODE times of the anchors; `active` `[segments]`
        flags those in use (inactive ones, at the end, repeat the last active anchor).
      ts: `[time]` non-decreasing ODE times to save at.

    Returns:
      `(solution, ends)`: `solution.states` `[time, K]`, each time from the nearest active
      anchor (ties: the earlier one), solved both ways from it; failure fields as
      `integrate_both_ways` (`reached` and `end` in the frame of `ts`, of the first failed
      segment); `ends` `[segments, K]`: each segment's solve carried on to the next anchor
      time (its own state where there is no next active anchor), the continuity targets of
      multiple shooting.
    """
    distance = jnp.where(active[:, None], jnp.abs(ts[None] - anchors[:, None]), jnp.inf)
    owner = jnp.argmin(distance, axis=0)  # [time]
    owned = owner[None] == jnp.arange(anchors.shape[0])[:, None]  # [segments, time]
    low = jnp.min(jnp.where(owned, ts[None], jnp.inf), axis=1)
    high = jnp.max(jnp.where(owned, ts[None], -jnp.inf), axis=1)
    low, high = jnp.where(owned.any(1), low, anchors), jnp.where(owned.any(1), high, anchors)
    following = jnp.append(active[1:], False)
    next_anchor = jnp.where(following, jnp.append(anchors[1:], 0.0), anchors)
    # max: `high <= next_anchor` holds exactly, but rounding must not break the grid's order.
    next_anchor = jnp.maximum(next_anchor, high)
    grids = jnp.concatenate([jnp.clip(ts[None], low[:, None], high[:, None]),
                             next_anchor[:, None]], axis=1) - anchors[:, None]  # fmt: skip

    def solve(state, grid):
        return integrate_both_ways(field, field_params, state, grid, config)

    solutions = jax.vmap(solve)(states, grids)
    failed = solutions.failed & active
    first_failed = jnp.argmax(failed)
    path = solutions.states[owner, jnp.arange(ts.shape[0])]
    any_failed = failed.any()
    solution = Solution(
        states=jnp.where(any_failed, 0.0, path),
        failed=any_failed,
        max_steps_reached=solutions.max_steps_reached[first_failed],
        reached=anchors[first_failed] + solutions.reached[first_failed],
        end=anchors[first_failed] + solutions.end[first_failed],
    )
    return solution, jnp.where(following[:, None], solutions.states[:, -1], states)


def raise_on_failure(failed, reached, end, max_steps_reached, *, max_steps: int, solver: str,
                     where: str) -> None:  # fmt: skip
    """Raise `SolverError` for the first failed trial (host arrays `[..., trials]`; times in
    seconds of `Trials.times`); `where` names the trials ("trial", "minibatch trial")."""
    failed = np.asarray(failed)
    if not failed.any():
        return
    index = tuple(np.argwhere(failed)[0])
    cause = (
        f"max_steps={max_steps} solver steps were not enough"
        if np.asarray(max_steps_reached)[index]
        else "the step size collapsed or the implicit solver did not converge"
    )
    raise SolverError(
        f"node: the ODE solve of {where} {index[-1]} failed at t = "
        f"{float(np.asarray(reached)[index]):.6g} s (its last time is "
        f"{float(np.asarray(end)[index]):.6g} s): {cause} (solver={solver!r}). Raise "
        "Config.max_steps, use solver='kvaerno5' for a stiff field, or pass throw=False to "
        "mask failing trials."
    )
