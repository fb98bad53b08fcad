"""Routing models `lj.multiregion.gnn` and `lj.multiregion.attention`: a NumPy reference of
the recurrence, causality of the predictions, training through `lj.fit` / `lj.sweep`, and
recovery of the true directed edges of `lj.datasets.multiregion`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax import global_norm as optax_norm

import latentjax as lj
from latentjax.multiregion import _routing, attention, gnn

FAMILIES = {"gnn": gnn, "attention": attention}
TRUE_EDGES = [(0, 1), (1, 2)]  # the dataset's default edges
ABSENT_EDGES = [(s, r) for s in range(3) for r in range(3) if s != r and (s, r) not in TRUE_EDGES]


def _config(family, steps, **changes):
    train = lj.train.TrainConfig(steps=steps, learning_rate=2e-2, chunk_size=min(steps, 100))
    return family.Config(train=train, **changes)


@pytest.fixture(scope="module")
def small():
    data = lj.datasets.multiregion(seed=1, num_trials=6, num_bins=12, neurons_per_region=5)
    mask = np.ones((6, 12), bool)
    mask[0, 7:] = False  # a shorter trial
    mask[2, 3] = False  # a missing bin
    return lj.Trials(data.trials.spikes, data.trials.dt, mask=mask, regions=data.trials.regions)


# ----------------------------------------------------------------------------- reference


def _reference_attention(routing, states):
    """Attention `[R, R]` (s -> r) written with loops."""
    num_regions = states.shape[0]
    weights = np.zeros((num_regions, num_regions))
    for r in range(num_regions):
        query = routing["queries"][r].T @ states[r]
        logits = [routing["null_logits"][r]]
        sources = [s for s in range(num_regions) if s != r]
        for s in sources:
            key = routing["keys"][s].T @ states[s]
            logits.append(key @ query / np.sqrt(len(query)))
        probabilities = np.exp(np.array(logits) - max(logits))
        probabilities /= probabilities.sum()
        weights[sources, r] = probabilities[1:]
    gains = np.log1p(np.exp(routing["gains"]))
    return weights * gains[None, :]


def _reference_log_rates(name, params, spikes, mask, regions):
    """One trial's log rates `[T, N]` by an explicit loop over bins, regions and edges."""
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    labels = list(dict.fromkeys(regions))
    region_of = np.array([labels.index(label) for label in regions])
    num_regions, latent_dim = params["state_bias"].shape
    if name == "gnn":
        edges = np.log1p(np.exp(params["routing"]["edges"]))
    state = np.zeros((num_regions, latent_dim))
    log_rates = np.zeros(spikes.shape)
    for t in range(spikes.shape[0]):
        weights = edges if name == "gnn" else _reference_attention(params["routing"], state)
        prediction = np.zeros_like(state)
        for r in range(num_regions):
            prediction[r] = params["dynamics"][r] @ state[r] + params["state_bias"][r]
            for s in range(num_regions):
                if s != r:
                    matrix = params["messages"][s, r]
                    unit = matrix / np.linalg.norm(matrix)
                    prediction[r] += weights[s, r] * unit @ np.tanh(state[s])
        for i, r in enumerate(region_of):
            log_rates[t, i] = params["readout"][i] @ prediction[r] + params["readout_bias"][i]
        innovation = np.zeros_like(state)
        signal = np.sqrt(spikes[t]) - params["readin_offset"]
        for i, r in enumerate(region_of):
            innovation[r] += params["readin"][i] * signal[i]
        state = prediction + mask[t] * innovation
    return log_rates


@pytest.mark.parametrize("name", FAMILIES)
def test_predictions_match_loop_reference(name, small):
    family = FAMILIES[name]
    params = family.init(jax.random.key(0), family.Config(), small)
    params["dynamics"] = params["dynamics"] + 0.2 * jax.random.normal(
        jax.random.key(1), params["dynamics"].shape
    )
    if name == "gnn":  # distinct strengths per edge
        params["routing"]["edges"] = jax.random.normal(jax.random.key(2), (3, 3))
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        log_rates = _routing.predict(params64, small, family._route)[0]
    for trial in (0, 2, 5):
        expected = _reference_log_rates(
            name,
            params,
            np.asarray(small.spikes[trial], np.float64),
            np.asarray(small.mask[trial]),
            list(small.regions),
        )
        np.testing.assert_allclose(
            log_rates[trial], expected, rtol=1e-6, atol=1e-6
        )  # spikes enter as float32


