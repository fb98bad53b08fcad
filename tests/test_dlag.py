"""DLAG: exact E-step against a dense joint Gaussian, EM monotonicity, delay and timescale
recovery on data simulated from the model, delay sign on `lj.datasets.multiregion`, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from em_paths import assert_same_em_steps

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
        # the validation score: the same exact marginal, negated, per observed entry
        trials = _trials(y, regions, 0.02, mask=mask[None])
        config = dlag.Config(
            across_dim=2, within_dim=1, sqrt_transform=False, gp_noise_variance=GP_NOISE
        )
        score, _ = dlag.validation_loss(jax.tree.map(jnp.asarray, params), trials, None, config, 0)
        np.testing.assert_allclose(float(score), -log_lik / (mask.sum() * 7), rtol=1e-10)


def _trials(y, regions, dt, mask=None):
    return lj.Trials(y, dt=dt, mask=mask, regions=[f"R{r}" for r in regions], continuous=True)


def test_em_log_likelihood_never_decreases_float64():
    dt = 0.02
    times = np.arange(12) * dt
    config = dlag.Config(across_dim=1, within_dim=1, max_delay=0.1, sqrt_transform=False)
    fitter = dlag.fitter(config)
    with jax.enable_x64(True):
        step = jax.jit(fitter.step)  # compiled once: every seed has the same shapes
        for seed in range(3):
            rng = np.random.default_rng(10 + seed)
            delays = np.array([[0.0], [1.5 * dt]])
            y, regions, _ = simulate_dlag(
                rng, 6, times, [5, 5], np.array([0.08]), np.array([[0.05], [0.15]]), delays
            )
            mask = np.ones(y.shape[:2], bool)
            mask[0, 8:] = False  # one padded trial
            trials = _trials(y, regions, dt, mask)
            state = fitter.init(dlag.init(jax.random.PRNGKey(seed), config, trials), trials)
            log_liks = []
            for i in range(12):
                state, info = step(state, trials, jax.random.PRNGKey(i))
                log_liks.append(float(info["log_likelihood"]))
            assert np.all(np.diff(log_liks) >= -1e-8 * abs(log_liks[-1])), (seed, np.diff(log_liks))
            assert log_liks[-1] > log_liks[0] + 1.0


def test_trials_sharing_their_bin_times_are_pooled_without_changing_an_em_step():
    """As in GPFA: one trial's clock shifted by a second forces the per-trial path, which
    must give the pooled path's EM steps (delays and timescales included)."""
    dt = 0.02
    times = np.arange(10) * dt
    config = dlag.Config(across_dim=1, within_dim=1, max_delay=0.1, sqrt_transform=False)
    rng = np.random.default_rng(5)
    y, regions, _ = simulate_dlag(
        rng, 4, times, [4, 4], np.array([0.08]), np.array([[0.05], [0.15]]),
        np.array([[0.0], [1.5 * dt]]),
    )  # fmt: skip
    shifted = np.tile(times, (4, 1))
    shifted[1] += 1.0
    labels = [f"R{r}" for r in regions]
    trial_sets = [
        lj.Trials(y, dt=dt, times=t, regions=labels, continuous=True)
        for t in (np.tile(times, (4, 1)), shifted)
    ]
    assert_same_em_steps(dlag, config, trial_sets)


def fit_simulated(num_trials, num_bins, steps, seed=3):
    """Fit DLAG to data simulated from it: 2 regions, across latents delayed by +2 and -1.5
    bins in region 1, distinct timescales, one within latent per region."""
    rng = np.random.default_rng(seed)
    dt = 0.02
    truth_delays = np.array([[0.0, 0.0], [2.0 * dt, -1.5 * dt]])
    truth_timescales = np.array([0.06, 0.15])
    y, regions, _ = simulate_dlag(
        rng,
        num_trials,
        np.arange(num_bins) * dt,
        [15, 15],
        truth_timescales,
        np.array([[0.04], [0.1]]),
        truth_delays,
    )
    config = dlag.Config(
        across_dim=2,
        within_dim=1,
        max_delay=0.1,
        sqrt_transform=False,
        train=lj.train.TrainConfig(steps=steps, chunk_size=steps),
    )
    result = lj.fit(config, _trials(y, regions, dt), progress=False)
    post = lj.infer(result, _trials(y, regions, dt))
    order = np.argsort(np.asarray(post.timescales))  # match latents to truth by timescale
    return (
        np.asarray(post.delays_bins)[1, order],
        np.asarray(post.timescales)[order],
        truth_delays[1] / dt,
        truth_timescales,
    )


