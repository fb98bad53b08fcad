"""Fixed points, tangling, speed and curvature against analytic results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentjax import geometry
from latentjax.geometry.dynamics import _levenberg_marquardt


def _pitchfork(state):
    return jnp.stack([state[0] - state[0] ** 3, -state[1]])


def test_fixed_points_of_pitchfork_flow():
    starts = np.random.default_rng(0).uniform(-2, 2, size=(64, 2))
    found = geometry.fixed_points(_pitchfork, starts)
    order = np.argsort(found.points[:, 0])
    np.testing.assert_allclose(found.points[order], [[-1, 0], [0, 0], [1, 0]], atol=1e-4)
    assert found.labels[order].tolist() == ["attractor", "saddle", "attractor"]
    assert found.stable[order].tolist() == [True, False, True]
    # Jacobian diag(1 - 3x², -1): eigenvalues (-1, -2) at x = ±1 and (1, -1) at the origin.
    np.testing.assert_allclose(
        found.eigenvalues[order].real, [[-1, -2], [1, -1], [-1, -2]], atol=1e-3
    )
    assert np.all(found.speeds < 1e-4)


def test_fixed_points_of_a_map_with_parameters_in_args():
    """x' = tanh(w x): origin unstable for w > 1, ±x* with x* = tanh(w x*) stable."""

    def step(state, gain):
        return jnp.tanh(gain * state)

    starts = np.linspace(-2, 2, 21)[:, None]
    found = geometry.fixed_points(step, starts, kind="map", args=(jnp.asarray(2.0),))
    order = np.argsort(found.points[:, 0])
    root = 0.957504
    np.testing.assert_allclose(found.points[order, 0], [-root, 0, root], atol=1e-4)
    assert found.labels[order].tolist() == ["attractor", "repeller", "attractor"]
    np.testing.assert_allclose(found.eigenvalues[order[1], 0].real, 2.0, rtol=1e-4)
    compiled = _levenberg_marquardt._cache_size()
    geometry.fixed_points(step, starts, kind="map", args=(jnp.asarray(3.0),))
    assert _levenberg_marquardt._cache_size() == compiled


def test_fixed_points_validation():
    with pytest.raises(ValueError, match="kind"):
        geometry.fixed_points(_pitchfork, np.zeros((2, 2)), kind="ode")
    with pytest.raises(ValueError, match="same shape"):
        geometry.fixed_points(lambda state: state[:1], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="initial_states"):
        geometry.fixed_points(_pitchfork, np.zeros(2))


def test_speed_and_curvature_of_a_circle():
    time = np.arange(200) * 0.01
    radius, omega = 2.0, 3.0
    circle = radius * np.stack([np.cos(omega * time), np.sin(omega * time), 0 * time], -1)
    np.testing.assert_allclose(geometry.speed(circle, dt=0.01), radius * omega, rtol=1e-3)
    np.testing.assert_allclose(geometry.curvature(circle[None], dt=0.01), 1 / radius, rtol=1e-3)


def test_tangling_matches_bruteforce_definition():
    rng = np.random.default_rng(0)
    X = np.cumsum(rng.normal(size=(3, 30, 4)), axis=1)
    dt = 0.1
    result = geometry.tangling(X, dt=dt)
    states = X.reshape(-1, 4)
    velocities = np.gradient(X, dt, axis=1, edge_order=2).reshape(-1, 4)
    epsilon = 0.1 * states.var(axis=0).sum()
    expected = np.array(
        [
            max(
                np.sum((velocities[i] - velocities[j]) ** 2)
                / (np.sum((states[i] - states[j]) ** 2) + epsilon)
                for j in range(len(states))
            )
            for i in range(len(states))
        ]
    )
    np.testing.assert_allclose(result.reshape(-1), expected, rtol=1e-4)


def test_figure_eight_is_more_tangled_than_circle():
    angle = np.linspace(0, 2 * np.pi, 100)
    circle = np.stack([np.cos(angle), np.sin(angle)], -1)
    eight = np.stack([np.sin(angle), np.sin(2 * angle) / 2], -1)
    assert geometry.tangling(eight).max() > 3 * geometry.tangling(circle).max()


@pytest.mark.slow
def test_fixed_points_of_a_trained_vector_field():
    """An MLP fitted to the bistable flow (x - x³, -y) has its fixed points near the truth."""
    import optax

    key = jax.random.PRNGKey(0)
    keys = jax.random.split(key, 4)
    sizes = [2, 64, 64, 2]
    params = [
        (jax.random.normal(k, (m, n)) / np.sqrt(m), jnp.zeros(n))
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=False)
    ]

    def field(state, params):
        hidden = state
        for weight, bias in params[:-1]:
            hidden = jnp.tanh(hidden @ weight + bias)
        weight, bias = params[-1]
        return hidden @ weight + bias

    states = jax.random.uniform(keys[3], (4096, 2), minval=-1.8, maxval=1.8)
    targets = jax.vmap(_pitchfork)(states)
    optimiser = optax.adam(3e-3)

    def loss(params):
        return jnp.mean((jax.vmap(field, (0, None))(states, params) - targets) ** 2)

    @jax.jit
    def train(params, opt_state):
        def step(carry, _):
            params, opt_state = carry
            grads = jax.grad(loss)(params)
            updates, opt_state = optimiser.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(step, (params, opt_state), None, length=3000)[0]

    params, _ = train(params, optimiser.init(params))
    assert loss(params) < 1e-3
    starts = np.random.default_rng(1).uniform(-1.5, 1.5, (128, 2))
    found = geometry.fixed_points(field, starts, args=(params,), unique_tolerance=0.05)
    order = np.argsort(found.points[:, 0])
    np.testing.assert_allclose(found.points[order], [[-1, 0], [0, 0], [1, 0]], atol=0.05)
    assert found.labels[order].tolist() == ["attractor", "saddle", "attractor"]
