"""DLAG: exact E-step against a dense joint Gaussian, EM monotonicity, delay and timescale
recovery on data simulated from the model, delay sign on `lj.datasets.multiregion`, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import latentjax as lj
from latentjax.multiregion import dlag

GP_NOISE = 1e-3


def se_covariance(times_a, times_b, timescale, same_variable):
    """Squared-exponential covariance between two sets of (delayed) times, GP noise on the
    diagonal of one variable's own covariance."""
    lag = np.subtract.outer(times_a, times_b)
    cov = (1 - GP_NOISE) * np.exp(-(lag**2) / (2 * timescale**2))
    return cov + GP_NOISE * np.eye(len(times_a)) if same_variable else cov


def latent_variables(num_regions, num_across, num_within):
    """Names of the latent trajectories: ("across", j, r) seen by region r, ("within", k, r)."""
    across = [("across", j, r) for j in range(num_across) for r in range(num_regions)]
    within = [("within", k, r) for k in range(num_within) for r in range(num_regions)]
    return across + within


def prior_covariance(variables, times, across_timescales, within_timescales, delays):
    """Dense prior covariance of all latent trajectories, variable by variable."""
    num_bins = len(times)
    cov = np.zeros((len(variables) * num_bins,) * 2)
    for (a, var_a), (b, var_b) in itertools.product(enumerate(variables), repeat=2):
        kind_a, index_a, region_a = var_a
        kind_b, index_b, region_b = var_b
        if kind_a != kind_b or index_a != index_b:
            continue
        if kind_a == "within" and region_a != region_b:
            continue
        if kind_a == "across":
            block = se_covariance(
                times - delays[region_a, index_a],
                times - delays[region_b, index_b],
                across_timescales[index_a],
                region_a == region_b,
            )
        else:
            block = se_covariance(times, times, within_timescales[region_a, index_a], True)
        cov[a * num_bins : (a + 1) * num_bins, b * num_bins : (b + 1) * num_bins] = block
    return cov


def simulate_dlag(rng, num_trials, times, neurons, across_timescales, within_timescales, delays):
    """Observations `[trials, time, neurons]` drawn from the DLAG model, and its parameters."""
    num_regions, num_across = delays.shape
    num_within = within_timescales.shape[1]
    variables = latent_variables(num_regions, num_across, num_within)
    cov = prior_covariance(variables, times, across_timescales, within_timescales, delays)
    latents = rng.multivariate_normal(np.zeros(len(cov)), cov, size=num_trials, method="cholesky")
    latents = latents.reshape(num_trials, len(variables), len(times))
    regions = np.repeat(np.arange(num_regions), neurons)
    num_neurons = len(regions)
    across = rng.normal(size=(num_neurons, num_across))
    within = rng.normal(size=(num_neurons, num_within))
    offset = rng.normal(size=num_neurons)
    noise_variance = 0.3 * (0.5 + rng.uniform(size=num_neurons))
    y = np.zeros((num_trials, len(times), num_neurons)) + offset
    for v, (kind, index, region) in enumerate(variables):
        weights = (across if kind == "across" else within)[:, index] * (regions == region)
        y += latents[:, v, :, None] * weights
    y += rng.normal(size=y.shape) * np.sqrt(noise_variance)
    params = dlag.DLAGParams(
        across_loadings=across,
        within_loadings=within,
        offset=offset,
        noise_variance=noise_variance,
        log_across_timescales=np.log(across_timescales),
        log_within_timescales=np.log(within_timescales),
        delays=delays,
    )
    return y, regions, params


