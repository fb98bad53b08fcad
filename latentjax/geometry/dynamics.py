"""Dynamics of latent trajectories and of vector fields.

- `fixed_points`: states where a flow `dx/dt = F(x)` stops (`F(x) = 0`) or a map
  `x' = F(x)` returns to itself (`F(x) = x`), of a function or of a fitted model whose family
  has learned dynamics (node's flow, the seqvae and LFADS generators' maps, as in Sussillo &
  Barak 2013 / FixedPointFinder). From many initial states at once (vmapped), the
  residual `r(x) = F(x)` (flow) or `F(x) - x` (map) is driven to zero by Levenberg-Marquardt
  steps on `q(x) = ½‖r(x)‖²` in one compiled `lax.scan`; converged points are deduplicated and
  classified by the eigenvalues of the Jacobian of `F` (`jax.jacfwd`).
- `tangling` (Russo et al. 2018, Neuron): `Q(t) = max_t' ‖ẋ_t - ẋ_t'‖² / (‖x_t - x_t'‖² + ε)`
  over all times and conditions; high where similar states have dissimilar derivatives.
- `speed` `‖ẋ‖` and `curvature` `κ = sqrt(‖ẋ‖²‖ẍ‖² - (ẋ·ẍ)²) / ‖ẋ‖³` along trajectories, with
  derivatives by second-order finite differences (`numpy.gradient`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from latentjax.geometry._arrays import as_points, as_trajectories, check_positive_int
from latentjax.results import FitResult, LearnedDynamics, Posterior

__all__ = ["FixedPoints", "curvature", "fixed_points", "speed", "tangling"]


class FixedPoints(NamedTuple):
    """Distinct fixed points, slowest first.

    Attributes:
      points: `[P, K]` states.
      speeds: `[P]` residual norms `‖F(x)‖` (flow) or `‖F(x) - x‖` (map).
      eigenvalues: `[P, K]` complex eigenvalues of the Jacobian of `F`, sorted by real part
        (flow) or modulus (map), largest first.
      stable: `[P]` bool, all eigenvalues with real part < 0 (flow) or modulus < 1 (map).
      labels: `[P]` "attractor" (stable), "repeller" (every direction unstable), "saddle"
        (both), or "marginal" (no unstable direction but one within `eigen_tolerance` of the
        stability boundary).
      latents: `[P, latent_dim]` the points in the model's latent space (as
        `Posterior.latents`), for the fixed points of a fitted model; None otherwise.
    """

    points: np.ndarray
    speeds: np.ndarray
    eigenvalues: np.ndarray
    stable: np.ndarray
    labels: np.ndarray
    latents: np.ndarray | None = None


def _residual(vector_field: Callable, kind: str, state: jax.Array, args: tuple) -> jax.Array:
    value = vector_field(state, *args)
    return value if kind == "flow" else value - state


@functools.partial(jax.jit, static_argnames=("vector_field", "kind", "num_steps"))
def _levenberg_marquardt(vector_field, kind, num_steps, initial_states, args, damping):
    """`[S, K]` states after `num_steps` damped Gauss-Newton steps from each initial state."""
    residual = functools.partial(_residual, vector_field, kind, args=args)

    def solve_one(start):
        def step(carry, _):
            state, damping = carry
            value = residual(state)
            jacobian = jax.jacfwd(residual)(state)
            normal = jacobian.T @ jacobian
            shift = damping * jnp.eye(state.shape[0], dtype=state.dtype)
            candidate = state - jnp.linalg.solve(normal + shift, jacobian.T @ value)
            improved = jnp.sum(residual(candidate) ** 2) < jnp.sum(value**2)
            state = jnp.where(improved, candidate, state)
            damping = jnp.clip(jnp.where(improved, damping / 3.0, damping * 4.0), 1e-9, 1e9)
            return (state, damping), None

        (state, _), _ = jax.lax.scan(step, (start, damping), None, length=num_steps)
        return state

    return jax.vmap(solve_one)(initial_states)


def _deduplicate(points: np.ndarray, speeds: np.ndarray, tolerance: float) -> np.ndarray:
    """Indices of distinct points, slowest first: a point is dropped when it lies within
    `tolerance` of a slower kept point."""
    kept: list[int] = []
    for index in np.argsort(speeds, kind="stable"):
        if all(np.linalg.norm(points[index] - points[other]) > tolerance for other in kept):
            kept.append(int(index))
    return np.asarray(kept, dtype=np.int64)


def _classify(eigenvalues: np.ndarray, kind: str, tolerance: float) -> tuple[np.ndarray, ...]:
    growth = eigenvalues.real if kind == "flow" else np.abs(eigenvalues) - 1.0
    unstable = np.sum(growth > tolerance, axis=1)
    stable = np.all(growth < -tolerance, axis=1)
    labels = np.where(
        stable,
        "attractor",
        np.where(
            unstable == growth.shape[1], "repeller", np.where(unstable > 0, "saddle", "marginal")
        ),
    )
    return stable, labels


def fixed_points(
    vector_field: Callable[..., jax.Array] | FitResult,
    initial_states: Any,
    *,
    kind: str = "flow",
    args: tuple = (),
    num_steps: int = 200,
    max_starts: int = 512,
    seed: int = 0,
    speed_tolerance: float = 1e-4,
    unique_tolerance: float = 1e-3,
    eigen_tolerance: float = 1e-6,
) -> FixedPoints:
    """Find fixed points of `vector_field(state [K], *args) -> [K]` from many starts.

    Args:
      vector_field: a JAX-traceable function of one state. Pass parameters and constant
        inputs through `args` (a pytree, traced) rather than closing over them, so repeated
        calls with new values reuse one compilation. Or a fitted model (`FitResult`) whose
        family has learned dynamics (`node`: its flow; `seqvae`, `lfads`: the generator's
        map with zero input, on the generator's state); then `initial_states` is its
        `Posterior` on some trials (`lj.infer`), the starts are the states the model
        visited there, `kind` and `args` come from the model, and the result's `latents`
        holds the points mapped to the model's latents.
      initial_states: `[S, K]` starts, or `[trials, time, K]` states visited by trajectories.
      kind: "flow" (`dx/dt = F(x)`, solves `F(x) = 0`) or "map" (`x' = F(x)`, solves
        `F(x) = x`).
      num_steps: Levenberg-Marquardt steps per start.
      max_starts: at most this many starts, a random subset (seeded by `seed`) of the given
        ones (each step of each start solves a `K x K` system).
      speed_tolerance: points whose residual norm stays above it are discarded.
      unique_tolerance: points closer than this (Euclidean) are one fixed point.
      eigen_tolerance: eigenvalues within it of the stability boundary count as marginal.

    Examples:
      >>> def flow(state):
      ...     return jnp.stack([state[0] - state[0] ** 3, -state[1]])
      >>> found = fixed_points(flow, np.random.default_rng(0).uniform(-2, 2, (64, 2)))
      >>> sorted(zip(found.points[:, 0].round(3).tolist(), found.labels.tolist()))
      [(-1.0, 'attractor'), (0.0, 'saddle'), (1.0, 'attractor')]
    """
    options = dict(num_steps=num_steps, max_starts=max_starts, seed=seed,
                   speed_tolerance=speed_tolerance, unique_tolerance=unique_tolerance,
                   eigen_tolerance=eigen_tolerance)  # fmt: skip
    if isinstance(vector_field, FitResult):
        learned = _learned_dynamics(vector_field, initial_states)
        found = fixed_points(
            learned.function, learned.states, kind=learned.kind, args=learned.args, **options
        )
        return found._replace(latents=np.asarray(learned.latents(jnp.asarray(found.points))))
    if not callable(vector_field):
        raise ValueError(f"`vector_field` must be callable, got {type(vector_field).__name__}")
    check_positive_int("max_starts", max_starts)
    if kind not in ("flow", "map"):
        raise ValueError(f"`kind` must be 'flow' or 'map', got {kind!r}")
    check_positive_int("num_steps", num_steps)
    for name, value in [
        ("speed_tolerance", speed_tolerance),
        ("unique_tolerance", unique_tolerance),
    ]:
        if not value > 0:
            raise ValueError(f"`{name}` must be positive, got {value}")
    starts, _ = as_points("initial_states", initial_states, min_points=1)
    if starts.shape[0] > max_starts:
        chosen = np.random.default_rng(seed).choice(starts.shape[0], max_starts, replace=False)
        starts = starts[np.sort(chosen)]
    starts = jnp.asarray(starts, dtype=jnp.result_type(float))
    output = jax.eval_shape(lambda s: vector_field(s, *args), starts[0])
    if output.shape != starts.shape[1:]:
        raise ValueError(
            f"`vector_field` must map a state of shape {starts.shape[1:]} to the same shape, "
            f"got {output.shape}"
        )

    damping = jnp.asarray(1e-2, dtype=starts.dtype)
    solved = _levenberg_marquardt(vector_field, kind, num_steps, starts, args, damping)
    residuals = jax.vmap(lambda s: _residual(vector_field, kind, s, args))(solved)
    speeds = np.asarray(jnp.linalg.norm(residuals, axis=1))
    solved = np.asarray(solved)
    converged = np.flatnonzero(speeds < speed_tolerance)
    distinct = converged[_deduplicate(solved[converged], speeds[converged], unique_tolerance)]
    points = solved[distinct]

    num_dims = starts.shape[1]
    if points.shape[0] == 0:
        empty = np.zeros((0, num_dims))
        return FixedPoints(
            empty, np.zeros(0), empty.astype(complex), np.zeros(0, bool), np.zeros(0, str)
        )
    jacobians = jax.vmap(jax.jacfwd(lambda s: vector_field(s, *args)))(jnp.asarray(points))
    eigenvalues = np.linalg.eigvals(np.asarray(jacobians, dtype=np.float64))
    order_key = eigenvalues.real if kind == "flow" else np.abs(eigenvalues)
    eigenvalues = np.take_along_axis(eigenvalues, np.argsort(-order_key, axis=1), axis=1)
    stable, labels = _classify(eigenvalues, kind, eigen_tolerance)
    return FixedPoints(points, speeds[distinct], eigenvalues, stable, labels)


def _learned_dynamics(result: FitResult, posterior: Any) -> LearnedDynamics:
    """The `dynamics` hook's output for `result` on the trials of `posterior`."""
    from latentjax import family  # the registry imports families lazily; geometry stays below

    registration = family.of_config(result.config)
    hook = getattr(registration.family, "dynamics", None)
    if hook is None:
        with_dynamics = [n for n in family.names() if family.hook(n, "dynamics")]
        raise ValueError(
            f"`vector_field`: the {registration.name} family has no learned dynamics to find "
            f"fixed points of (families with them: {', '.join(with_dynamics)})"
        )
    if not isinstance(posterior, Posterior):
        raise ValueError(
            "`initial_states` must be the model's Posterior (lj.infer(result, trials)) when "
            f"`vector_field` is a FitResult, got {type(posterior).__name__}"
        )
    return hook(result.params, result.config, posterior)


def _derivatives(trajectories: np.ndarray, dt: float, order: int) -> np.ndarray:
    derivative = trajectories
    for _ in range(order):
        derivative = np.gradient(derivative, dt, axis=1, edge_order=2)
    return derivative


def _check_dt(dt: float) -> float:
    if not dt > 0:
        raise ValueError(f"`dt` must be positive, got {dt}")
    return float(dt)


def _restore_layout(values: np.ndarray, X: Any) -> np.ndarray:
    return values[0] if np.ndim(X) == 2 else values


def speed(X: Any, *, dt: float = 1.0) -> np.ndarray:
    """Speed `‖ẋ‖` along `X` `[trials, time, K]` (or `[time, K]`): `[trials, time]` (or
    `[time]`), in units of X per unit of `dt`."""
    trajectories = as_trajectories("X", X)
    velocity = _derivatives(trajectories, _check_dt(dt), 1)
    return _restore_layout(np.linalg.norm(velocity, axis=-1), X)


def curvature(X: Any, *, dt: float = 1.0) -> np.ndarray:
    """Curvature `κ` (1 / radius of the osculating circle) along `X` `[trials, time, K]` (or
    `[time, K]`): `[trials, time]` (or `[time]`). Independent of `dt` and of the speed."""
    trajectories = as_trajectories("X", X)
    velocity = _derivatives(trajectories, _check_dt(dt), 1)
    acceleration = _derivatives(velocity, dt, 1)
    speed_squared = np.sum(velocity**2, axis=-1)
    cross = (
        speed_squared * np.sum(acceleration**2, axis=-1) - np.sum(velocity * acceleration, -1) ** 2
    )
    return _restore_layout(np.sqrt(np.maximum(cross, 0.0)) / speed_squared**1.5, X)


@jax.jit
def _max_tangling(states: jax.Array, velocities: jax.Array, epsilon: jax.Array) -> jax.Array:
    def one(state_and_velocity):
        state, velocity = state_and_velocity
        state_distance = jnp.sum((states - state) ** 2, axis=1)
        velocity_distance = jnp.sum((velocities - velocity) ** 2, axis=1)
        return jnp.max(velocity_distance / (state_distance + epsilon))

    return jax.lax.map(one, (states, velocities), batch_size=256)


def tangling(X: Any, *, dt: float = 1.0, epsilon: float | None = None) -> np.ndarray:
    """Trajectory tangling `Q` `[trials, time]` of `X` `[trials (conditions), time, K]`.

    Every time of every trial is compared with every other (pooled over trials, as Russo et
    al. pool conditions). `epsilon` defaults to 0.1 x the total variance of `X` (sum over `K`
    of the variance over trials and time). Derivatives by `numpy.gradient` / `dt`.

    Examples:
      >>> angle = np.linspace(0, 2 * np.pi, 50)[None]
      >>> circle = np.stack([np.cos(angle), np.sin(angle)], -1)
      >>> tangling(circle).shape
      (1, 50)
    """
    trajectories = as_trajectories("X", X)
    velocities = _derivatives(trajectories, _check_dt(dt), 1)
    num_dims = trajectories.shape[-1]
    states = trajectories.reshape(-1, num_dims)
    if epsilon is None:
        epsilon = 0.1 * float(np.sum(np.var(states, axis=0)))
    if not epsilon > 0:
        raise ValueError(f"`epsilon` must be positive (or None), got {epsilon}")
    result = _max_tangling(
        jnp.asarray(states), jnp.asarray(velocities.reshape(-1, num_dims)), jnp.asarray(epsilon)
    )
    return _restore_layout(np.asarray(result).reshape(trajectories.shape[:2]), X)