@pytest.mark.parametrize("name", FAMILIES)
def test_rates_depend_on_past_spikes_only(name, small):
    family = FAMILIES[name]
    params = family.init(jax.random.key(0), family.Config(), small)
    before = family.posterior(params, small, family.Config(), None).rates
    spikes = np.asarray(small.spikes).copy()
    spikes[:, 5] += 3
    changed = small.replace(spikes=spikes)
    after = family.posterior(params, changed, family.Config(), None).rates
    np.testing.assert_array_equal(after[:, :6], before[:, :6])
    assert np.abs(np.asarray(after[1:, 6:] - before[1:, 6:])).max() > 1e-4


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", FAMILIES)
def test_config_and_trials_validation(name, small):
    family = FAMILIES[name]
    with pytest.raises(ValueError, match="latent_dim"):
        family.Config(latent_dim=0)
    with pytest.raises(ValueError, match="edge_penalty"):
        family.Config(edge_penalty=-1.0)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="regions"):
        family.init(key, family.Config(), lj.Trials(small.spikes, small.dt))
    with pytest.raises(ValueError, match="fewer than latent_dim"):
        family.init(key, family.Config(latent_dim=6), small)
    continuous = lj.Trials(small.spikes, small.dt, regions=small.regions, continuous=True)
    with pytest.raises(ValueError, match="spike counts"):
        family.init(key, family.Config(), continuous)
    params = family.init(key, family.Config(), small)
    other = small.select_neurons(np.arange(12))
    with pytest.raises(ValueError, match="neurons"):
        family.posterior(params, other, family.Config(), None)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", FAMILIES)
def test_gradients_finite(name, small):
    family = FAMILIES[name]
    config = family.Config()
    params = family.init(jax.random.key(0), config, small)
    grads = jax.jit(jax.grad(lambda p: family.loss(p, small, jax.random.key(0), config, 0)[0]))(
        params
    )
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert float(optax_norm(grads)) > 0


@pytest.mark.slow
def test_sweep_trains_penalty_grid_as_one_program(small):
    config = _config(gnn, 30, edge_penalty=0.0)
    results = lj.sweep(config, small, seeds=(0,), grid={"edge_penalty": [0.0, 1.0]}, progress=False)
    strengths = [np.asarray(lj.infer(r, small).edge_strengths).sum() for r in results]
    assert strengths[1] < strengths[0]  # a heavier L1 penalty shrinks the edges
    assert dataclasses.asdict(results[1].config)["edge_penalty"] == 1.0


# ----------------------------------------------------------------------------- edge recovery


def _fit_and_check(name, seed, num_trials, num_bins, steps):
    """Fit on the default 3-region dataset (edges 0 -> 1 -> 2) through `lj.fit`; check the
    loss fell and the posterior's shapes; return the weakest true and strongest absent edge."""
    family = FAMILIES[name]
    data = lj.datasets.multiregion(seed=seed, num_trials=num_trials, num_bins=num_bins)
    config = _config(family, steps)
    result = lj.fit(config, data.trials, seed=seed, progress=False)

    def nll(params):
        return family.loss(params, data.trials, jax.random.key(0), config, 0)[1]["nll"]

    initial = family.init(jax.random.key(seed), config, data.trials)
    assert nll(result.params) < nll(initial) - 1e-3
    post = lj.infer(result, data.trials)
    assert post.latents.shape == (num_trials, num_bins, 3 * config.latent_dim)
    assert post.filtered_latents.shape == post.latents.shape
    assert post.rates.shape == data.trials.shape and bool(np.all(np.asarray(post.rates) > 0))
    strengths = np.asarray(post.edge_strengths)
    assert strengths.shape == (3, 3) and np.all(np.diag(strengths) == 0)
    assert np.all(strengths >= 0)
    if name == "attention":
        weights = np.asarray(post.attention)
        assert weights.shape == (num_trials, num_bins, 3, 3)
        assert np.all(weights.sum(axis=2) <= 1 + 1e-6)
        assert np.all(weights[..., [0, 1, 2], [0, 1, 2]] == 0)
        mean = weights.mean(axis=(0, 1))
        np.testing.assert_allclose(strengths, mean, rtol=1e-5, atol=1e-6)
    true = min(strengths[e] for e in TRUE_EDGES)
    absent = max(strengths[e] for e in ABSENT_EDGES)
    return true, absent


@pytest.mark.parametrize("name", FAMILIES)
def test_fit_recovers_true_edges(name):
    true, absent = _fit_and_check(name, seed=0, num_trials=40, num_bins=40, steps=300)
    assert true > absent, (true, absent)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_fit_recovers_true_edges_more_seeds(name):
    """Every seed ranks the true edges first; the median seed separates them by 1.5x. (One
    seed per fit is not a stable measure: attention on seed 3 separates by 1.46x under the
    test suite's XLA flags and 2.39x without them, the same data and initialisation.)"""
    pairs = [_fit_and_check(name, seed, num_trials=100, num_bins=100, steps=800)
             for seed in (1, 2, 3)]  # fmt: skip
    ratios = [true / absent for true, absent in pairs]
    assert min(ratios) > 1 and np.median(ratios) > 1.5, ratios


@pytest.mark.parametrize("name", FAMILIES)
def test_validation_loss_is_the_poisson_nll_per_observed_entry_without_the_penalty(name, small):
    from scipy.stats import poisson

    family = FAMILIES[name]
    config = _config(family, 1, edge_penalty=0.5)
    params = family.init(jax.random.PRNGKey(3), config, small)
    rates = np.asarray(family.posterior(params, small, config).rates, np.float64)
    logpmf = poisson.logpmf(np.asarray(small.spikes), rates)
    expected = -logpmf[np.asarray(small.mask)].mean()
    got, aux = family.validation_loss(params, small, None, config, 0)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    total, parts = family.loss(params, small, None, config, 0)
    assert float(parts["penalty"]) > 0
    np.testing.assert_allclose(float(total) - float(parts["penalty"]), float(got), rtol=1e-5)