def dense_posterior(params, y, times, mask, regions):
    """Condition the joint Gaussian of (all latent trajectories, observed y) in NumPy."""
    num_regions, num_across = params.delays.shape
    num_within = params.within_loadings.shape[1]
    variables = latent_variables(num_regions, num_across, num_within)
    prior = prior_covariance(
        variables,
        times,
        np.exp(params.log_across_timescales),
        np.exp(params.log_within_timescales),
        params.delays,
    )
    num_bins, num_neurons = y.shape
    observed = np.flatnonzero(mask)
    readout = np.zeros((len(observed), num_neurons, len(variables), num_bins))
    for v, (kind, index, region) in enumerate(variables):
        loadings = params.across_loadings if kind == "across" else params.within_loadings
        for i, t in enumerate(observed):
            readout[i, :, v, t] = loadings[:, index] * (regions == region)
    readout = readout.reshape(len(observed) * num_neurons, -1)
    y_cov = readout @ prior @ readout.T + np.diag(np.tile(params.noise_variance, len(observed)))
    y_centred = (y[observed] - params.offset).reshape(-1)
    gain = np.linalg.solve(y_cov, readout @ prior).T
    mean = gain @ y_centred
    covariance = prior - gain @ readout @ prior
    log_lik = scipy.stats.multivariate_normal(np.zeros(len(y_centred)), y_cov).logpdf(y_centred)
    return variables, mean.reshape(len(variables), num_bins), covariance, log_lik


def test_e_step_equals_dense_joint_gaussian_with_missing_bin():
    rng = np.random.default_rng(0)
    times = np.arange(6) * 0.02
    delays = np.array([[0.0, 0.0], [0.03, -0.025]])  # region 1 lags on latent 0, leads on 1
    y, regions, params = simulate_dlag(
        rng, 1, times, [3, 4], np.array([0.05, 0.1]), np.array([[0.04], [0.08]]), delays
    )
    mask = np.array([1, 1, 0, 1, 1, 1], bool)
    variables, mean, covariance, log_lik = dense_posterior(params, y[0], times, mask, regions)
    with jax.enable_x64(True):
        post = dlag.trial_posterior(
            jax.tree.map(jnp.asarray, params),
            jnp.asarray(y[0]),
            jnp.asarray(times),
            jnp.asarray(mask),
            jnp.asarray(regions),
            GP_NOISE,
        )
        # internal latent p = g * R + r with groups: across latents, then within latents
        order = [
            (index if kind == "across" else 2 + index) * 2 + region
            for kind, index, region in variables
        ]
        np.testing.assert_allclose(np.asarray(post.mean)[:, order].T, mean, atol=1e-8)
        internal = (np.asarray(order)[:, None] * len(times) + np.arange(len(times))).reshape(-1)
        np.testing.assert_allclose(
            np.asarray(post.covariance)[np.ix_(internal, internal)], covariance, atol=1e-8
        )
        np.testing.assert_allclose(post.log_likelihood, log_lik, rtol=1e-10)


def _trials(y, regions, dt, mask=None):
    return lj.Trials(y, dt=dt, mask=mask, regions=[f"R{r}" for r in regions], continuous=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_log_likelihood_never_decreases_float64(seed):
    rng = np.random.default_rng(10 + seed)
    dt = 0.02
    times = np.arange(12) * dt
    delays = np.array([[0.0], [1.5 * dt]])
    y, regions, _ = simulate_dlag(
        rng, 6, times, [5, 5], np.array([0.08]), np.array([[0.05], [0.15]]), delays
    )
    mask = np.ones(y.shape[:2], bool)
    mask[0, 8:] = False  # one padded trial
    trials = _trials(y, regions, dt, mask)
    config = dlag.Config(across_dim=1, within_dim=1, max_delay=0.1, sqrt_transform=False)
    with jax.enable_x64(True):
        fitter = dlag.fitter(config)
        state = fitter.init(dlag.init(jax.random.PRNGKey(seed), config, trials), trials)
        step = jax.jit(fitter.step)
        log_liks = []
        for i in range(12):
            state, info = step(state, trials, jax.random.PRNGKey(i))
            log_liks.append(float(info["log_likelihood"]))
    assert np.all(np.diff(log_liks) >= -1e-8 * abs(log_liks[-1])), np.diff(log_liks)
    assert log_liks[-1] > log_liks[0] + 1.0
