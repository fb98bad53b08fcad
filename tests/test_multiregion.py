"""Tests of latentjax.multiregion against independent truth (scikit-learn, synthetic data)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cross_decomposition import CCA as SklearnCCA

import latentjax as lj
from latentjax.multiregion import _regions, cca, coupled_lds, rrr
from latentjax.multiregion.rrr import fit_rrr
from latentjax.train.config import TrainConfig


def _low_rank_data(rank, seed=0, samples=2000, source_neurons=12, target_neurons=10):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, source_neurons))
    mixing = rng.standard_normal((source_neurons, rank)) @ rng.standard_normal(
        (rank, target_neurons)
    )
    return x, x @ mixing + 1.0 * rng.standard_normal((samples, target_neurons))


@pytest.mark.parametrize("rank", [1, 3])
def test_rrr_recovers_communication_dimensionality(rank):
    x, y = _low_rank_data(rank)
    result = rrr(x, y, folds=5)
    assert result.dimensionality == rank
    assert result.cv_r2[rank - 1] > 0.5
    # the rank-limited fit loses nothing against full-rank ridge
    assert result.cv_r2[rank - 1] >= result.full_r2 - 0.01


def test_rrr_full_rank_equals_least_squares():
    x, y = _low_rank_data(2, seed=1, samples=300)
    xc, yc = x - x.mean(0), y - y.mean(0)
    np.testing.assert_allclose(
        fit_rrr(xc, yc, 10), np.linalg.lstsq(xc, yc, rcond=None)[0], atol=1e-8
    )


def test_rrr_rejects_bad_input():
    x, y = _low_rank_data(1, samples=50)
    with pytest.raises(ValueError, match="max_rank"):
        rrr(x, y, max_rank=20)
    with pytest.raises(ValueError, match="share samples"):
        rrr(x, y[:10])


def test_cca_matches_scikit_learn():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal((3000, 2))
    x = np.c_[shared @ rng.standard_normal((2, 5)), rng.standard_normal((3000, 3))]
    x += 0.5 * rng.standard_normal(x.shape)
    y = shared @ rng.standard_normal((2, 4)) + rng.standard_normal((3000, 4))
    ours = cca(x, y, num_components=2)
    u, v = SklearnCCA(n_components=2, max_iter=5000, tol=1e-10).fit(x, y).transform(x, y)
    reference = [np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(2)]
    np.testing.assert_allclose(ours.correlations, reference, atol=1e-3)
    # our projections are unit-variance and achieve the reported correlations
    pu, pv = (
        (x - ours.source_mean) @ ours.source_weights,
        (y - ours.target_mean) @ ours.target_weights,
    )
    np.testing.assert_allclose(pu.std(0), 1.0, atol=1e-6)
    achieved = [np.corrcoef(pu[:, i], pv[:, i])[0, 1] for i in range(2)]
    np.testing.assert_allclose(achieved, ours.correlations, atol=1e-6)


def test_cca_cross_validation_drops_for_noise():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((200, 8)), rng.standard_normal((200, 8))
    result = cca(x, y, folds=5)
    assert result.correlations[0] > 0.2  # in-sample overfit
    assert abs(result.cv_correlations[0]) < 0.2


def _latent_trials(seed, num_trials=40):
    """Trials whose 'neurons' are the true region latents (projection='none')."""
    data = lj.datasets.multiregion(seed=seed, num_trials=num_trials, num_bins=100)
    regions = np.repeat(["R0", "R1", "R2"], 2)
    trials = lj.Trials(data.truth["latents"], 0.01, regions=regions, continuous=True)
    return trials, data.truth


def test_coupled_lds_config_validation():
    with pytest.raises(ValueError, match="delays"):
        coupled_lds.Config(delays=(0, 1))
    with pytest.raises(ValueError, match="num_warmup"):
        coupled_lds.Config(num_warmup=600)
    trials, _ = _latent_trials(0, num_trials=2)
    with pytest.raises(ValueError, match="latent_dim"):
        coupled_lds.init(None, coupled_lds.Config(latent_dim=3, projection="none"), trials)


def _direct_log_likelihoods(latents, sites, delays=(1, 2)):
    """`[R, C]` log-likelihood of each target region and delay combination, by a direct
    lagged regression (own lag 1, 2 latents per region, 3 regions, largest lag 2)."""
    from scipy.stats import norm

    lags, _, _ = coupled_lds._combinations(3, 2, delays, 1)
    num_bins = latents.shape[1]
    log_lik = np.zeros(lags.shape[:2])
    for target in range(3):
        for combo in range(lags.shape[1]):
            predicted = np.zeros((latents.shape[0], num_bins - 2, 2))
            for source in range(3):
                lag = 1 if source == target else lags[target, combo, source]
                block = np.asarray(
                    sites["own_dynamics"][target]
                    if source == target
                    else sites["coupling"][source, target]
                )
                window = latents[:, 2 - lag : num_bins - lag, 2 * source : 2 * source + 2]
                predicted += window @ block.T
            observed = latents[:, 2:, 2 * target : 2 * target + 2]
            scale = np.asarray(sites["noise_scale"][target])
            log_lik[target, combo] = norm.logpdf(observed, predicted, scale).sum()
    return log_lik


def _random_sites(rng):
    import jax.numpy as jnp

    return {
        "own_dynamics": jnp.asarray(rng.standard_normal((3, 2, 2))),
        "coupling": jnp.asarray(rng.standard_normal((3, 3, 2, 2))),
        "noise_scale": jnp.asarray(rng.uniform(0.5, 2.0, (3, 2))),
    }


def test_coupled_lds_likelihood_matches_direct_regression():
    """The sufficient-statistics likelihood equals a direct lagged-regression Gaussian density."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    latents = rng.standard_normal((3, 20, 6))
    mask = np.ones((3, 20), bool)
    config = coupled_lds.Config(delays=(1, 2), own_lags=1)
    stats = coupled_lds.statistics(jnp.asarray(latents), jnp.asarray(mask), 2)
    sites = _random_sites(rng)
    log_lik = np.asarray(coupled_lds.combination_log_likelihoods(sites, stats, config))
    np.testing.assert_allclose(log_lik, _direct_log_likelihoods(latents, sites), rtol=1e-4)


