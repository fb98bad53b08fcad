"""Smoothing baseline: kernel smoothing against scipy, GLM readout against truth and sklearn."""

import jax
import numpy as np
import pytest
import scipy.ndimage
from sklearn.linear_model import PoissonRegressor

import latentjax as lj
from latentjax.models import smoothing


def test_smoothing_equals_scipy_gaussian_filter_with_mask_normalisation():
    rng = np.random.default_rng(0)
    spikes = rng.poisson(1.0, size=(3, 40, 4)).astype(float)
    mask = rng.uniform(size=(3, 40)) > 0.2
    dt, kernel_sd = 0.01, 0.025  # 2.5 bins
    smoothed = np.asarray(smoothing.smooth_spikes(spikes, dt, kernel_sd, mask=mask))

    def gaussian(x):
        return scipy.ndimage.gaussian_filter1d(x, 2.5, axis=1, mode="constant", truncate=3.0)

    reference = gaussian(spikes * mask[:, :, None]) / gaussian(mask.astype(float))[:, :, None]
    np.testing.assert_allclose(smoothed, reference, rtol=1e-5, atol=1e-6)


def test_smoothing_away_from_edges_is_plain_convolution():
    rng = np.random.default_rng(1)
    spikes = rng.poisson(2.0, size=(1, 60, 2)).astype(float)
    smoothed = np.asarray(smoothing.smooth_spikes(spikes, 0.01, 0.02))
    lags = np.arange(-6, 7)
    kernel = np.exp(-0.5 * (lags / 2.0) ** 2)
    kernel /= kernel.sum()
    direct = np.stack([np.convolve(spikes[0, :, n], kernel, "same") for n in range(2)], -1)
    np.testing.assert_allclose(smoothed[0, 6:-6], direct[6:-6], rtol=1e-5)


def simulate_readout(rng, num_trials=60, num_bins=50, num_heldin=5, num_heldout=3):
    """Held-in Poisson spikes; held-out spikes from a known GLM on their log smoothed rates."""
    time = np.linspace(0, 1, num_bins)[None, :, None]
    frequency = rng.uniform(1, 4, (1, 1, num_heldin))
    phase = rng.uniform(0, 2 * np.pi, (num_trials, 1, num_heldin))
    heldin = rng.poisson(np.exp(1.0 + np.sin(2 * np.pi * frequency * time + phase)))
    features = np.log(np.asarray(smoothing.smooth_spikes(heldin, 0.01, 0.03)) + 1e-4)
    weights = rng.normal(scale=0.5, size=(num_heldin, num_heldout))
    bias = rng.normal(scale=0.3, size=num_heldout) - 0.5
    heldout = rng.poisson(np.exp(features @ weights + bias))
    trials = lj.Trials(np.concatenate([heldin, heldout], axis=2), dt=0.01)
    heldout_idx = tuple(range(num_heldin, num_heldin + num_heldout))
    return trials, features, heldout, weights, bias, heldout_idx


def test_glm_readout_recovers_known_weights_and_matches_sklearn():
    rng = np.random.default_rng(2)
    trials, features, heldout, weights, bias, heldout_idx = simulate_readout(rng)
    config = smoothing.Config(kernel_sd=0.03, heldout_neurons=heldout_idx, alpha=1e-4)
    result = lj.fit(config, trials, progress=False)
    fitted = result.params
    np.testing.assert_allclose(fitted.weights, weights, atol=0.15)
    np.testing.assert_allclose(fitted.bias, bias, atol=0.2)
    losses = np.asarray(result.history["loss"])
    assert np.all(np.diff(losses) <= 1e-5 * np.abs(losses[:-1]))

    design = features.reshape(-1, features.shape[2])
    for j in range(heldout.shape[2]):
        reference = PoissonRegressor(alpha=1e-4, max_iter=1000, tol=1e-10)
        reference.fit(design, heldout[:, :, j].reshape(-1))
        np.testing.assert_allclose(fitted.weights[:, j], reference.coef_, atol=2e-3)
        np.testing.assert_allclose(fitted.bias[j], reference.intercept_, atol=2e-3)


def test_posterior_accepts_all_or_heldin_neurons():
    rng = np.random.default_rng(3)
    trials, *_, heldout_idx = simulate_readout(rng, num_trials=6, num_bins=20)
    config = smoothing.Config(kernel_sd=0.03, heldout_neurons=heldout_idx)
    result = lj.fit(config, trials, steps=5, progress=False)
    full = lj.infer(result, trials)
    heldin_only = lj.infer(result, trials.select_neurons(np.arange(5)))
    assert full.rates.shape == (6, 20, 8)
    assert full.latents.shape == (6, 20, 5)
    np.testing.assert_allclose(full.rates, heldin_only.rates, rtol=1e-6)  # held-out ones last
    np.testing.assert_allclose(full.rates[:, :, list(heldout_idx)], full.heldout_rates)
    with pytest.raises(ValueError, match="held-in"):
        lj.infer(result, trials.select_neurons(np.arange(4)))