@pytest.mark.slow
def test_recovers_delays_within_half_a_bin_and_timescales_within_20_percent():
    delays, timescales, truth_delays, truth_timescales = fit_simulated(40, 30, steps=400)
    np.testing.assert_allclose(delays, truth_delays, atol=0.5)
    np.testing.assert_allclose(timescales, truth_timescales, rtol=0.2)


@pytest.mark.slow  # ~20 s of EM on the multi-region dataset
def test_dominant_delay_sign_on_multiregion_dataset():
    """`lj.datasets.multiregion`: edge R0 -> R1 with a 2-bin delay, Poisson spikes."""
    data = lj.datasets.multiregion(
        seed=0, num_trials=20, num_bins=30, num_regions=2, edges=((0, 1),), delays=(2,)
    )
    config = dlag.Config(across_dim=1, within_dim=1, max_delay=0.05)
    fitter = dlag.fitter(config)  # stepped directly: compiles faster than lj.fit's program
    state = fitter.init(dlag.init(jax.random.PRNGKey(0), config, data.trials), data.trials)
    step = jax.jit(fitter.step)
    for i in range(10):
        state, _ = step(state, data.trials, jax.random.PRNGKey(i))
    post = dlag.posterior(state.params, data.trials, config)
    dominant = np.argmax(np.sum(np.asarray(post.across_loadings) ** 2, axis=0))
    assert post.delays_bins[1, dominant] > 0, np.asarray(post.delays_bins)


def test_posterior_layout_through_the_api():
    rng = np.random.default_rng(5)
    spikes = rng.poisson(2.0, size=(4, 10, 7))
    regions = ["V1"] * 3 + ["V2"] * 4
    trials = lj.Trials(spikes, dt=0.01, regions=regions)
    result = lj.fit(dlag.Config(across_dim=2, within_dim=1), trials, steps=2, progress=False)
    post = lj.infer(result, trials)
    assert post.latents.shape == (4, 10, 2 + 2 * 1)
    assert post.rates.shape == (4, 10, 7) and np.all(np.asarray(post.rates) > 0)
    assert post.across_latents.shape == (4, 10, 2, 2)
    assert post.covariances.shape == (4, 10, 4, 4)
    assert post.delays.shape == post.delays_bins.shape == (2, 2)
    assert post.within_timescales.shape == (2, 1)
    assert list(post.region_names) == ["V1", "V2"]
    np.testing.assert_array_equal(post.delays[0], 0.0)
    np.testing.assert_allclose(post.latents[..., :2], post.across_latents[:, :, 0])
    assert post.log_likelihood.shape == (4,)
    assert len(result.history["log_likelihood"]) == 1


def test_rejects_bad_input():
    counts = np.ones((2, 5, 4))
    two_regions = lj.Trials(counts, dt=0.01, regions=["a", "a", "b", "b"])
    key = jax.random.PRNGKey(0)
    for field, value in [
        ("across_dim", 0),
        ("within_dim", -1),
        ("max_delay", 0.0),
        ("gp_noise_variance", 1.5),
        ("newton_steps", 0),
    ]:
        with pytest.raises(ValueError, match=field):
            dlag.Config(**{field: value})
    with pytest.raises(ValueError, match="regions"):
        dlag.init(key, dlag.Config(), lj.Trials(counts, dt=0.01))
    with pytest.raises(ValueError, match="at least 2 regions"):
        dlag.init(key, dlag.Config(), lj.Trials(counts, dt=0.01, regions=["a"] * 4))
    with pytest.raises(ValueError, match="fewer than"):
        dlag.init(key, dlag.Config(across_dim=2, within_dim=1), two_regions)
    with pytest.raises(ValueError, match="sqrt_transform"):
        dlag.init(
            key, dlag.Config(), lj.Trials(-counts, dt=0.01, continuous=True, regions=list("aabb"))
        )
    with pytest.raises(ValueError, match="neurons"):
        params = dlag.init(key, dlag.Config(), two_regions)
        three = lj.Trials(np.ones((2, 5, 6)), dt=0.01, regions=["a", "a", "b", "b", "c", "c"])
        dlag.posterior(params, three, dlag.Config())
