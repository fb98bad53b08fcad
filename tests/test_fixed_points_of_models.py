"""`lj.geometry.fixed_points(result, posterior)`: the learned dynamics of node, seqvae and
LFADS, checked against the models' equations written again here in NumPy."""

import jax
import numpy as np
import pytest

import latentjax as lj
from latentjax.models import lds, lfads, node, seqvae


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _numpy_gru_map(weights: dict, h: np.ndarray, clip: float) -> np.ndarray:
    """The GRU's next state with zero input (gates r, z, n; see `nn.recurrent`)."""
    x = np.asarray(weights["input_bias"], np.float64)
    hidden = h @ np.asarray(weights["hidden_kernel"], np.float64) + np.asarray(
        weights["hidden_bias"], np.float64
    )
    xr, xz, xn = np.split(x, 3, axis=-1)
    hr, hz, hn = np.split(hidden, 3, axis=-1)
    r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    return np.clip(z * h + (1 - z) * n, -clip, clip)


def _numpy_mlp_flow(field: dict, time_scale: float, z: np.ndarray) -> np.ndarray:
    *inner, last = field["layers"]
    hidden = z
    for layer in inner:
        hidden = np.tanh(hidden @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"]))
    return time_scale * (hidden @ np.asarray(last["kernel"]) + np.asarray(last["bias"]))


def _untrained(family, config, trials, scale_generator=None):
    """A model at its initial parameters, with a stronger generator recurrence so that the
    map has fixed points away from the origin."""
    params = family.init(jax.random.PRNGKey(1), config, trials)
    if scale_generator is not None:
        generator = scale_generator(params)
        generator["hidden_kernel"] = 3.0 * generator["hidden_kernel"]
    return lj.FitResult(params=params, config=config)


def _check_map_points(found, weights, clip, to_latents):
    assert len(found.points) >= 1
    points = found.points.astype(np.float64)
    after = np.stack([_numpy_gru_map(weights, p, clip) for p in points])
    np.testing.assert_array_less(np.linalg.norm(after - points, axis=1), 1e-3)
    np.testing.assert_allclose(found.latents, to_latents(points), rtol=1e-4, atol=1e-4)
    for point, stable in zip(points, found.stable, strict=True):
        state = point + 1e-3 * np.random.default_rng(0).standard_normal(point.shape)
        for _ in range(2000):
            state = _numpy_gru_map(weights, state, clip)
        returned = np.linalg.norm(state - point) < 1e-4
        assert returned == stable


def test_fixed_points_of_the_seqvae_generator_are_fixed_points_of_its_gru():
    trials = lj.datasets.flip_flop(seed=0, num_trials=6, num_bins=20, num_neurons=8).trials
    config = seqvae.Config(encoder_dim=8, initial_dim=4, input_dim=2, generator_dim=6, latent_dim=3)
    result = _untrained(seqvae, config, trials, lambda p: p["generator"])
    post = lj.infer(result, trials)
    found = lj.geometry.fixed_points(result, post, num_steps=100, unique_tolerance=1e-2)
    weights = result.params["generator"]
    latents = result.params["latents"]
    _check_map_points(
        found,
        weights,
        5.0,
        lambda g: g @ np.asarray(latents["kernel"]) + np.asarray(latents["bias"]),
    )
    assert found.points.shape[1] == 6 and found.latents.shape[1] == 3


def test_fixed_points_of_the_lfads_generator_are_fixed_points_of_its_gru():
    trials = lj.datasets.flip_flop(seed=0, num_trials=6, num_bins=20, num_neurons=8).trials
    config = lfads.Config(
        ic_enc_dim=8, ci_enc_dim=8, con_dim=8, co_dim=2, ic_dim=4, gen_dim=6, fac_dim=3
    )
    result = _untrained(lfads, config, trials, lambda p: p["core"]["generator"])
    post = lj.infer(result, trials, n_samples=2)
    found = lj.geometry.fixed_points(result, post, num_steps=100, unique_tolerance=1e-2)
    kernel = np.asarray(result.params["core"]["factors_kernel"], np.float64)
    factors = kernel / np.linalg.norm(kernel, axis=0)
    _check_map_points(found, result.params["core"]["generator"], 5.0, lambda g: g @ factors)


def test_fixed_points_of_the_node_flow_zero_its_mlp():
    trials = lj.datasets.lorenz(seed=0, num_trials=4, num_bins=20, num_neurons=8).trials
    config = node.Config(latent_dim=2, time_scale=2.0)
    result = _untrained(node, config, trials)
    starts = np.random.default_rng(0).uniform(-3, 3, (2, 10, 2))
    direct = lj.geometry.fixed_points(
        node.vector_field(result.params, config), starts, unique_tolerance=1e-2
    )
    found = lj.geometry.fixed_points(
        result, lj.Posterior(latents=starts, extras={}), unique_tolerance=1e-2
    )
    assert len(found.points) >= 1
    speeds = [np.linalg.norm(_numpy_mlp_flow(result.params["field"], 2.0, p)) for p in found.points]
    np.testing.assert_array_less(speeds, 1e-4)
    np.testing.assert_allclose(found.latents, found.points)
    np.testing.assert_allclose(np.sort(found.points, 0), np.sort(direct.points, 0), atol=1e-5)


def test_fixed_points_of_a_model_refuse_what_they_cannot_use():
    trials = lj.datasets.lorenz(seed=0, num_trials=4, num_bins=20, num_neurons=8).trials
    gaussian = lj.FitResult(params={}, config=lds.Config())
    with pytest.raises(ValueError, match="lds family has no learned dynamics.*lfads.*node"):
        lj.geometry.fixed_points(gaussian, lj.Posterior(latents=np.zeros((1, 2, 3))))
    config = node.Config(latent_dim=2, time_scale=1.0)
    result = _untrained(node, config, trials)
    with pytest.raises(ValueError, match="`initial_states` must be the model's Posterior"):
        lj.geometry.fixed_points(result, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="max_starts"):
        lj.geometry.fixed_points(lambda s: -s, np.zeros((4, 2)), max_starts=0)


def _cubic(state):
    return state - state**3


def test_max_starts_takes_a_seeded_subset():
    starts = np.random.default_rng(0).uniform(-2, 2, (50, 1))
    first = lj.geometry.fixed_points(_cubic, starts, max_starts=10, seed=3)
    again = lj.geometry.fixed_points(_cubic, starts, max_starts=10, seed=3)
    np.testing.assert_array_equal(first.points, again.points)
    assert len(first.points) <= 3


@pytest.mark.slow
def test_a_seqvae_trained_on_the_3_bit_flip_flop_has_8_attractors_one_per_memory_state():
    """The FixedPointFinder example: the generator holds each of the 8 memory states."""
    data = lj.datasets.flip_flop(seed=0, num_trials=250)
    train, test = data.trials[:200], data.trials[200:]
    bits = data.truth["latents"][200:].reshape(-1, 3)
    config = seqvae.Config(
        encoder_dim=32,
        initial_dim=8,
        input_dim=3,
        generator_dim=32,
        latent_dim=3,
        train=lj.train.TrainConfig(learning_rate=3e-3, batch_size=32, steps=1500, grad_clip=10.0),
    )
    result = lj.fit(config, train, progress=False)
    post = lj.infer(result, test)
    found = lj.geometry.fixed_points(result, post, max_starts=256, unique_tolerance=0.05)
    design = np.c_[np.asarray(post.latents).reshape(-1, 3), np.ones(len(bits))]
    to_bits = np.linalg.lstsq(design, bits, rcond=None)[0]
    assert 1 - np.sum((design @ to_bits - bits) ** 2) / np.sum((bits - bits.mean(0)) ** 2) > 0.9
    attractors = np.c_[found.latents[found.stable], np.ones(int(found.stable.sum()))] @ to_bits
    assert len(attractors) == 8
    assert len({tuple(np.sign(point)) for point in attractors}) == 8
    np.testing.assert_array_less(np.abs(np.abs(attractors) - 1), 0.4)
