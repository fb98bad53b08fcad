"""The hierarchical multi-region model (`lj.multiregion.hlds`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import latentjax as lj
from latentjax.multiregion import hlds
from latentjax.nn import delayed_lds


def _dense_log_likelihood(lag_matrices, noise_variance, emissions, bias, obs_noise, signals):
    """log p(y) of one trial as one joint Gaussian over all bins and neurons (float64)."""
    num_lags, size, _ = lag_matrices.shape
    num_bins, num_neurons = signals.shape
    state = num_lags * size
    companion = np.zeros((state, state))
    companion[:size] = np.concatenate(list(lag_matrices), axis=1)
    companion[size:, :-size] = np.eye(state - size)
    noise = np.zeros((state, state))
    noise[:size, :size] = np.diag(noise_variance)
    marginals = [np.eye(state)]
    for _ in range(1, num_bins):
        marginals.append(companion @ marginals[-1] @ companion.T + noise)
    cov = np.zeros((num_bins * size, num_bins * size))
    for t in range(num_bins):
        for u in range(t + 1):
            block = np.linalg.matrix_power(companion, t - u) @ marginals[u]  # Cov(s_t, s_u)
            cov[t * size : (t + 1) * size, u * size : (u + 1) * size] = block[:size, :size]
            cov[u * size : (u + 1) * size, t * size : (t + 1) * size] = block[:size, :size].T
    readout = np.kron(np.eye(num_bins), emissions)
    joint = readout @ cov @ readout.T + np.diag(np.tile(obs_noise, num_bins))
    return multivariate_normal(np.tile(bias, num_bins), joint).logpdf(signals.reshape(-1))


def test_gaussian_log_likelihood_with_delays_equals_the_dense_joint_gaussian():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        num_regions, latent_dim, num_bins = 3, 2, 12
        size = num_regions * latent_dim
        config = hlds.Config(delays=(1, 3))
        data = lj.datasets.multiregion(
            seed=0, num_trials=2, num_bins=num_bins, neurons_per_region=3,
            observations="gaussian",
        )  # fmt: skip
        edges = np.zeros((3, 3))
        edges[0, 1] = edges[1, 2] = edges[2, 0] = 1
        delay_index = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0]])
        lag_matrices = hlds.lag_matrices_of(
            jnp.asarray(0.5 * rng.standard_normal((num_regions, latent_dim, latent_dim))),
            jnp.asarray(0.3 * rng.standard_normal((3, 3, latent_dim, latent_dim))),
            jnp.asarray(edges), jnp.asarray(delay_index), config.delays, config.max_delay,
        )  # fmt: skip
        mask = hlds._emission_mask(data.trials, config)
        params = hlds.Params(
            lag_matrices=lag_matrices[None],
            noise_variance=jnp.asarray(rng.uniform(0.2, 1.0, size)),
            emissions=jnp.asarray(rng.standard_normal(mask.shape) * mask),
            emissions_bias=jnp.asarray(rng.standard_normal(mask.shape[0])),
            observation_noise=jnp.asarray(rng.uniform(0.3, 1.0, mask.shape[0])),
            emission_mask=jnp.asarray(mask, jnp.float64),
            log_structure=jnp.zeros((3, 1)), weight_means=jnp.zeros((3, 1, 2, 2)),
            weight_covariances=jnp.zeros((3, 1, 2, 2, 2)), excluded=jnp.zeros((3, 3, 2)),
            removed=jnp.zeros((1, 3, 3)),
        )  # fmt: skip
        assert float(jnp.abs(lag_matrices[2, 2:4, 0:2]).sum()) > 0  # the delay-3 edge 0 -> 1
        got = np.asarray(hlds.log_likelihood(params, data.trials, config))
        assert got.dtype == np.float64
        want = [
            _dense_log_likelihood(
                np.asarray(lag_matrices), np.asarray(params.noise_variance),
                np.asarray(params.emissions), np.asarray(params.emissions_bias),
                np.asarray(params.observation_noise), np.asarray(trial, np.float64),
            )
            for trial in data.trials.spikes
        ]  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)


def test_config_rejects_bad_values_naming_the_field():
    for changes, name in [
        (dict(delays=(0, 1)), "delays"),
        (dict(delays=(1, 1)), "delays"),
        (dict(latent_dim=0), "latent_dim"),
        (dict(edge_prior=1.0), "edge_prior"),
        (dict(link="relu"), "link"),
        (dict(global_latent_dim=-1), "global_latent_dim"),
        (dict(coupling_scale=0.0), "coupling_scale"),
        (dict(approximation="mean-field"), "approximation"),
        (dict(approximation="variational", link="softplus"), "approximation"),
    ]:
        with pytest.raises(ValueError, match=name):
            hlds.Config(**changes)


def test_structure_enumerates_every_configuration_with_a_normalised_prior():
    config = hlds.Config()
    tables = hlds.structure(3, 2, 0, config.delays, 1)
    assert tables.index.shape[:2] == (3, 16)  # (1 + 3 delays) ** 2 sources
    log_prior = hlds._log_structure_prior(tables, config)
    np.testing.assert_allclose(np.logaddexp.reduce(log_prior, axis=1), 0.0, atol=1e-12)
    modulated = hlds.structure(3, 2, 0, config.delays, 2)
    assert modulated.index.shape[:2] == (3, 100)  # (1 + 3 delays x 3 condition sets) ** 2
    log_prior = hlds._log_structure_prior(modulated, hlds.Config(num_conditions=2))
    np.testing.assert_allclose(np.logaddexp.reduce(log_prior, axis=1), 0.0, atol=1e-12)


def test_regression_evidence_equals_the_dense_marginal_likelihood():
    """With point-mass statistics the evidence is log N(y; 0, s2 I + Z diag(1/p) Z^T)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        design, weights = rng.standard_normal((30, 4)), rng.standard_normal(4)
        response = design @ weights + 0.5 * rng.standard_normal(30)
        precision, variance = np.array([1.0, 2.0, 4.0, 0.5]), 0.3
        got = delayed_lds.regression_evidence(
            jnp.asarray(design.T @ design), jnp.asarray(design.T @ response),
            jnp.asarray(response @ response), 30.0, jnp.asarray(precision), variance,
        )  # fmt: skip
        cov = variance * np.eye(30) + design @ np.diag(1 / precision) @ design.T
        want = multivariate_normal(np.zeros(30), cov).logpdf(response)
        np.testing.assert_allclose(float(got.log_evidence), want, rtol=0, atol=1e-9)
        posterior_cov = np.linalg.inv(np.diag(precision) + design.T @ design / variance)
        np.testing.assert_allclose(got.covariance, posterior_cov, atol=1e-12)
        residual = response - design @ np.asarray(got.mean)
        expected = residual @ residual + np.trace(design.T @ design @ posterior_cov)
        np.testing.assert_allclose(float(got.residual), expected, rtol=1e-10)