@pytest.mark.parametrize("inference", ["svi", "nuts"])
def test_coupled_lds_validation_loss_is_the_posterior_predictive_nll_per_entry(inference):
    """SVI with a point-mass posterior: -log p(latents | theta) per entry; NUTS with no draw
    kept yet: -log of the mean over the two chains' current states."""
    import jax
    import jax.numpy as jnp
    from scipy.special import logsumexp

    rng = np.random.default_rng(1)
    latents = rng.standard_normal((3, 20, 6))
    trials = lj.Trials(latents, 0.01, regions=np.repeat(["R0", "R1", "R2"], 2), continuous=True)
    config = coupled_lds.Config(
        latent_dim=2, delays=(1, 2), own_lags=1, projection="none", noise_correction=False,
        inference=inference, train=lj.train.TrainConfig(steps=4),
    )  # fmt: skip
    params = coupled_lds.init(jax.random.PRNGKey(0), config, trials)
    draws = [_random_sites(rng) for _ in range(1 if inference == "svi" else 2)]
    unconstrained = {
        name: jnp.stack([d[name] if name != "noise_scale" else jnp.log(d[name]) for d in draws])
        for name in draws[0]
    }
    if inference == "svi":
        loc = {name: value[0] for name, value in unconstrained.items()}
        log_scale = {name: jnp.full_like(value, -30.0) for name, value in loc.items()}
        params = params._replace(loc=loc, log_scale=log_scale)
    else:
        assert int(params.drawn) == 0
        params = params._replace(position=unconstrained)
    got, _ = coupled_lds.validation_loss(params, trials, jax.random.PRNGKey(1), config, 0)

    per_draw = [
        np.sum(logsumexp(_direct_log_likelihoods(latents, d), axis=-1) - np.log(4)) for d in draws
    ]  # 2 sources x 2 delays: 4 combinations per target
    expected = -(logsumexp(per_draw) - np.log(len(draws))) / (3 * 18 * 6)
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)


