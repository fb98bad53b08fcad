"""Tests of `lj.evaluate`: which metrics apply, and that each equals the metric called directly."""

import numpy as np
import pytest

import latentjax as lj
from latentjax import metrics


def synthetic(seed=0, num_trials=24, num_bins=30, num_heldin=6, num_heldout=3):
    """Latents, Poisson rates of held-in + held-out neurons, behaviour and conditions."""
    rng = np.random.default_rng(seed)
    conditions = np.arange(num_trials) % 3
    time = np.linspace(0, 2 * np.pi, num_bins)
    latents = np.stack(
        [np.sin(time + conditions[:, None]), np.cos(2 * time - conditions[:, None])], axis=-1
    ) + 0.3 * rng.normal(size=(num_trials, num_bins, 2))
    readout = rng.normal(0, 0.7, size=(2, num_heldin + num_heldout))
    rates = np.exp(latents @ readout)
    spikes = rng.poisson(rates).astype(float)
    behavior = latents @ rng.normal(size=(2, 2))
    trials = lj.Trials(spikes[..., :num_heldin], 0.02, behavior=behavior, conditions=conditions)
    heldout = lj.Trials(spikes[..., num_heldin:], 0.02)
    return trials, heldout, latents, rates


def test_evaluate_reports_every_metric_that_applies():
    trials, heldout, latents, rates = synthetic()
    posterior = lj.Posterior(latents=latents, rates=rates)
    truth = {"latents": latents, "rates": rates[..., :6], "params": "ignored"}
    result = lj.evaluate(posterior, trials, truth=truth, heldout=heldout)

    train_idx, test_idx = np.sort(np.random.default_rng(0).permutation(24)[:19]), None
    test_idx = np.setdiff1d(np.arange(24), train_idx)
    all_spikes = np.concatenate([trials.spikes, heldout.spikes], axis=2)
    expected = {
        "bps": metrics.bits_per_spike(rates[..., :6], trials.spikes),
        "co_bps": metrics.co_bps(rates[..., 6:], heldout.spikes),
        "latent_r2": metrics.latent_r2(latents, latents).mean,
        "rate_r2": 1.0,
        "velocity_r2": metrics.velocity_r2(
            rates, trials.behavior, train_idx=train_idx, test_idx=test_idx
        ),
        "psth_r2": metrics.psth_r2(rates, all_spikes, trials.conditions, dt=0.02),
    }
    assert list(result) == list(expected)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-9), name
    assert result["latent_r2"] == pytest.approx(1.0)
    assert result["co_bps"] > 0
    assert all(isinstance(value, float) for value in result.values())
    table = str(result)
    assert "co_bps" in table and "psth_r2" in table


def test_heldout_rates_extra_equals_concatenated_rates():
    trials, heldout, latents, rates = synthetic(seed=1)
    concatenated = lj.evaluate(lj.Posterior(latents, rates), trials, heldout=heldout)
    separate = lj.Posterior(latents, rates[..., :6], extras={"heldout_rates": rates[..., 6:]})
    assert lj.evaluate(separate, trials, heldout=heldout) == concatenated


def test_truth_rates_may_cover_heldout_neurons():
    trials, heldout, latents, rates = synthetic(seed=2)
    noisy = rates * np.random.default_rng(3).uniform(0.9, 1.1, size=rates.shape)
    result = lj.evaluate(
        lj.Posterior(latents, noisy), trials, truth={"rates": rates}, heldout=heldout
    )
    assert result["rate_r2"] == pytest.approx(metrics.rate_r2(rates, noisy), rel=1e-12)


def test_fit_result_goes_through_infer():
    trials, _, latents, rates = synthetic(seed=4)
    posterior = lj.Posterior(latents, rates[..., :6])
    calls = []

    def infer(result, data, *, seed):
        calls.append((result, data, seed))
        return posterior

    fit = lj.FitResult(params={}, config=None)
    assert lj.evaluate(fit, trials, infer=infer, seed=7) == lj.evaluate(posterior, trials, seed=7)
    assert calls == [(fit, trials, 7)]


def test_mcmc_diagnostics_and_latent_only_posteriors():
    rng = np.random.default_rng(5)
    trials = lj.Trials(rng.poisson(1.0, size=(4, 10, 3)), 0.01)
    extras = {
        "divergences": np.array([0, 2, 1]),
        "r_hat": np.array([1.0, 1.07]),
        "ess": np.array([350.0, 90.0]),
    }
    posterior = lj.Posterior(np.zeros((4, 10, 2)), extras=extras, family="coupled_lds")
    result = lj.evaluate(posterior, trials)  # from coupled_lds's `diagnostics` hook
    assert result == {"divergences": 3.0, "r_hat_max": 1.07, "ess_min": 90.0}
    # evaluate itself reads no family's extras: without the family, no diagnostics
    unnamed = lj.Posterior(np.zeros((4, 10, 2)), extras=extras)
    assert str(lj.evaluate(unnamed, trials)) == "(no metric applies)"
    assert str(lj.evaluate(lj.Posterior(np.zeros((4, 10, 2))), trials)) == "(no metric applies)"


def test_evaluate_rejects_mismatched_input():
    trials, heldout, latents, rates = synthetic(seed=6)
    with pytest.raises(ValueError, match="pass `heldout`"):
        lj.evaluate(lj.Posterior(latents, rates), trials)
    with pytest.raises(ValueError, match="must predict the held-out neurons"):
        lj.evaluate(lj.Posterior(latents, rates[..., :6]), trials, heldout=heldout)
    with pytest.raises(ValueError, match="`posterior_or_result`"):
        lj.evaluate(rates, trials)
    with pytest.raises(ValueError, match='`truth\\["rates"\\]` covers 4'):
        lj.evaluate(lj.Posterior(latents, rates[..., :6]), trials, truth={"rates": rates[..., :4]})
    with pytest.raises(ValueError, match="`heldout` must cover"):
        lj.evaluate(lj.Posterior(latents, rates), trials, heldout=heldout[:3])
