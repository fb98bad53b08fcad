"""`nn.recurrent`: the GRU step's hand-written derivative (`_update`'s custom JVP) against
automatic differentiation of the GRU equations written again here, forward and reverse,
under jit and vmap, with the cell clip binding and without."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentjax.nn.recurrent import GRUWeights, autonomous_gru_step, gru_step, run_gru


def _reference_step(weights: GRUWeights, input_gates, h, clip):
    hidden = h @ weights.hidden_kernel + weights.hidden_bias
    xr, xz, xn = jnp.split(input_gates, 3, axis=-1)
    hr, hz, hn = jnp.split(hidden, 3, axis=-1)
    r = 1 / (1 + jnp.exp(-(xr + hr)))
    z = 1 / (1 + jnp.exp(-(xz + hz)))
    n = jnp.tanh(xn + r * hn)
    return jnp.clip(z * h + (1 - z) * n, -clip, clip)


def _weights(hidden: int, inputs: int, seed: int = 0) -> GRUWeights:
    rng = np.random.default_rng(seed)
    return GRUWeights(
        jnp.asarray(rng.normal(0, 0.6, (inputs, 3 * hidden))),
        jnp.asarray(rng.normal(0, 0.3, 3 * hidden)),
        jnp.asarray(rng.normal(0, 0.6, (hidden, 3 * hidden))),
        jnp.asarray(rng.normal(0, 0.3, 3 * hidden)),
        jnp.asarray(rng.normal(0, 0.5, hidden)),
    )


@pytest.mark.parametrize("clip", [0.45, np.inf])
def test_gru_step_derivatives_equal_autodiff_of_the_equations(clip):
    hidden, batch = 5, 7
    with jax.enable_x64(True):
        weights = _weights(hidden, 3)
        rng = np.random.default_rng(1)
        gates = jnp.asarray(rng.normal(0, 1.0, (batch, 3 * hidden)))
        h = jnp.clip(jnp.asarray(rng.normal(0, 0.5, (batch, hidden))), -clip, clip)
        unclipped = _reference_step(weights, gates, h, np.inf)
        if np.isfinite(clip):  # the clip binds on some entries and not on others
            assert 0 < np.mean(np.abs(unclipped) >= clip) < 0.7

        def ours(w, g, h):
            step = jax.vmap(gru_step, in_axes=(None, 0, 0, None))
            return jnp.sum(jnp.sin(step(w, g, h, clip)))

        def reference(w, g, h):
            return jnp.sum(jnp.sin(_reference_step(w, g, h, clip)))

        args = (weights, gates, h)
        np.testing.assert_allclose(jax.jit(ours)(*args), reference(*args), rtol=1e-12)
        for got, expected in zip(
            jax.tree.leaves(jax.jit(jax.grad(ours, argnums=(0, 1, 2)))(*args)),
            jax.tree.leaves(jax.grad(reference, argnums=(0, 1, 2))(*args)),
            strict=True,
        ):
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
        forward = jax.jacfwd(lambda h: ours(weights, gates, h))(h)
        np.testing.assert_allclose(forward, jax.grad(reference, argnums=2)(*args), atol=1e-12)


def test_run_gru_gradients_equal_autodiff_of_the_equations_in_float32():
    weights = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _weights(6, 4, seed=2))
    inputs = jnp.asarray(np.random.default_rng(3).normal(0, 1, (3, 9, 4)), jnp.float32)

    def reference_run(w, x):
        gates = x @ w.input_kernel + w.input_bias

        def step(h, g):
            h = _reference_step(w, g, h, 0.8)
            return h, h

        return jax.lax.scan(step, w.initial_state, gates, reverse=True)[1]

    def loss(run, w):
        return jnp.sum(jnp.cos(jax.vmap(run, in_axes=(None, 0))(w, inputs)))

    ours = jax.jit(jax.value_and_grad(lambda w: loss(lambda w, x: run_gru(w, x, 0.8, True), w)))
    value, grads = ours(weights)
    expected_value, expected = jax.value_and_grad(lambda w: loss(reference_run, w))(weights)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_the_autonomous_map_has_a_forward_mode_jacobian():
    """`lj.geometry.fixed_points` classifies fixed points by `jax.jacfwd` of this map."""
    with jax.enable_x64(True):
        weights = _weights(4, 2)
        h = jnp.asarray(np.random.default_rng(4).normal(0, 0.3, 4))
        got = jax.jacfwd(autonomous_gru_step)(h, weights, 5.0)
        expected = jax.jacrev(lambda h: _reference_step(weights, weights.input_bias, h, 5.0))(h)
    np.testing.assert_allclose(got, expected, atol=1e-12)
