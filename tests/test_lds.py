"""Gaussian LDS: exact inference against an independent NumPy RTS smoother, EM, recovery."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import scipy.stats

import latentjax as lj
from latentjax.models import lds

NUM_LATENTS, NUM_NEURONS, NUM_BINS = 3, 7, 40


def random_system(seed, num_latents=NUM_LATENTS, num_neurons=NUM_NEURONS):
    rng = np.random.default_rng(seed)
    dynamics = rng.normal(size=(num_latents, num_latents))
    dynamics *= rng.uniform(0.5, 0.99) / np.max(np.abs(np.linalg.eigvals(dynamics)))
    factor = rng.normal(size=(num_latents, num_latents))
    return dict(
        initial_mean=rng.normal(size=num_latents),
        initial_cov=factor @ factor.T + np.eye(num_latents),
        dynamics=dynamics,
        dynamics_cov=np.diag(rng.uniform(0.05, 0.3, num_latents)),
        dynamics_bias=0.1 * rng.normal(size=num_latents),
        emissions=rng.normal(size=(num_neurons, num_latents)),
        emissions_cov=rng.uniform(0.2, 1.5, num_neurons),
        emissions_bias=rng.normal(size=num_neurons),
    )


def reference_smoother(system, y, bin_mask):
    """Covariance-form Kalman filter + RTS smoother; observed rows are selected explicitly."""
    m, P = system["initial_mean"], system["initial_cov"]
    num_bins, num_latents = len(y), len(m)
    F, Q, C, r = (
        system["dynamics"],
        system["dynamics_cov"],
        system["emissions"],
        system["emissions_cov"],
    )
    # biases may vary in time ([T, K], [T, N]); the transition into bin t uses b[t]
    b = np.broadcast_to(system["dynamics_bias"], (num_bins, num_latents))
    d = np.broadcast_to(system["emissions_bias"], y.shape)
    filtered_means, filtered_covs, predicted_means, predicted_covs = [], [], [], []
    log_likelihood = 0.0
    for t in range(num_bins):
        predicted_means.append(m)
        predicted_covs.append(P)
        observed = bin_mask[t] & ~np.isnan(y[t])
        if observed.any():
            C_o = C[observed]
            S = C_o @ P @ C_o.T + np.diag(r[observed])
            mean_y = C_o @ m + d[t, observed]
            log_likelihood += scipy.stats.multivariate_normal(mean_y, S).logpdf(y[t, observed])
            gain = P @ C_o.T @ np.linalg.inv(S)
            m = m + gain @ (y[t, observed] - mean_y)
            P = P - gain @ S @ gain.T
        filtered_means.append(m)
        filtered_covs.append(P)
        m, P = F @ m + b[min(t + 1, num_bins - 1)], F @ P @ F.T + Q
    means, covs = [filtered_means[-1]], [filtered_covs[-1]]
    for t in range(num_bins - 2, -1, -1):
        gain = filtered_covs[t] @ F.T @ np.linalg.inv(predicted_covs[t + 1])
        means.insert(0, filtered_means[t] + gain @ (means[0] - predicted_means[t + 1]))
        covs.insert(0, filtered_covs[t] + gain @ (covs[0] - predicted_covs[t + 1]) @ gain.T)
    return dict(
        filtered_means=np.array(filtered_means),
        filtered_covs=np.array(filtered_covs),
        means=np.array(means),
        covs=np.array(covs),
        log_likelihood=log_likelihood,
    )


def simulate(system, num_bins, seed):
    rng = np.random.default_rng(seed + 1000)
    num_latents = len(system["initial_mean"])
    z = rng.multivariate_normal(system["initial_mean"], system["initial_cov"])
    latents, signals = [], []
    for _ in range(num_bins):
        latents.append(z)
        noise = rng.normal(size=len(system["emissions_cov"])) * np.sqrt(system["emissions_cov"])
        signals.append(system["emissions"] @ z + system["emissions_bias"] + noise)
        z = system["dynamics"] @ z + system["dynamics_bias"]
        z = z + np.linalg.cholesky(system["dynamics_cov"]) @ rng.normal(size=num_latents)
    return np.array(latents), np.array(signals)


CASES = ("complete", "missing_bins", "missing_entries", "padded")


@pytest.mark.parametrize("case", CASES)
def test_smoother_matches_numpy_reference(case):
    with jax.enable_x64(True):
        for seed in range(10):
            system = random_system(seed)
            _, y = simulate(system, NUM_BINS, seed)
            rng = np.random.default_rng(seed)
            bin_mask = np.ones(NUM_BINS, bool)
            length = NUM_BINS
            if case == "missing_bins":
                bin_mask[rng.choice(NUM_BINS, 10, replace=False)] = False
            elif case == "missing_entries":
                y[rng.random(y.shape) < 0.3] = np.nan
                y[5] = np.nan  # one bin missing entirely
            elif case == "padded":
                length = 27
                bin_mask[length:] = False
                y[length:] = 1e6  # padding values must be ignored
            reference = reference_smoother(system, y[:length], bin_mask[:length])
            params = lds.params_from_arrays(**system)
            mask = None if case in ("complete", "missing_entries") else bin_mask
            for parallel in (False, True):
                result = lds.smoother(params, y, mask=mask, parallel=parallel)
                np.testing.assert_allclose(result.means[:length], reference["means"], atol=1e-8)
                np.testing.assert_allclose(
                    result.covariances[:length], reference["covs"], atol=1e-8
                )
                assert abs(result.log_likelihood - reference["log_likelihood"]) < 1e-8
                np.testing.assert_allclose(
                    result.filtered.means[:length], reference["filtered_means"], atol=1e-8
                )
                np.testing.assert_allclose(
                    result.filtered.covariances[:length], reference["filtered_covs"], atol=1e-8
                )
                assert abs(result.filtered.log_likelihood - reference["log_likelihood"]) < 1e-8


def test_filter_equals_the_smoothers_forward_pass():
    with jax.enable_x64(True):
        system = random_system(4)
        _, y = simulate(system, NUM_BINS, 4)
        params = lds.params_from_arrays(**system)
        filtered = lds.filter(params, y)
        smoothed = lds.smoother(params, y)
        for a, b in zip(jax.tree.leaves(filtered), jax.tree.leaves(smoothed.filtered), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-12)


def test_trials_sharing_parameters_share_their_covariances_under_vmap():
    """Covariances and gains depend only on the parameters when no entry is missing, so a
    vmap over trials must compute them once (`out_axes=None` raises if they depend on the
    trial): a data dependency slipped into them made 100 trials 12x slower."""
    system = random_system(4)
    params = lds.params_from_arrays(**system)
    ys = jnp.stack([jnp.asarray(simulate(system, NUM_BINS, seed)[1]) for seed in range(3)])

    def moments(y):
        smoothed = lds.smoother(params, y, missing_entries=False)
        return smoothed.covariances, smoothed.cross_covariances

    covs, cross = jax.vmap(moments, out_axes=None)(ys)
    single = lds.smoother(params, ys[1], missing_entries=False)
    np.testing.assert_allclose(covs, single.covariances, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cross, single.cross_covariances, rtol=1e-5, atol=1e-6)


def test_parallel_equals_sequential_cross_covariances():
    with jax.enable_x64(True):
        system = random_system(3)
        params = lds.params_from_arrays(**system)
        _, y = lds.sample(params, NUM_BINS, key=jax.random.PRNGKey(3))
        sequential = lds.smoother(params, y)
        parallel = lds.smoother(params, y, parallel=True)
        for a, b in zip(jax.tree.leaves(sequential), jax.tree.leaves(parallel), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-9)
        # the lag-one cross-covariance against the dense joint posterior (independent truth)
        dense = _dense_posterior_covariance(system, NUM_BINS)
        k = NUM_LATENTS
        for t in (0, 17, NUM_BINS - 2):
            block = dense[t * k : (t + 1) * k, (t + 1) * k : (t + 2) * k]
            np.testing.assert_allclose(sequential.cross_covariances[t], block, atol=1e-8)


def _dense_posterior_covariance(system, num_bins):
    """Cov(z_{0:T} | y) from the joint Gaussian precision (block tridiagonal, built densely)."""
    k = len(system["initial_mean"])
    F, C = system["dynamics"], system["emissions"]
    Q_inv = np.linalg.inv(system["dynamics_cov"])
    precision = np.zeros((num_bins * k, num_bins * k))
    obs = C.T @ np.diag(1 / system["emissions_cov"]) @ C
    for t in range(num_bins):
        s = slice(t * k, (t + 1) * k)
        precision[s, s] += obs
        if t == 0:
            precision[s, s] += np.linalg.inv(system["initial_cov"])
        else:
            p = slice((t - 1) * k, t * k)
            precision[s, s] += Q_inv
            precision[p, p] += F.T @ Q_inv @ F
            precision[p, s] -= F.T @ Q_inv
            precision[s, p] -= Q_inv @ F
    return np.linalg.inv(precision)


def test_inputs_match_reference_with_time_varying_biases():
    """Inputs drive latents (B u_t) and emissions (D u_t): a reference with biases b + B u_t."""
    with jax.enable_x64(True):
        system = random_system(7)
        rng = np.random.default_rng(7)
        inputs = rng.normal(size=(NUM_BINS, 2))
        B, D = rng.normal(size=(NUM_LATENTS, 2)), rng.normal(size=(NUM_NEURONS, 2))
        _, y = simulate(system, NUM_BINS, 7)
        params = lds.params_from_arrays(
            **system, dynamics_input_weights=B, emissions_input_weights=D
        )
        result = lds.smoother(params, y, inputs=inputs)
        folded = dict(
            system,
            dynamics_bias=system["dynamics_bias"] + inputs @ B.T,
            emissions_bias=system["emissions_bias"] + inputs @ D.T,
        )
        reference = reference_smoother(folded, y, np.ones(NUM_BINS, bool))
        np.testing.assert_allclose(result.means, reference["means"], atol=1e-8)
        assert abs(result.log_likelihood - reference["log_likelihood"]) < 1e-8


def test_params_from_arrays_validates():
    system = random_system(0)
    with pytest.raises(ValueError, match="emissions_cov"):
        lds.params_from_arrays(**{**system, "emissions_cov": np.ones((NUM_NEURONS, 2))})
    with pytest.raises(ValueError, match="emissions_cov"):
        lds.params_from_arrays(**{**system, "emissions_cov": np.ones((NUM_NEURONS, NUM_NEURONS))})
    with pytest.raises(ValueError, match="dynamics"):
        lds.params_from_arrays(**{**system, "dynamics": np.eye(NUM_LATENTS + 1)})
    with pytest.raises(ValueError, match="dynamics_cov"):
        lds.params_from_arrays(**{**system, "dynamics_cov": -np.eye(NUM_LATENTS)})
    params = lds.params_from_arrays(**system)
    with pytest.raises(ValueError, match="`y`"):
        lds.smoother(params, np.zeros((10, NUM_NEURONS + 1)))
    with pytest.raises(ValueError, match="`mask`"):
        lds.filter(params, np.zeros((10, NUM_NEURONS)), mask=np.ones(9, bool))
    with pytest.raises(ValueError, match="latent_dim"):
        lds.Config(latent_dim=0)
    with pytest.raises(ValueError, match="transform"):
        lds.Config(latent_dim=2, transform="log")


# ---------------------------------------------------------------------------------------------
# EM


@functools.cache
def em_runner(config, num_iters):
    """Drive the family's Fitter directly: one compiled scan over EM iterations."""
    fitter = lds.fitter(config)

    @jax.jit
    def run(params, trials):
        keys = jax.random.split(jax.random.PRNGKey(0), num_iters)
        return jax.lax.scan(
            lambda state, key: fitter.step(state, trials, key), fitter.init(params, trials), keys
        )

    return run


