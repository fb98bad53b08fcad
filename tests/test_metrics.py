"""Tests of latentjax.metrics against independently computed values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from latentjax import metrics


def poisson_data(seed=0, shape=(40, 30, 6)):
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 0.5, size=shape)
    return rates, rng.poisson(rates).astype(float)


def brute_force_bits_per_spike(rates, spikes, observed):
    """Reference: scipy log-pmf summed neuron by neuron over the observed bins."""
    gain, total = 0.0, 0.0
    for neuron in range(spikes.shape[-1]):
        keep = observed & ~np.isnan(spikes[..., neuron])
        counts = spikes[..., neuron][keep]
        predicted = rates[..., neuron][keep]
        predicted = np.array([1e-9 if r == 0 else r for r in predicted])
        null = counts.sum() / counts.size
        gain += stats.poisson.logpmf(counts, predicted).sum()
        gain -= stats.poisson.logpmf(counts, null if null > 0 else 1e-9).sum()
        total += counts.sum()
    return gain / total / math.log(2)


# bits per spike


def test_mean_rate_model_scores_exactly_zero():
    _, spikes = poisson_data()
    mask = np.random.default_rng(1).random(spikes.shape[:2]) < 0.7
    mean_rates = np.broadcast_to(spikes[mask].mean(axis=0), spikes.shape)
    assert abs(metrics.bits_per_spike(mean_rates, spikes, mask=mask)) < 1e-12


def test_true_rates_score_the_analytic_expectation():
    rng = np.random.default_rng(2)
    rates = rng.gamma(1.5, 0.4, size=(1000, 50, 8))  # 400k bins: s.d. of the estimate ~0.002
    spikes = rng.poisson(rates)
    # E[y log r - r] = r log r - r; the null model's mean -> each neuron's mean rate.
    mean_rates = rates.mean(axis=(0, 1))
    expected_gain = np.sum(rates * np.log(rates)) - np.sum(
        rates.shape[0] * rates.shape[1] * mean_rates * np.log(mean_rates)
    )
    expected = expected_gain / rates.sum() / math.log(2)
    assert metrics.bits_per_spike(rates, spikes) == pytest.approx(expected, abs=0.005)
    # the tolerance is tight enough to tell rates 10% off (they lose about 0.008 bits/spike)
    for scale in (0.9, 1.1):
        assert metrics.bits_per_spike(scale * rates, spikes) != pytest.approx(expected, abs=0.005)


def test_matches_scipy_brute_force_with_mask_nan_and_zero_rates():
    rates, spikes = poisson_data(seed=3)
    rates[0, :5, 0] = 0.0  # floored to 1e-9
    spikes[1, 3:7, 2] = np.nan  # left out
    mask = np.random.default_rng(4).random(spikes.shape[:2]) < 0.8
    expected = brute_force_bits_per_spike(rates, spikes, mask)
    assert metrics.bits_per_spike(rates, spikes, mask=mask) == pytest.approx(expected, rel=1e-9)


def test_masked_bins_change_nothing():
    rates, spikes = poisson_data(seed=5)
    mask = np.ones(spikes.shape[:2], bool)
    mask[::3, 10:] = False
    reference = metrics.bits_per_spike(rates, spikes, mask=mask)
    rates[~mask] = np.nan
    rates[0, -1] = -5.0  # a masked bin
    spikes[~mask] = 1000.0
    assert metrics.bits_per_spike(rates, spikes, mask=mask) == reference


def test_nan_spikes_are_the_same_as_masked_bins():
    rates, spikes = poisson_data(seed=6)
    mask = np.random.default_rng(7).random(spikes.shape[:2]) < 0.6
    with_nan = np.where(mask[..., None], spikes, np.nan)
    assert metrics.bits_per_spike(rates, with_nan) == pytest.approx(
        metrics.bits_per_spike(rates, spikes, mask=mask), rel=1e-12
    )


def test_jax_and_numpy_arrays_agree():
    rates, spikes = poisson_data(seed=8)
    from_numpy = metrics.bits_per_spike(rates.astype(np.float32), spikes)
    from_jax = metrics.bits_per_spike(jnp.asarray(rates, jnp.float32), jnp.asarray(spikes))
    assert from_jax == pytest.approx(from_numpy, rel=1e-12)


def test_co_bps_and_fp_bps_are_bits_per_spike():
    rates, spikes = poisson_data(seed=9)
    value = metrics.bits_per_spike(rates, spikes)
    assert metrics.co_bps(rates, spikes) == value
    assert metrics.fp_bps(rates, spikes) == value


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r, s: (r[:, :-1], s), "`rates` and `spikes` must agree"),
        (lambda r, s: (r.at[0, 0, 0].set(-1.0), s), "`rates` holds negative"),
        (lambda r, s: (r.at[0, 0, 0].set(jnp.nan), s), "`rates` holds 1 NaN"),
        (lambda r, s: (r, s * 0), "no spike"),
    ],
)
def test_bits_per_spike_rejects_bad_input(change, message):
    rates, spikes = poisson_data(seed=10)
    rates, spikes = change(jnp.asarray(rates), jnp.asarray(spikes))
    with pytest.raises(ValueError, match=message):
        metrics.bits_per_spike(rates, spikes)


def test_bits_per_spike_rejects_mask_of_wrong_shape():
    rates, spikes = poisson_data()
    with pytest.raises(ValueError, match="`mask` must have shape"):
        metrics.bits_per_spike(rates, spikes, mask=np.ones(spikes.shape[:1], bool))


# PSTH R²


def reference_psth_r2(rates, spikes, conditions, observed, kernel_sd_bins):
    """Reference: an explicit truncated-Gaussian loop, per-neuron R² by its formula."""
    num_trials, num_bins, num_neurons = spikes.shape
    radius = int(3.0 * kernel_sd_bins + 0.5)
    smoothed = np.zeros_like(spikes)
    for b in range(num_trials):
        for t in range(num_bins):
            lo, hi = max(0, t - radius), min(num_bins, t + radius + 1)
            window = np.arange(lo, hi)
            weights = np.exp(-0.5 * ((window - t) / kernel_sd_bins) ** 2) * observed[b, lo:hi]
            if weights.sum() > 0:
                smoothed[b, t] = weights @ spikes[b, lo:hi] / weights.sum()
    true_rows, predicted_rows = [], []
    for condition in sorted(set(conditions.tolist())):
        for t in range(num_bins):
            members = [
                b for b in range(num_trials) if conditions[b] == condition and observed[b, t]
            ]
            if members:
                true_rows.append(np.mean([smoothed[b, t] for b in members], axis=0))
                predicted_rows.append(np.mean([rates[b, t] for b in members], axis=0))
    true_psth, predicted_psth = np.array(true_rows), np.array(predicted_rows)
    residual = ((true_psth - predicted_psth) ** 2).sum(axis=0)
    total = ((true_psth - true_psth.mean(axis=0)) ** 2).sum(axis=0)
    return np.mean(1 - residual / total)


def test_psth_r2_matches_reference():
    rng = np.random.default_rng(11)
    conditions = np.arange(12) % 3
    shape_by_condition = 1.0 + np.sin(
        np.linspace(0, 3, 25)[None, :, None] + conditions[:, None, None] + np.arange(4)
    )
    spikes = rng.poisson(shape_by_condition).astype(float)
    rates = shape_by_condition * rng.uniform(0.8, 1.2, size=spikes.shape)
    observed = rng.random(spikes.shape[:2]) < 0.9
    expected = reference_psth_r2(rates, spikes, conditions, observed, kernel_sd_bins=0.07 / 0.02)
    value = metrics.psth_r2(rates, spikes, conditions, dt=0.02, mask=observed)
    assert value == pytest.approx(expected, rel=1e-9)


def test_psth_r2_is_one_for_the_smoothed_condition_means_and_needs_dt():
    rng = np.random.default_rng(12)
    conditions = np.array([0, 1, 0, 1, 1])
    spikes = rng.poisson(2.0, size=(5, 20, 3)).astype(float)
    rates = np.empty_like(spikes)
    for condition in (0, 1):
        rates[conditions == condition] = spikes[conditions == condition].mean(axis=0)
    assert metrics.psth_r2(rates, spikes, conditions, kernel_sd=0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pass `dt`"):
        metrics.psth_r2(rates, spikes, conditions)
    with pytest.raises(ValueError, match="`conditions` must have shape"):
        metrics.psth_r2(rates, spikes, conditions[:3], dt=0.01)


# recovery


def random_latents(seed=13, shape=(30, 40, 3)):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("fit_on", ["train", "all"])
def test_latent_r2_is_one_for_an_invertible_affine_transform(fit_on):
    true = random_latents()
    transform = np.random.default_rng(14).normal(size=(3, 3)) + 2 * np.eye(3)
    est = true @ transform + np.array([1.0, -2.0, 0.5])
    result = metrics.latent_r2(true, jnp.asarray(est), fit_on=fit_on)
    np.testing.assert_allclose(result.per_dim, 1.0, atol=1e-9)
    assert result.mean == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(result.affine_map(est), true, atol=1e-6)  # est passed as float32


def test_latent_r2_is_near_zero_for_independent_noise():
    true = random_latents()
    noise = random_latents(seed=15, shape=(30, 40, 5))
    assert abs(metrics.latent_r2(true, noise, seed=1).mean) < 0.05


def test_latent_r2_on_all_trials_matches_least_squares():
    true = random_latents()
    est = true[..., :2] + 0.5 * random_latents(seed=16, shape=(30, 40, 2))
    design = np.column_stack([est.reshape(-1, 2), np.ones(30 * 40)])
    targets = true.reshape(-1, 3)
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    residual = targets - design @ coef
    expected = 1 - (residual**2).sum(0) / ((targets - targets.mean(0)) ** 2).sum(0)
    result = metrics.latent_r2(true, est, fit_on="all")
    np.testing.assert_allclose(result.per_dim, expected, rtol=1e-9)


def test_latent_r2_ignores_masked_bins_and_checks_input():
    true, est = random_latents(), random_latents(seed=17)
    mask = np.random.default_rng(18).random(true.shape[:2]) < 0.7
    reference = metrics.latent_r2(true, est, mask=mask).mean
    est[~mask] = np.nan
    assert metrics.latent_r2(true, est, mask=mask).mean == reference
    with pytest.raises(ValueError, match="`fit_on`"):
        metrics.latent_r2(true, est, fit_on="test", mask=mask)
    with pytest.raises(ValueError, match="`true_latents` and `est_latents`"):
        metrics.latent_r2(true, est[:, :-1], mask=mask)


def test_rate_r2_against_its_formula():
    true_rates, _ = poisson_data(seed=19)
    est = true_rates + np.random.default_rng(20).normal(0, 0.3, size=true_rates.shape)
    flat_true, flat_est = true_rates.reshape(-1, 6), est.reshape(-1, 6)
    expected = np.mean(
        1 - ((flat_true - flat_est) ** 2).sum(0) / ((flat_true - flat_true.mean(0)) ** 2).sum(0)
    )
    assert metrics.rate_r2(true_rates, est) == pytest.approx(expected, rel=1e-12)
    assert metrics.rate_r2(true_rates, true_rates) == 1.0


# decoding


def test_velocity_r2_of_a_linear_relation_matches_the_signal_fraction():
    rng = np.random.default_rng(21)
    features = rng.normal(size=(60, 30, 5))
    weights = rng.normal(size=(5, 2))
    signal = features @ weights
    noise_sd = 0.5
    behavior = signal + noise_sd * rng.normal(size=signal.shape)
    split = dict(train_idx=np.arange(45), test_idx=np.arange(45, 60))
    signal_var = (weights**2).sum(axis=0)  # features are white
    expected = np.mean(signal_var / (signal_var + noise_sd**2))
    assert metrics.velocity_r2(features, behavior, **split) == pytest.approx(expected, abs=0.03)
    assert metrics.velocity_r2(features, signal, **split) > 0.999
    per_axis = metrics.velocity_r2(features, behavior, multioutput="raw_values", **split)
    np.testing.assert_allclose(per_axis, signal_var / (signal_var + noise_sd**2), atol=0.04)
    assert per_axis.mean() == pytest.approx(metrics.velocity_r2(features, behavior, **split))


def test_velocity_r2_lag_and_mask():
    rng = np.random.default_rng(22)
    features = rng.normal(size=(20, 40, 3))
    behavior = np.zeros((20, 40, 1))
    behavior[:, 4:, 0] = features[:, :-4].sum(axis=2)  # behaviour follows by 4 bins
    split = dict(train_idx=np.arange(15), test_idx=np.arange(15, 20))
    assert metrics.velocity_r2(features, behavior, lag=4, **split) > 0.999
    assert metrics.velocity_r2(features, behavior, lag=0, **split) < 0.2
    mask = rng.random((20, 40)) < 0.8
    reference = metrics.velocity_r2(features, behavior, lag=4, mask=mask, **split)
    features[~mask] = 1e6
    behavior[~mask] = np.nan
    assert metrics.velocity_r2(features, behavior, lag=4, mask=mask, **split) == reference


def test_velocity_r2_checks_input():
    features = np.zeros((6, 10, 2))
    with pytest.raises(ValueError, match="share trials"):
        metrics.velocity_r2(features, features, train_idx=[0, 1, 2], test_idx=[2, 3])
    with pytest.raises(ValueError, match="`lag`"):
        metrics.velocity_r2(features, features, train_idx=[0, 1], test_idx=[2], lag=10)
    with pytest.raises(ValueError, match="`rates_or_latents` and `behavior`"):
        metrics.velocity_r2(features, features[:5], train_idx=[0, 1], test_idx=[2])


# few-shot co-smoothing


def test_few_shot_co_bps_approaches_the_true_rates_with_many_shots():
    rng = np.random.default_rng(23)
    latents = rng.normal(size=(400, 25, 3))
    readout = rng.normal(0, 0.4, size=(3, 6))
    heldout_rates = np.exp(latents @ readout)
    spikes = rng.poisson(heldout_rates).astype(float)
    best = metrics.bits_per_spike(heldout_rates, spikes)
    many = metrics.few_shot_co_bps(latents, spikes, num_shots=200, num_repeats=4)
    few = metrics.few_shot_co_bps(latents, spikes, num_shots=2, num_repeats=4)
    assert many == pytest.approx(best, abs=0.03)
    assert few < many - 0.01
    with pytest.raises(ValueError, match="`num_shots`"):
        metrics.few_shot_co_bps(latents, spikes, num_shots=400)


# every metric: masked bins change nothing


def _apply_metric(name, first, second, conditions, mask):
    split = dict(train_idx=np.arange(20), test_idx=np.arange(20, 30))
    calls = {
        "bits_per_spike": lambda: metrics.bits_per_spike(first, second, mask=mask),
        "psth_r2": lambda: metrics.psth_r2(first, second, conditions, dt=0.02, mask=mask),
        "velocity_r2": lambda: metrics.velocity_r2(first, second, mask=mask, **split),
        "latent_r2": lambda: metrics.latent_r2(second, first, mask=mask).mean,
        "rate_r2": lambda: metrics.rate_r2(second, first, mask=mask),
        "few_shot_co_bps": lambda: metrics.few_shot_co_bps(
            first, second, num_shots=10, num_repeats=1, mask=mask
        ),
    }
    return calls[name]()


@pytest.mark.parametrize(
    "name",
    ["bits_per_spike", "psth_r2", "velocity_r2", "latent_r2", "rate_r2", "few_shot_co_bps"],
)
def test_masked_values_change_no_metric(name):
    rng = np.random.default_rng(24)
    first = rng.gamma(2.0, 0.5, size=(30, 20, 4))
    second = rng.poisson(first + first[..., ::-1]).astype(float)
    conditions = np.arange(30) % 3
    mask = rng.random((30, 20)) < 0.75
    reference = _apply_metric(name, first, second, conditions, mask)
    first[~mask], second[~mask] = np.nan, 1e3
    assert _apply_metric(name, first, second, conditions, mask) == pytest.approx(
        reference, rel=1e-12
    )