def test_evaluate_scores_interleaved_heldout_neurons_from_the_heldin_ones():
    rng = np.random.default_rng(4)
    trials, *_ = simulate_readout(rng, num_trials=6, num_bins=20)
    order = np.array([5, 0, 1, 6, 2, 3, 7, 4])  # held-out neurons 0, 3, 6 among the held-in
    trials = trials.select_neurons(order)
    withheld = np.isin(np.arange(8), (0, 3, 6))
    heldin, heldout = lj.data.heldout_neurons(trials, neurons=withheld)
    config = smoothing.Config(kernel_sd=0.03, heldout_neurons=(0, 3, 6))
    result = lj.fit(config, trials, steps=5, progress=False)
    post = lj.infer(result, heldin)
    np.testing.assert_allclose(post.rates[:, :, :5], post.latents)
    np.testing.assert_allclose(post.rates[:, :, 5:], post.heldout_rates)
    scores = lj.evaluate(post, heldin, heldout=heldout)
    expected = lj.metrics.co_bps(post.heldout_rates, heldout.spikes)
    assert scores["co_bps"] == pytest.approx(float(expected), rel=1e-6)
    heldin_bps = lj.metrics.bits_per_spike(post.latents, heldin.spikes)
    assert scores["bps"] == pytest.approx(float(heldin_bps), rel=1e-6)


def test_co_bps_on_lorenz_is_positive():
    dataset = lj.datasets.lorenz(seed=0, num_trials=40, num_bins=60, num_neurons=25)
    train, test = dataset.trials[:30], dataset.trials[30:]
    heldout = tuple(range(20, 25))
    config = smoothing.Config(kernel_sd=0.04, heldout_neurons=heldout, alpha=0.01)
    result = lj.fit(config, train, progress=False)
    post = lj.infer(result, test.select_neurons(np.arange(20)))
    score = lj.metrics.co_bps(post.heldout_rates, test.spikes[:, :, list(heldout)])
    assert score > 0.05, score


def test_rejects_bad_input():
    trials = lj.Trials(np.ones((2, 5, 3)), dt=0.01)
    with pytest.raises(ValueError, match="kernel_sd"):
        smoothing.Config(kernel_sd=0.0)
    with pytest.raises(ValueError, match="heldout_neurons"):
        smoothing.Config(heldout_neurons=[1, 2])
    with pytest.raises(ValueError, match="heldout_neurons"):
        smoothing.init(jax.random.PRNGKey(0), smoothing.Config(heldout_neurons=(3,)), trials)
    with pytest.raises(ValueError, match="mask"):
        smoothing.smooth_spikes(np.ones((2, 5, 3)), 0.01, 0.02, mask=np.ones((2, 4)))


def test_validation_loss_is_the_held_out_poisson_nll_per_entry():
    from scipy.stats import poisson

    rng = np.random.default_rng(4)
    spikes = rng.poisson(1.5, size=(3, 30, 4)).astype(float)
    mask = rng.uniform(size=(3, 30)) > 0.2
    trials = lj.Trials(spikes, dt=0.01, mask=mask)

    # no held-out neurons: each bin predicted from its neighbours (kernel centre left out)
    config = smoothing.Config(kernel_sd=0.02)
    params = smoothing.init(jax.random.PRNGKey(0), config, trials)
    lags = np.arange(-6, 7)
    kernel = np.exp(-0.5 * (lags / 2.0) ** 2)
    kernel[6] = 0.0
    observed = spikes * mask[:, :, None]
    total = np.stack([[np.convolve(o[:, n], kernel, "same") for n in range(4)] for o in observed])
    weight = np.stack([np.convolve(m.astype(float), kernel, "same") for m in mask])
    rates = total.transpose(0, 2, 1) / weight[:, :, None] + config.log_offset
    expected = -poisson.logpmf(spikes, rates)[mask].mean()
    got, _ = smoothing.validation_loss(params, trials, None, config, 0)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)

    # held-out neurons: the GLM's rates (as the posterior reports them) scored on them only
    config = smoothing.Config(kernel_sd=0.02, heldout_neurons=(1, 3))
    result = lj.fit(config, trials, valid=trials, steps=3, progress=False)
    heldout_rates = np.asarray(lj.infer(result, trials).heldout_rates, np.float64)
    expected = -poisson.logpmf(spikes[:, :, [1, 3]], heldout_rates)[mask].mean()
    got, _ = smoothing.validation_loss(result.params, trials, None, config, 0)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    np.testing.assert_allclose(np.nanmin(result.history["valid_loss"]), expected, rtol=1e-5)