def _subspace_angle_degrees(estimate, truth):
    from scipy.linalg import subspace_angles

    return float(np.degrees(subspace_angles(np.asarray(estimate), np.asarray(truth)).max()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "seed",
    [
        0, 1, 2,
        pytest.param(3, marks=pytest.mark.xfail(
            reason="seed 3 ends with 1 -> 0 at delay 2: EM fixed at the true delays leads "
                   "(1, 2) by only 0.9 nats there while still gaining 1 nat per 10 "
                   "iterations (benchmarks/multiregion.md, hlds_feedback_evidence_60); 4 of "
                   "5 seeds meet issue #22", strict=True)),
        4,
    ],
)  # fmt: skip
def test_feedback_loop_and_global_latent_are_recovered(seed):
    """0 -> 1 (delay 1) and 1 -> 0 (delay 3) with a global latent read by every region, 60
    neurons per region, 100 trials, the variational E-step (benchmarks/multiregion.md,
    hlds_feedback-60-variational). At the dataset's 20 neurons per region the data favour
    wrong delays in 4 of 5 seeds (hlds_feedback_evidence_20), and Laplace-EM's search ends
    at 1 -> 0 delay 2 in 3 of 5 seeds at 60 (hlds_feedback-60)."""
    data = lj.datasets.multiregion(
        seed=seed, edges=((0, 1), (1, 0)), delays=(1, 3), global_latent_dim=1,
        neurons_per_region=60,
    )  # fmt: skip
    config = hlds.Config(global_latent_dim=1, approximation="variational")
    result = lj.fit(config, data.trials, progress=False)
    post = lj.infer(result, data.trials)
    np.testing.assert_array_equal(post.edges, data.truth["coupling"] > 0)
    np.testing.assert_array_equal(post.delays, data.truth["delays"])
    truth = data.truth["params"]["readout"][data.truth["latent_slices"]["global"]].T
    assert _subspace_angle_degrees(post.global_loadings, truth) < 20


@pytest.mark.slow
@pytest.mark.parametrize(
    "seed",
    [
        0,
        pytest.param(1, marks=pytest.mark.xfail(
            reason="seed 1's fit degenerates (a loading grows to ~46, spurious edges; "
                   "benchmarks/multiregion.md, hlds_modulation); 4 of 5 seeds meet issue #22",
            strict=True)),
        2, 3, 4,
    ],
)  # fmt: skip
def test_modulated_edge_is_found_in_its_condition_only(seed):
    """0 -> 1 in condition 0 only, 1 -> 2 in both (per-condition coupling): the issue asks
    for 4 of 5 seeds."""
    data = lj.datasets.multiregion(
        seed=seed, condition_edges=(((0, 1), (1, 2)), ((1, 2),)), num_trials=200
    )
    result = lj.fit(hlds.Config(num_conditions=2), data.trials, progress=False)
    post = lj.infer(result, data.trials)
    np.testing.assert_array_equal(post.condition_edges, data.truth["condition_coupling"] > 0)


def test_model_puts_the_global_latent_and_its_drive_in_the_lag_matrices():
    """`hlds.model` with a global latent and its drive: the sampled A_g and L_r sit in the
    lag matrices' global rows and columns (lag 1 only), and the likelihood factor is
    `log_likelihood` of Gaussian trials at those lag matrices."""
    import numpyro

    data = lj.datasets.multiregion(
        seed=0, num_regions=2, latent_dim=1, edges=((0, 1),), delays=(1,), global_latent_dim=1,
        observations="gaussian", num_trials=3, num_bins=12,
    )  # fmt: skip
    config = hlds.Config(latent_dim=1, global_latent_dim=1, global_drive=True)
    observation = hlds.init(jax.random.PRNGKey(0), config, data.trials)
    traced = numpyro.handlers.trace(numpyro.handlers.seed(hlds.model, 0))
    lag_matrices = np.asarray(traced(2, config, trials=data.trials, observation=observation))
    sites = traced.trace
    assert lag_matrices.shape == (3, 3, 3)
    np.testing.assert_array_equal(lag_matrices[0, 2:, 2:], sites["global_dynamics"]["value"])
    np.testing.assert_array_equal(lag_matrices[0, :2, 2:], sites["global_drive"]["value"][..., 0])
    assert not lag_matrices[1:, 2:].any() and not lag_matrices[1:, :, 2:].any()
    params = observation._replace(lag_matrices=jnp.asarray(lag_matrices)[None])
    expected = jnp.sum(hlds.log_likelihood(params, data.trials, config))
    np.testing.assert_allclose(sites["likelihood"]["value"], expected, rtol=1e-6)


SBC_REPLICATES = 100


def _prior_draw(key, config):
    """A draw of the structure and dynamics from `hlds.model` (2 regions, 1 latent each),
    redrawn until the system is stable (spectral radius below 0.95)."""
    import numpyro

    while True:
        key, sub = jax.random.split(key)
        traced = numpyro.handlers.trace(numpyro.handlers.seed(hlds.model, sub))
        lag_matrices = np.asarray(traced(2, config))[0]
        trace = traced.trace
        if np.max(np.abs(np.linalg.eigvals(lag_matrices))) < 0.95:
            return key, trace, lag_matrices


def _simulate(rng, lag_matrices, loadings, num_trials, num_bins):
    """Gaussian observations `[B, T, N]` and latents `[B, T, 2]` of the VAR(1) with unit
    noise, started from its stationary covariance."""
    import scipy.linalg

    stationary = scipy.linalg.solve_discrete_lyapunov(lag_matrices, np.eye(2))
    latents = np.zeros((num_trials, num_bins, 2))
    latents[:, 0] = rng.multivariate_normal(np.zeros(2), stationary, num_trials)
    for t in range(1, num_bins):
        latents[:, t] = latents[:, t - 1] @ lag_matrices.T + rng.standard_normal((num_trials, 2))
    signals = latents @ loadings + 0.3 * rng.standard_normal(latents.shape[:2] + loadings.shape[1:])
    return signals, latents


@pytest.mark.slow
def test_simulation_based_calibration_of_a_coupling_and_its_inclusion():
    """Ranks of the true coupling 0 -> 1 and of its presence among posterior draws, over
    prior draws of `hlds.model` (Gaussian observations of 2 regions x 8 neurons, nearly
    noise-free, so the latents are well determined; no structure search): uniform by a
    chi-square test. Couplings are compared in the fit's units (latents of unit second
    moment, signs aligned with the true latents)."""
    from scipy.stats import chisquare

    config = hlds.Config(
        latent_dim=1, delays=(1,), dynamics_scale=0.5, num_samples=200,
        search_start=1000, train=lj.train.TrainConfig(steps=25, chunk_size=25),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(0)
    coupling_ranks, inclusion_ranks = [], []
    regions = np.repeat(["A", "B"], 8)
    for _ in range(SBC_REPLICATES):
        key, trace, lag_matrices = _prior_draw(key, config)
        loadings = np.zeros((2, 16))
        loadings[0, :8], loadings[1, 8:] = rng.uniform(0.5, 1.5, (2, 8))
        signals, latents = _simulate(rng, lag_matrices, loadings, 20, 50)
        trials = lj.Trials(signals.astype(np.float32), 0.01, regions=regions, continuous=True)
        post = lj.infer(lj.fit(config, trials, progress=False), trials)
        present = bool(np.asarray(trace["edges"]["value"])[0, 1])
        scale = np.sqrt(np.mean(latents[:, 1:] ** 2, axis=(0, 1)))
        true = lag_matrices[1, 0] * scale[0] / scale[1] if present else 0.0
        draws = np.asarray(post.coupling_matrices)[:, 0, 1, 0, 0]  # B_10: 0 -> 1
        # each fitted latent's sign is arbitrary: align it with the true latent
        sign = np.sign(np.corrcoef(post.latents[..., 0].ravel(), latents[..., 0].ravel())[0, 1])
        sign *= np.sign(np.corrcoef(post.latents[..., 1].ravel(), latents[..., 1].ravel())[0, 1])
        draws = sign * draws
        ties = np.sum(draws == true)
        coupling_ranks.append((np.sum(draws < true) + rng.integers(0, ties + 1)) / (len(draws) + 1))
        included = rng.random(len(draws)) < post.inclusion[0, 1]
        ties = np.sum(included == present)
        inclusion_ranks.append(
            (np.sum(included < present) + rng.integers(0, ties + 1)) / (len(draws) + 1)
        )
    for ranks in (coupling_ranks, inclusion_ranks):
        counts = np.histogram(ranks, bins=5, range=(0, 1))[0]
        assert chisquare(counts).pvalue > 0.01, counts


def test_variational_em_recovers_the_latent_noise_variances():
    """Two uncoupled regions, each one AR(1) latent (a = 0.95) seen through 25 sparse Poisson
    neurons: on unit-variance latents the innovation variance is 1 - a^2. Variational EM
    (exp link) finds it (Laplace-EM, the default, ends at about 0.013 here, 1/8 of it)."""
    rng = np.random.default_rng(3)
    num_trials, num_bins, decay = 40, 80, 0.95
    latents = np.zeros((num_trials, num_bins, 2))
    latents[:, 0] = rng.standard_normal((num_trials, 2))
    for t in range(1, num_bins):
        latents[:, t] = decay * latents[:, t - 1] + np.sqrt(1 - decay**2) * rng.standard_normal(
            (num_trials, 2)
        )
    loadings = np.zeros((2, 50))
    loadings[0, :25], loadings[1, 25:] = rng.uniform(0.4, 0.8, (2, 25))
    spikes = rng.poisson(np.exp(latents @ loadings - 2.3))
    trials = lj.Trials(spikes.astype(np.float32), 0.01, regions=np.repeat(["A", "B"], 25))
    config = hlds.Config(
        latent_dim=1, delays=(1,), search_start=1000, approximation="variational",
        train=lj.train.TrainConfig(steps=40, chunk_size=40),
    )  # fmt: skip
    result = lj.fit(config, trials, progress=False)
    np.testing.assert_allclose(result.params.noise_variance, 1 - decay**2, rtol=0.2)


def test_global_drive_is_recovered_from_gaussian_observations():
    """Two regions with one latent each, both driven by a global latent one bin earlier
    (x_r[t] = 0.8 x_r[t-1] + L_r g[t-1] + w): `global_drive=True` recovers L_r in the fit's
    units (unit-variance latents, signs aligned with the truth) within 0.1 (about 0.22 and
    0.15 for 0.23 and 0.22: a region's latent is pinned against adding a multiple of g only
    by the diagonal noise, so L_r is loosely determined), and gains over 20 nats of log p(y)
    (about 450); without it the fit has no drive."""
    rng = np.random.default_rng(1)
    num_trials, num_bins, drive = 40, 60, np.array([0.5, -0.4])
    glob = np.zeros((num_trials, num_bins))
    region = np.zeros((num_trials, num_bins, 2))
    for t in range(1, num_bins):
        glob[:, t] = 0.9 * glob[:, t - 1] + 0.45 * rng.standard_normal(num_trials)
        region[:, t] = (0.8 * region[:, t - 1] + glob[:, t - 1, None] * drive
                        + 0.45 * rng.standard_normal((num_trials, 2)))  # fmt: skip
    latents = np.concatenate([region, glob[..., None]], -1)
    loadings = np.zeros((3, 16))
    loadings[0, :8], loadings[1, 8:] = rng.uniform(0.5, 1.5, (2, 8))
    loadings[2] = rng.uniform(0.5, 1.5, 16)
    signals = latents @ loadings + 0.3 * rng.standard_normal((num_trials, num_bins, 16))
    trials = lj.Trials(signals.astype(np.float32), 0.01, regions=np.repeat(["A", "B"], 8),
                       continuous=True)  # fmt: skip
    fits = {}
    for with_drive in (True, False):
        config = hlds.Config(
            latent_dim=1, global_latent_dim=1, global_drive=with_drive, delays=(1,),
            search_start=1000, train=lj.train.TrainConfig(steps=40, chunk_size=40),
        )  # fmt: skip
        result = lj.fit(config, trials, progress=False)
        fits[with_drive] = (result, lj.infer(result, trials))
    post = fits[True][1]
    scale = np.sqrt(np.mean(latents[:, 1:] ** 2, axis=(0, 1)))
    sign = np.sign([np.corrcoef(post.latents[..., i].ravel(), latents[..., i].ravel())[0, 1]
                    for i in range(3)])  # fmt: skip
    fitted = post.global_drive[:, 0, 0] * sign[:2] * sign[2]
    gain = fits[True][1].log_likelihood.sum() - fits[False][1].log_likelihood.sum()
    np.testing.assert_allclose(fitted, drive * scale[2] / scale[:2], atol=0.1)
    np.testing.assert_array_equal(fits[False][1].global_drive, 0.0)
    assert gain > 20