def run_em(config, trials, params, num_iters):
    state, info = em_runner(config, num_iters)(params, trials)
    return state.params, info


def small_dataset(seed, num_trials=6, num_bins=30, num_neurons=8, num_latents=2):
    return lj.datasets.lds(
        seed=seed,
        num_trials=num_trials,
        num_bins=num_bins,
        num_neurons=num_neurons,
        num_latents=num_latents,
    )


def test_em_log_likelihood_never_decreases():
    config = lds.Config(latent_dim=2, min_variance=1e-6)
    with jax.enable_x64(True):
        for seed in range(10):
            trials = small_dataset(seed).trials
            mask = np.ones(trials.mask.shape, bool)
            mask[0, 20:] = False  # a padded trial
            mask[1, 5:8] = False  # missing bins
            trials = trials.replace(mask=mask)
            params = lds.init(jax.random.PRNGKey(seed), config, trials)
            fitted, info = run_em(config, trials, params, 50)
            lls = np.asarray(info["log_likelihood"])
            assert np.all(np.diff(lls) >= -1e-8 * np.abs(lls[1:])), np.diff(lls).min()
            assert lls[-1] > lls[0]
            # the reported log-likelihood is that of the observed bins
            ll = lds.log_likelihood(params, trials, config).sum()
            np.testing.assert_allclose(lls[0], ll, rtol=1e-10)
        # fitted params are canonical: orthonormal emissions, latents ordered by variance
        C = np.asarray(fitted.emissions.weights)
        np.testing.assert_allclose(C.T @ C, np.eye(2), atol=1e-8)
        latents = np.asarray(lds.posterior(fitted, trials, config).latents)
        assert np.all(np.diff(latents[trials.mask].var(0)) < 0)