def test_coupled_lds_svi_fit_records_the_validation_loss():
    """`lj.fit(..., valid=)` of SVI scores the held-out trials after the chunk (NUTS: the
    contract test): the value recorded is one draw of the Monte Carlo estimate (16 draws of
    the variational posterior) that `validation_loss` gives for the returned parameters."""
    import jax

    rng = np.random.default_rng(2)
    regions = np.repeat(["R0", "R1", "R2"], 2)
    train, valid = (
        lj.Trials(rng.standard_normal((4, 20, 6)), 0.01, regions=regions, continuous=True)
        for _ in range(2)
    )
    config = coupled_lds.Config(
        latent_dim=2, delays=(1, 2), own_lags=1, projection="none", noise_correction=False,
        inference="svi", train=lj.train.TrainConfig(steps=10, chunk_size=10),
    )  # fmt: skip
    result = lj.fit(config, train, valid=valid, progress=False)
    recorded = result.history["valid_loss"]
    assert recorded.shape == (1,) and np.isfinite(recorded).all()
    keys = jax.random.split(jax.random.PRNGKey(0), 500)
    score = jax.vmap(lambda k: coupled_lds.validation_loss(result.params, valid, k, config, 0)[0])
    quantile = np.mean(np.asarray(jax.jit(score)(keys)) <= recorded[0])
    assert 0.01 < quantile < 0.99, quantile


def _check_recovery(posterior, truth):
    true_edges = truth["coupling"] > 0
    np.testing.assert_array_equal(posterior.edges, true_edges)
    np.testing.assert_array_equal(posterior.delays[true_edges], truth["delays"][true_edges])


@pytest.mark.slow
def test_coupled_lds_nuts_recovers_edges_and_delays_from_latents():
    trials, truth = _latent_trials(0)
    config = coupled_lds.Config(projection="none")
    result = lj.fit(config, trials, progress=False)
    posterior = lj.infer(result, trials)
    _check_recovery(posterior, truth)
    assert posterior.coupling.shape[1:] == (3, 3)
    assert posterior.divergences.sum() == 0
    report = lj.evaluate(posterior, trials)
    assert report["divergences"] == 0 and report["r_hat_max"] < 1.05


@pytest.mark.slow  # ~1 min: NUTS warm-up; the SVI test covers the same model by default
def test_coupled_lds_nuts_short_run_on_latents():
    """A short NUTS run on few trials of the true latents: right graph, no divergence."""
    trials, truth = _latent_trials(1, num_trials=10)
    config = coupled_lds.Config(
        projection="none", own_lags=1, num_warmup=100, train=TrainConfig(steps=200)
    )
    posterior = lj.infer(lj.fit(config, trials, progress=False), trials)
    _check_recovery(posterior, truth)
    assert posterior.divergences.sum() == 0


@pytest.mark.slow  # ~30-45 s of SVI; the direct-regression likelihood test runs by default
def test_coupled_lds_svi_recovers_edges_and_delays_from_latents():
    """The variational path (mean-field Gaussian, Adam on the ELBO) finds the same graph."""
    trials, truth = _latent_trials(1, num_trials=20)
    config = coupled_lds.Config(
        projection="none",
        inference="svi",
        train=TrainConfig(steps=1500, chunk_size=500, learning_rate=0.02, batch_size=None),
    )
    posterior = lj.infer(lj.fit(config, trials, progress=False), trials)
    _check_recovery(posterior, truth)
    assert posterior.coupling.shape == (config.svi_draws, 3, 3)
    assert "divergences" not in posterior.extras


def _spike_fit(seed, **config):
    """Default coupled_lds on spike counts of 60 neurons per region, 200 trials."""
    data = lj.datasets.multiregion(seed=seed, neurons_per_region=60, num_trials=200)
    result = lj.fit(coupled_lds.Config(**config), data.trials, progress=False)
    return lj.infer(result, data.trials), data.truth


