"""GPFA: exact E-step against a dense joint Gaussian, EM monotonicity, timescale recovery."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from em_paths import assert_same_em_steps

import latentjax as lj
from latentjax.models import gpfa
from latentjax.nn import gp


def simulate_gpfa(rng, num_trials, num_bins, num_neurons, timescales, dt, noise=0.2):
    """Latent GPs with squared-exponential kernels read out linearly with Gaussian noise."""
    times = np.arange(num_bins) * dt
    lag2 = (times[:, None] - times[None, :]) ** 2
    latents = np.stack(
        [
            rng.multivariate_normal(
                np.zeros(num_bins),
                (1 - 1e-3) * np.exp(-lag2 / (2 * tau**2)) + 1e-3 * np.eye(num_bins),
                size=num_trials,
            )
            for tau in timescales
        ],
        axis=-1,
    )
    loadings = rng.normal(size=(num_neurons, len(timescales)))
    offset = rng.normal(size=num_neurons)
    noise_variance = noise * (0.5 + rng.uniform(size=num_neurons))
    observations = latents @ loadings.T + offset
    observations += rng.normal(size=observations.shape) * np.sqrt(noise_variance)
    return observations, (loadings, offset, noise_variance)


def dense_posterior(params, y, times, mask, gp_noise_variance):
    """Condition the joint Gaussian of (all latents, observed y) directly, in NumPy."""
    loadings, offset, noise_variance, timescales = params
    num_neurons, num_latents = loadings.shape
    num_bins = len(times)
    lag2 = (times[:, None] - times[None, :]) ** 2
    prior = np.zeros((num_latents * num_bins,) * 2)
    for k, tau in enumerate(timescales):
        block = slice(k * num_bins, (k + 1) * num_bins)
        prior[block, block] = (1 - gp_noise_variance) * np.exp(-lag2 / (2 * tau**2))
        prior[block, block] += gp_noise_variance * np.eye(num_bins)
    observed = np.flatnonzero(mask)
    readout = np.zeros((len(observed) * num_neurons, num_latents * num_bins))
    for i, t in enumerate(observed):
        readout[i * num_neurons : (i + 1) * num_neurons, np.arange(num_latents) * num_bins + t] = (
            loadings
        )
    y_cov = readout @ prior @ readout.T + np.kron(np.eye(len(observed)), np.diag(noise_variance))
    y_centred = (y[observed] - offset).reshape(-1)
    gain = prior @ readout.T @ np.linalg.inv(y_cov)
    mean = (gain @ y_centred).reshape(num_latents, num_bins).T
    covariance = prior - gain @ readout @ prior
    log_lik = scipy.stats.multivariate_normal(np.zeros(len(y_centred)), y_cov).logpdf(y_centred)
    return mean, covariance, log_lik


def test_e_step_equals_dense_joint_gaussian_with_missing_bins():
    rng = np.random.default_rng(0)
    timescales = np.array([0.04, 0.15])
    y, (loadings, offset, noise_variance) = simulate_gpfa(rng, 1, 7, 4, timescales, 0.02)
    times = np.sort(rng.uniform(0, 0.2, 7))  # irregular sampling
    mask = np.array([1, 1, 0, 1, 1, 0, 1], bool)
    with jax.enable_x64(True):
        params = gpfa.GPFAParams(
            jnp.asarray(loadings), jnp.asarray(offset), jnp.asarray(noise_variance),
            jnp.log(jnp.asarray(timescales)),
        )  # fmt: skip
        post = gpfa.trial_posterior(params, jnp.asarray(y[0]), jnp.asarray(times), mask, 1e-3)
        mean, covariance, log_lik = dense_posterior(
            (loadings, offset, noise_variance, timescales), y[0], times, mask, 1e-3
        )
        np.testing.assert_allclose(post.mean, mean, atol=1e-10)
        np.testing.assert_allclose(post.covariance, covariance, atol=1e-10)
        np.testing.assert_allclose(post.log_likelihood, log_lik, rtol=1e-12)
        # the validation score: the same exact marginal, negated, per observed entry
        trials = lj.Trials(y, dt=0.02, times=times[None], mask=mask[None], continuous=True)
        config = gpfa.Config(latent_dim=2, sqrt_transform=False, gp_noise_variance=1e-3)
        score, _ = gpfa.validation_loss(params, trials, None, config, 0)
        np.testing.assert_allclose(float(score), -log_lik / (mask.sum() * 4), rtol=1e-12)


def test_timescale_derivatives_match_autodiff():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        times = jnp.asarray(np.sort(rng.uniform(0, 1, (3, 12)), axis=1))
        factors = rng.normal(size=(3, 2, 12, 4))
        moments = jnp.asarray(factors @ factors.swapaxes(-1, -2) / 4)
        theta = jnp.log(jnp.array([0.05, 0.3]))
        value, first, second = gp.timescale_terms(theta, times, moments, 1e-3)

        def total(theta):
            return gp._timescale_value(theta, times, moments, 1e-3).sum()

        np.testing.assert_allclose(value.sum(), total(theta), rtol=1e-12)
        np.testing.assert_allclose(first, jax.grad(total)(theta), rtol=1e-9)
        np.testing.assert_allclose(second, jnp.diag(jax.hessian(total)(theta)), rtol=1e-8)


def test_em_log_likelihood_never_decreases_float64():
    rng = np.random.default_rng(2)
    y, _ = simulate_gpfa(rng, 8, 15, 6, [0.05, 0.2], 0.02)
    mask = np.ones(y.shape[:2], bool)
    mask[0, 10:] = False  # one padded trial
    trials = lj.Trials(y, dt=0.02, mask=mask, continuous=True)
    config = gpfa.Config(latent_dim=2, sqrt_transform=False)
    with jax.enable_x64(True):
        fitter = gpfa.fitter(config)
        state = fitter.init(gpfa.init(jax.random.PRNGKey(0), config, trials), trials)
        step = jax.jit(fitter.step)
        log_liks = []
        for i in range(15):
            state, info = step(state, trials, jax.random.PRNGKey(i))
            log_liks.append(float(info["log_likelihood"]))
    assert np.all(np.diff(log_liks) >= -1e-8 * abs(log_liks[-1])), np.diff(log_liks)
    assert log_liks[-1] > log_liks[0] + 1.0


def test_trials_sharing_their_bin_times_are_pooled_without_changing_an_em_step():
    """Equal-length, fully observed trials take the pooled path (factorisations once); the
    same trials with one trial's clock shifted by a second (the model only sees time
    differences) take the per-trial path: both EM steps must agree."""
    rng = np.random.default_rng(4)
    y, _ = simulate_gpfa(rng, 5, 12, 6, [0.05, 0.2], 0.02)
    times = np.tile(np.arange(12) * 0.02, (5, 1))
    shifted = times.copy()
    shifted[2] += 1.0
    config = gpfa.Config(latent_dim=2, sqrt_transform=False)
    trial_sets = [lj.Trials(y, dt=0.02, times=t, continuous=True) for t in (times, shifted)]
    params = assert_same_em_steps(gpfa, config, trial_sets)
    assert not np.allclose(params.log_timescales, np.log(0.1), atol=0.05)


def recovered_timescales(timescales, num_trials, num_bins, steps, seed=3):
    rng = np.random.default_rng(seed)
    y, _ = simulate_gpfa(rng, num_trials, num_bins, 20, timescales, 0.02, noise=0.5)
    trials = lj.Trials(y, dt=0.02, continuous=True)
    config = gpfa.Config(latent_dim=len(timescales), sqrt_transform=False)
    result = lj.fit(config, trials, steps=steps, progress=False)
    assert np.all(np.diff(result.history["log_likelihood"]) > -1e-3 * num_trials * num_bins)
    return np.sort(np.asarray(lj.infer(result, trials).timescales))


def test_recovers_two_timescales_within_20_percent():
    truth = np.array([0.04, 0.2])
    estimate = recovered_timescales(truth, num_trials=24, num_bins=30, steps=60)
    np.testing.assert_allclose(estimate, truth, rtol=0.2)


@pytest.mark.slow
def test_recovers_three_timescales_within_20_percent():
    truth = np.array([0.05, 0.1, 0.2])
    estimate = recovered_timescales(truth, num_trials=40, num_bins=50, steps=300)
    np.testing.assert_allclose(estimate, truth, rtol=0.2)


def test_posterior_shapes_orthonormal_basis_and_rates_through_the_api():
    rng = np.random.default_rng(4)
    rates = np.exp(rng.normal(size=(1, 1, 8)) * 0.5 + np.sin(np.linspace(0, 3, 20))[None, :, None])
    spikes = rng.poisson(np.broadcast_to(rates, (6, 20, 8)))
    trials = lj.Trials(spikes, dt=0.01)
    result = lj.fit(gpfa.Config(latent_dim=2), trials, steps=10, progress=False)
    post = lj.infer(result, trials)
    assert post.latents.shape == (6, 20, 2)
    assert post.rates.shape == (6, 20, 8)
    assert post.covariances.shape == (6, 20, 2, 2)
    assert np.all(np.asarray(post.rates) > 0)
    # Orthonormalised latents: C x = U (S V' x), ordered by singular value.
    loadings = np.asarray(result.params.loadings)
    np.testing.assert_allclose(
        post.latents @ np.asarray(post.loadings).T,
        post.gp_latents @ loadings.T,
        rtol=1e-4,
        atol=1e-4,
    )
    assert np.all(np.diff(np.linalg.svd(loadings, compute_uv=False)) <= 0)
    # Rates close to the counts' mean on average (the variance term keeps them unbiased).
    np.testing.assert_allclose(np.mean(post.rates), spikes.mean(), rtol=0.15)


def test_expected_clipped_square_matches_monte_carlo():
    rng = np.random.default_rng(5)
    mean, variance = np.array([-0.3, 0.2, 1.5]), np.array([0.2, 0.3, 0.1])
    samples = mean + np.sqrt(variance) * rng.normal(size=(400_000, 3))
    np.testing.assert_allclose(
        gp.expected_clipped(mean, variance, True),
        np.mean(np.maximum(samples, 0) ** 2, axis=0),
        rtol=1e-2,
    )
    np.testing.assert_allclose(
        gp.expected_clipped(mean, variance, False),
        np.mean(np.maximum(samples, 0), axis=0),
        rtol=1e-2,
    )


def test_rejects_bad_input():
    trials = lj.Trials(np.ones((2, 5, 3)), dt=0.01)
    with pytest.raises(ValueError, match="latent_dim"):
        gpfa.Config(latent_dim=0)
    with pytest.raises(ValueError, match="gp_noise_variance"):
        gpfa.Config(gp_noise_variance=1.5)
    with pytest.raises(ValueError, match="latent_dim"):
        gpfa.init(jax.random.PRNGKey(0), gpfa.Config(latent_dim=4), trials)
    signals = lj.Trials(-np.ones((2, 5, 3)), dt=0.01, continuous=True)
    with pytest.raises(ValueError, match="sqrt_transform"):
        gpfa.init(jax.random.PRNGKey(0), gpfa.Config(latent_dim=2), signals)