def matched_eigenvalue_error(true, estimated):
    true, estimated = np.linalg.eigvals(true), np.linalg.eigvals(estimated)
    cost = np.abs(true[:, None] - estimated[None, :])
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return cost[rows, cols].max()


@pytest.mark.slow
def test_em_recovers_dynamics_and_emission_subspace():
    data = lj.datasets.lds(seed=0, num_trials=100, num_bins=100, num_latents=4, num_neurons=30)
    config = lds.Config(latent_dim=4)
    params = lds.init(jax.random.PRNGKey(0), config, data.trials)
    params, _ = run_em(config, data.trials, params, 300)
    truth = data.truth["params"]
    assert matched_eigenvalue_error(truth["A"], params.dynamics.weights) < 0.05
    angles = scipy.linalg.subspace_angles(truth["C"], np.asarray(params.emissions.weights))
    assert np.degrees(angles.max()) < 10


def test_fit_recovers_small_system_and_compiles_once_per_shape(monkeypatch):
    """Through `lj.fit`; a second fit on same-shaped data reuses the compiled EM step."""
    traces = []
    e_step = lds._e_step
    monkeypatch.setattr(lds, "_e_step", lambda *args: traces.append(1) or e_step(*args))
    config = lds.Config(latent_dim=2)
    for seed in (1, 2):
        data = lj.datasets.lds(seed=seed, num_trials=40, num_bins=80, num_latents=2, num_neurons=15)
        result = lj.fit(config, data.trials, steps=100, progress=False)
        truth = data.truth["params"]
        assert matched_eigenvalue_error(truth["A"], result.params.dynamics.weights) < 0.05
        angles = scipy.linalg.subspace_angles(
            truth["C"], np.asarray(result.params.emissions.weights)
        )
        assert np.degrees(angles.max()) < 10
    assert len(traces) == 1


@pytest.mark.slow
def test_fits_from_different_seeds_agree_in_canonical_basis():
    data = small_dataset(2, num_trials=20, num_bins=50, num_neurons=12)
    config = lds.Config(latent_dim=2, init_jitter=0.2)
    latents = []
    for seed in (0, 1):
        params = lds.init(jax.random.PRNGKey(seed), config, data.trials)
        params, _ = run_em(config, data.trials, params, 150)
        latents.append(np.asarray(lds.posterior(params, data.trials, config).latents))
    np.testing.assert_allclose(latents[0], latents[1], atol=0.05)


def test_config_knob_fields_are_declared():
    knobs = {f.name for f in dataclasses.fields(lds.Config) if f.metadata.get("knob")}
    assert knobs == {"min_variance", "init_jitter"}
    assert jnp.isscalar(lds.Config(latent_dim=1).min_variance)
