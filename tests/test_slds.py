"""Switching LDS: the block-tridiagonal solver against a dense inverse, the analytic Newton
terms against autodiff, the ELBO of a one-state SLDS against the Kalman log-likelihood, and
recurrent SLDS on NASCAR (state accuracy, latent R², held-out likelihood against LDS/PLDS)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import latentjax as lj
from latentjax.models import lds, plds, slds
from latentjax.nn.block_tridiagonal import quadratic_form, solve


def accuracy(found, truth):
    """Fraction of bins whose state matches the truth after the best relabelling."""
    size = int(max(found.max(), truth.max())) + 1
    confusion = np.zeros((size, size))
    np.add.at(confusion, (np.ravel(found), np.ravel(truth)), 1)
    rows, columns = linear_sum_assignment(-confusion)
    return confusion[rows, columns].sum() / truth.size


def test_block_tridiagonal_solve_equals_the_dense_inverse():
    rng = np.random.default_rng(0)
    num_bins, size = 6, 3
    dense = np.zeros((num_bins * size, num_bins * size))
    for t in range(num_bins):
        block = rng.normal(size=(size, size))
        dense[t * size : (t + 1) * size, t * size : (t + 1) * size] = block @ block.T + 4 * np.eye(
            3
        )
        if t + 1 < num_bins:
            coupling = rng.normal(size=(size, size))
            dense[t * size : (t + 1) * size, (t + 1) * size : (t + 2) * size] = coupling
            dense[(t + 1) * size : (t + 2) * size, t * size : (t + 1) * size] = coupling.T
    dense += 6 * np.eye(num_bins * size)
    assert np.all(np.linalg.eigvalsh(dense) > 0)
    shift = rng.normal(size=num_bins * size)
    diagonal = np.stack([dense[t * 3 : t * 3 + 3, t * 3 : t * 3 + 3] for t in range(num_bins)])
    upper = np.stack([dense[t * 3 : t * 3 + 3, t * 3 + 3 : t * 3 + 6] for t in range(num_bins - 1)])
    covariance = np.linalg.inv(dense)
    mean = covariance @ shift
    with jax.enable_x64(True):
        got = solve(jnp.asarray(diagonal), jnp.asarray(upper), jnp.asarray(shift.reshape(-1, 3)))
        np.testing.assert_allclose(got.means.ravel(), mean, atol=1e-10)
        for t in range(num_bins):
            block = covariance[t * 3 : t * 3 + 3, t * 3 : t * 3 + 3]
            np.testing.assert_allclose(got.covariances[t], block, atol=1e-10)
            if t + 1 < num_bins:
                cross = covariance[t * 3 : t * 3 + 3, t * 3 + 3 : t * 3 + 6]
                np.testing.assert_allclose(got.cross_covariances[t], cross, atol=1e-10)
        log_det = np.linalg.slogdet(dense)[1]
        want = 0.5 * shift @ mean - 0.5 * log_det + 0.5 * shift.size * np.log(2 * np.pi)
        np.testing.assert_allclose(got.log_normalizer, want, rtol=1e-12)
        path = rng.normal(size=(num_bins, 3))
        np.testing.assert_allclose(
            quadratic_form(diagonal, upper, shift.reshape(-1, 3), path),
            -0.5 * path.ravel() @ dense @ path.ravel() + shift @ path.ravel(),
            rtol=1e-12,
        )


def _random_params(rng, num_states, num_neurons, poisson):
    """Random (r)SLDS parameters with two latents (float64 under x64)."""
    rotations = [np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) for a in
                 rng.uniform(-0.3, 0.3, num_states)]  # fmt: skip
    return slds.Params(
        jnp.asarray(rng.dirichlet(np.ones(num_states))),
        jnp.asarray(rng.normal(size=(num_states, num_states))),
        jnp.asarray(rng.normal(size=(num_states, 2))),
        jnp.asarray(rng.normal(size=2)),
        jnp.eye(2) * 0.5,
        jnp.asarray(0.95 * np.stack(rotations)),
        jnp.asarray(rng.normal(size=(num_states, 2)) * 0.1),
        jnp.asarray(np.stack([np.eye(2) * rng.uniform(0.05, 0.2) for _ in range(num_states)])),
        jnp.asarray(rng.normal(size=(num_neurons, 2)) * (0.5 if poisson else 1.0)),
        jnp.asarray(rng.normal(size=num_neurons) * (0.3 if poisson else 1.0)),
        jnp.asarray(rng.uniform(0.2, 0.5, num_neurons)),
    )


@pytest.mark.parametrize("poisson", [False, True])
def test_analytic_newton_terms_equal_autodiff(poisson):
    rng = np.random.default_rng(1)
    num_bins, num_neurons = 20, 6
    with jax.enable_x64(True):
        params = _random_params(rng, 4, num_neurons, poisson)
        signals = jnp.asarray(rng.poisson(1.0, (num_bins, num_neurons)).astype(float))
        mask = jnp.asarray(rng.random(num_bins) > 0.2)
        path = jnp.asarray(rng.normal(size=(num_bins, 2)))
        pairs = jnp.asarray(rng.dirichlet(np.ones(16), size=num_bins - 1).reshape(-1, 4, 4))

        def total(z):
            return jnp.sum(slds._nonlinear_terms(params, poisson, True, signals, mask, pairs, z))

        gradient, hessian = slds._bin_derivatives(params, poisson, True, signals, mask, pairs, path)
        np.testing.assert_allclose(gradient, jax.grad(total)(path), atol=1e-10)
        full = jax.hessian(total)(path)
        np.testing.assert_allclose(hessian, jnp.stack([full[t, :, t] for t in range(num_bins)]),
                                   atol=1e-10)  # fmt: skip


def test_one_state_gaussian_slds_elbo_equals_the_kalman_log_likelihood():
    """With one state and no recurrence the model is an LDS and q(z) is its exact posterior,
    so the ELBO is log p(y): checked against `lds` (the project's Kalman filter), with
    unobserved bins."""
    rng = np.random.default_rng(2)
    num_neurons, num_bins = 5, 30
    dynamics = np.array([[0.9, -0.2], [0.2, 0.9]])
    arrays = dict(
        initial_mean=rng.normal(size=2), initial_cov=np.eye(2) * 0.5, dynamics=dynamics,
        dynamics_cov=np.array([[0.1, 0.02], [0.02, 0.2]]), emissions=rng.normal(size=(5, 2)),
        emissions_cov=rng.uniform(0.2, 0.5, 5), dynamics_bias=np.array([0.1, -0.2]),
        emissions_bias=rng.normal(size=5),
    )  # fmt: skip
    signals = rng.normal(size=(3, num_bins, num_neurons))
    mask = rng.random((3, num_bins)) > 0.2
    signals[~mask] = np.nan  # unobserved bins may hold anything
    trials = lj.Trials(signals, 0.01, mask=mask, continuous=True)
    with jax.enable_x64(True):
        kalman = lds.log_likelihood(
            lds.params_from_arrays(**arrays), trials, lds.Config(latent_dim=2)
        )
        params = slds.Params(
            jnp.ones(1), jnp.zeros((1, 1)), jnp.zeros((1, 2)), jnp.asarray(arrays["initial_mean"]),
            jnp.asarray(arrays["initial_cov"]), jnp.asarray(dynamics[None]),
            jnp.asarray(arrays["dynamics_bias"][None]), jnp.asarray(arrays["dynamics_cov"][None]),
            jnp.asarray(arrays["emissions"]), jnp.asarray(arrays["emissions_bias"]),
            jnp.asarray(arrays["emissions_cov"]),
        )  # fmt: skip
        config = slds.Config(num_states=1, recurrent=False)
        elbo = slds.log_likelihood(params, trials, config)
        np.testing.assert_allclose(elbo, kalman, rtol=1e-9)


def test_fixed_points_are_the_fixed_points_of_each_state_map():
    params = slds.Params(
        *[None] * 5,
        jnp.asarray([[[0.5, 0.1], [0.0, 0.8]], [[0.9, -0.3], [0.3, 0.9]]]),
        jnp.asarray([[1.0, 2.0], [-1.0, 0.5]]),
        *[None] * 4,
    )
    points = slds.fixed_points(params)
    for k in range(2):
        np.testing.assert_allclose(
            params.dynamics[k] @ points[k] + params.dynamics_bias[k], points[k], atol=1e-5
        )
        found = lj.geometry.fixed_points(
            slds.state_map, np.random.default_rng(0).normal(size=(8, 2)), kind="map",
            args=(params.dynamics[k], params.dynamics_bias[k]),
        )  # fmt: skip
        np.testing.assert_allclose(found.points[0], points[k], atol=1e-3)


def _fit_nascar(observations, num_trials, steps, baseline_config):
    """rSLDS and a single LDS/PLDS fitted on all but the last 10 trials; inferred on all, so
    the last 10 trials' scores are held out (one compiled posterior for both uses)."""
    data = lj.datasets.nascar(seed=0, num_trials=num_trials, observations=observations)
    train = data.trials[: num_trials - 10]
    config = slds.Config(train=lj.train.TrainConfig(steps=steps, chunk_size=steps))
    result = lj.fit(config, train, progress=False)
    posterior = lj.infer(result, data.trials)
    baseline = lj.infer(lj.fit(baseline_config, train, progress=False), data.trials)
    entries = 10 * data.trials.num_bins * data.trials.num_neurons
    return dict(
        data=data,
        posterior=posterior,
        held_out=-float(np.sum(posterior.log_likelihood[-10:])) / entries,
        baseline=-float(np.sum(baseline.log_likelihood[-10:])) / entries,
    )


@pytest.fixture(scope="module")
def gaussian_fit():
    config = lds.Config(latent_dim=2, train=lj.train.TrainConfig(steps=30, chunk_size=30))
    return _fit_nascar("gaussian", 40, 15, config)


@pytest.fixture(scope="module")
def poisson_fit():
    config = plds.Config(latent_dim=2, train=lj.train.TrainConfig(steps=15, chunk_size=15))
    return _fit_nascar("poisson", 50, 15, config)


def _check_nascar(fit, min_accuracy):
    posterior, truth = fit["posterior"], fit["data"].truth
    found = accuracy(np.asarray(posterior.most_likely), truth["states"])
    r2 = lj.metrics.latent_r2(truth["latents"], posterior.latents).mean
    assert found >= min_accuracy, found
    assert r2 >= 0.9, r2
    # held-out negative ELBO per entry below the baseline's held-out -log p(y) per entry
    assert fit["held_out"] < fit["baseline"], (fit["held_out"], fit["baseline"])
    assert posterior.states.shape == truth["states"].shape + (4,)
    assert posterior.fixed_points.shape == (4, 2)


def test_recurrent_slds_recovers_gaussian_nascar_and_beats_an_lds(gaussian_fit):
    _check_nascar(gaussian_fit, 0.9)
    figures = slds.figures(gaussian_fit["posterior"], gaussian_fit["data"].trials)
    assert set(figures) == {"states", "flow_fields"}


def test_recurrent_slds_recovers_poisson_nascar_and_beats_a_plds(poisson_fit):
    _check_nascar(poisson_fit, 0.8)


@pytest.mark.slow
@pytest.mark.parametrize("observations", ["gaussian", "poisson"])
def test_recurrent_slds_on_full_size_nascar(observations):
    """Larger: 90 training trials of 100 bins, 50 EM iterations (the LDS and PLDS their
    default iterations)."""
    baseline = lds.Config(latent_dim=2) if observations == "gaussian" else plds.Config(latent_dim=2)
    fit = _fit_nascar(observations, 100, 50, baseline)
    _check_nascar(fit, 0.9 if observations == "gaussian" else 0.8)


@pytest.mark.slow
def test_slds_without_recurrence_fits_and_infers():
    data = lj.datasets.nascar(seed=1, num_trials=6, num_bins=30, observations="gaussian")
    config = slds.Config(recurrent=False, train=lj.train.TrainConfig(steps=3, chunk_size=3))
    result = lj.fit(config, data.trials, progress=False)
    assert np.all(np.asarray(result.params.recurrence_weights) == 0)
    posterior = lj.infer(result, data.trials)
    assert np.all(np.isfinite(posterior.latents))
    np.testing.assert_allclose(np.asarray(posterior.states).sum(-1), 1.0, atol=1e-5)


def test_bad_inputs_raise_value_errors_naming_the_argument():
    bad = [("num_states", 0), ("latent_dim", 1.5), ("newton_iters", 0),
           ("observations", "gamma"), ("recurrent", 1), ("init_iters", -1)]  # fmt: skip
    for name, value in bad:
        with pytest.raises(ValueError, match=name):
            slds.Config(**{name: value})
    continuous = lj.datasets.nascar(seed=0, num_trials=3, num_bins=10, observations="gaussian")
    with pytest.raises(ValueError, match="observations"):
        slds.init(jax.random.PRNGKey(0), slds.Config(observations="poisson"), continuous.trials)
    with pytest.raises(ValueError, match="latent_dim"):
        slds.init(jax.random.PRNGKey(0), slds.Config(latent_dim=20), continuous.trials)


def test_nascar_latents_follow_the_dynamics_of_their_states():
    data = lj.datasets.nascar(seed=3, num_trials=5, num_bins=80, observations="gaussian")
    latents, states = data.truth["latents"].astype(float), data.truth["states"]
    params = data.truth["params"]
    predicted = np.einsum("btij,btj->bti", params["A"][states[:, 1:]], latents[:, :-1])
    residual = latents[:, 1:] - predicted - params["b"][states[:, 1:]]
    np.testing.assert_allclose(residual.std(), 0.02, rtol=0.1)  # dynamics_noise
    x, y = latents[:, :-1, 0], latents[:, :-1, 1]
    rule = np.where(x > 2, 0, np.where(x < -2, 1, np.where(y > 0, 2, 3)))
    np.testing.assert_array_equal(states[:, 1:], rule)
    assert set(np.unique(states)) == {0, 1, 2, 3}
    assert np.abs(latents[..., 1]).max() < 1.5 and np.abs(latents[..., 0]).max() < 3.5


def test_state_plots_draw_rasters_and_flow_fields():
    states = np.random.default_rng(0).integers(0, 3, (4, 30))
    figure = lj.plot.state_raster(states, truth=states)
    assert len(figure.axes) == 3  # two panels and the colour bar
    dynamics = np.stack([np.eye(2) * 0.9, [[0.9, -0.2], [0.2, 0.9]]])
    latents = np.random.default_rng(1).normal(size=(3, 20, 2))
    figure = lj.plot.state_flow_fields(dynamics, np.ones((2, 2)), latents=latents,
                                       states=states[:3, :20] % 2)  # fmt: skip
    assert len(figure.axes) == 2
    with pytest.raises(ValueError, match="biases"):
        lj.plot.state_flow_fields(dynamics, np.ones(2))