@pytest.mark.slow
def test_coupled_lds_finds_edges_and_delays_from_spikes_in_most_seeds():
    """Default configuration on spike counts: exactly the true edges and their delays in >= 4
    of 5 seeds, and no divergent transition."""
    found = 0
    for seed in range(5):
        posterior, truth = _spike_fit(seed)
        edges = truth["coupling"] > 0
        found += np.array_equal(posterior.edges, edges) and np.array_equal(
            posterior.delays[edges], truth["delays"][edges]
        )
        assert posterior.divergences.sum() == 0
    assert found >= 4


@pytest.mark.slow
def test_without_noise_correction_delays_are_biased():
    """The errors-in-variables correction is what finds the delays: without it (PCA, own lags
    1..6) the same fits put the delay of at least 2 of 5 edges 1 -> 2 at a longer lag."""
    biased = 0
    for seed in range(5):
        posterior, truth = _spike_fit(seed, projection="pca", own_lags=6, noise_correction=False)
        biased += posterior.delays[1, 2] > truth["delays"][1, 2]
    assert biased >= 2


def test_coupled_lds_warns_when_region_latents_are_mostly_noise():
    sparse = lj.datasets.multiregion(seed=0, num_trials=20, num_bins=30, neurons_per_region=5)
    with pytest.warns(UserWarning, match="measurement noise"):
        params = coupled_lds.init(
            jax.random.PRNGKey(0), coupled_lds.Config(num_chains=1), sparse.trials
        )
    dense = lj.datasets.multiregion(seed=0, neurons_per_region=100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coupled_lds.init(jax.random.PRNGKey(0), coupled_lds.Config(num_chains=1), dense.trials)
    assert not any("measurement noise" in str(w.message) for w in caught)
    assert params.projection.noise_covariance.shape == (6, 6)


def test_noise_correction_removes_attenuation():
    """An AR(1) latent seen through white noise of known variance: least squares on the raw
    lagged statistics is attenuated by the noise share; on the corrected ones it is not."""
    rng = np.random.default_rng(0)
    coefficient, noise_variance = 0.8, 0.5
    latent = np.zeros((200, 100, 1))
    for t in range(1, 100):
        latent[:, t] = coefficient * latent[:, t - 1] + 0.6 * rng.standard_normal((200, 1))
    observed = latent + np.sqrt(noise_variance) * rng.standard_normal(latent.shape)
    observed = observed.astype(np.float32)
    mask = np.ones((200, 100), bool)
    slopes = []
    for noise in (None, np.array([[noise_variance]])):
        gram = np.asarray(coupled_lds.statistics(observed, mask, 1, noise).gram)
        slopes.append(gram[0, 1] / gram[1, 1])
    stationary = 0.36 / (1 - coefficient**2)
    attenuated = coefficient * stationary / (stationary + noise_variance)
    assert abs(slopes[0] - attenuated) < 0.02
    assert abs(slopes[1] - coefficient) < 0.02


def test_noise_correction_never_leaves_an_indefinite_gram_matrix():
    """Where the estimated noise exceeds the data in some direction, the full correction
    would leave an indefinite Gram matrix (a likelihood without bound: NUTS stalled at step
    size 1e-7 on the 20-neuron default data, R-hat 1e5); the correction is then scaled to
    keep `CORRECTION_MARGIN / sqrt(rows)` of the noise in the worst direction, and left
    whole where the data allow it."""
    rng = np.random.default_rng(3)
    factors = rng.standard_normal((3, 3))
    noise = factors @ factors.T + 0.5 * np.eye(3)
    rows = 400.0
    for ratio in (0.9, 1.5):  # smallest root of det(gram - lambda noise) = 0
        basis = np.linalg.cholesky(rows * noise)
        spectrum = np.diag([ratio, 2.0, 3.0])
        gram = basis @ spectrum @ basis.T
        scale = float(coupled_lds.correction_scale(jnp.asarray(gram), jnp.asarray(rows * noise),
                                                   rows))  # fmt: skip
        margin = coupled_lds.CORRECTION_MARGIN / np.sqrt(rows)
        expected = 1.0 if ratio > 1 + margin else ratio - margin
        assert scale == pytest.approx(expected, rel=1e-4)
        corrected = np.linalg.eigvalsh(np.linalg.solve(basis, np.linalg.solve(
            basis, gram - scale * rows * noise).T))  # fmt: skip
        assert corrected.min() == pytest.approx(ratio - expected, abs=1e-4)
    data = lj.datasets.multiregion(seed=0, num_trials=100, num_bins=25)
    projection = _regions.fit_projection(data.trials, 2, "fa")
    latents = _regions.region_latents(projection, data.trials)
    mask = jnp.asarray(data.trials.mask)
    raw = coupled_lds.statistics(latents, mask, 3)
    noise = float(raw.rows) * np.kron(np.eye(4), np.asarray(projection.noise_covariance))
    full = np.asarray(raw.gram) - noise
    assert np.linalg.eigvalsh(full).min() < 0  # the uncorrected failure: indefinite
    corrected = coupled_lds.statistics(latents, mask, 3, projection.noise_covariance)
    assert np.linalg.eigvalsh(np.asarray(corrected.gram)).min() > 0


def test_factor_analysis_projection_reports_its_noise():
    """GLS-read factor-analysis latents minus the true factors have the covariance that the
    projection reports (up to the factors' sign and scale)."""
    rng = np.random.default_rng(1)
    factors = rng.standard_normal((50, 40, 4))  # 2 regions x 2 factors
    loadings = rng.standard_normal((4, 24)) * np.kron(np.eye(2), np.ones((2, 12)))
    signals = factors @ loadings + rng.uniform(0.5, 1.5, 24) * rng.standard_normal((50, 40, 24))
    trials = lj.Trials(signals, 0.01, regions=np.repeat(["A", "B"], 12), continuous=True)
    projection = _regions.fit_projection(trials, 2, "fa")
    latents = np.asarray(_regions.region_latents(projection, trials)).reshape(-1, 4)
    truth = factors.reshape(-1, 4)
    for region in range(2):
        cols = slice(2 * region, 2 * region + 2)
        # regress the truth out of the latents: the residual is the measurement noise
        weights = np.linalg.lstsq(truth[:, cols], latents[:, cols], rcond=None)[0]
        residual = latents[:, cols] - truth[:, cols] @ weights
        reported = np.asarray(projection.noise_covariance)[cols, cols]
        np.testing.assert_allclose(np.cov(residual.T), reported, atol=0.01)
    off_region = np.asarray(projection.noise_covariance)[:2, 2:]
    assert np.all(off_region == 0)


def test_communication_graph_draws_inferred_edges():
    from matplotlib.figure import Figure

    from latentjax.plot.communication import communication_graph

    coupling = np.zeros((3, 3))
    coupling[0, 1], coupling[1, 2] = 0.5, 0.3
    posterior = lj.Posterior(
        latents=np.zeros((1, 2, 6)),
        extras=dict(
            coupling_mean=coupling,
            coupling_lower=coupling * 0.8,
            coupling_upper=coupling * 1.2,
            edges=coupling > 0,
            delays=np.where(coupling > 0, 2, 0),
        ),
    )
    figure = communication_graph(posterior, region_names=["V1", "V2", "MT"])
    assert isinstance(figure, Figure)
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert sum("delay 2" in t for t in texts) == 2 and "MT" in texts
    assert "0.50 [0.40, 0.60]" in "".join(texts)
    # a well-determined edge (interval 0.006 wide) shows two different bounds
    narrow = dict(
        posterior.extras, coupling_lower=coupling - 0.003, coupling_upper=coupling + 0.003
    )
    figure = communication_graph(lj.Posterior(latents=posterior.latents, extras=narrow))
    assert "0.500 [0.497, 0.503]" in "".join(t.get_text() for t in figure.axes[0].texts)
    with pytest.raises(ValueError, match="region_names"):
        communication_graph(posterior, region_names=["a"])
