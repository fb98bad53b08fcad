"""Defaults sized to the data (issue #21 item 3): `TrainConfig.steps=None` becomes
`auto_steps(trials)`, node's `time_scale=None` comes from the trials' spans, and every
family's default `Config()` gives a sensible fit on 100 trials of a built-in system.

Floors are the scores measured at these sizes (seed 0) less a margin; the old defaults
(2000 steps whatever the data, node at time scale 1) gave node a rate R² of 0.32 at the
dropped bins of 100 Lorenz trials, where the adapted one gives 0.55."""

import dataclasses

import numpy as np
import pytest

import latentjax as lj
from latentjax.models import lds, lfads, node, seqvae
from latentjax.train import TrainConfig, auto_steps


def test_auto_steps_follow_the_documented_power_law():
    for trials in (1, 7, 50, 100, 333, 1600, 10**6):
        expected = min(max(round(2000 * (trials / 100) ** (2 / 3) / 100) * 100, 500), 20000)
        assert auto_steps(trials) == expected
    steps = [auto_steps(n) for n in range(1, 5000, 7)]
    assert steps == sorted(steps)  # never fewer steps for more data
    for bad in (0, -3, 2.5, True, None):
        with pytest.raises(ValueError, match="num_trials"):
            auto_steps(bad)


def test_gradient_families_default_to_steps_sized_to_the_data():
    for family in (lfads, seqvae, node):
        assert family.Config().train.steps is None
    assert lds.Config().train.steps == 100  # EM families keep their iteration counts


def test_fit_records_the_steps_it_chose_and_an_explicit_count_wins():
    data = lj.datasets.lds(seed=0, num_trials=30, num_bins=10, num_neurons=4)
    config = lds.Config(latent_dim=2, train=TrainConfig(steps=None, chunk_size=250))
    train, valid = lj.data.split(data.trials, (0.8, 0.2), seed=0)
    result = lj.fit(config, train, valid=valid, progress=False)
    assert result.config.train.steps == auto_steps(24) == 800
    assert result.history["step"][-1] == 800
    assert lj.fit(config, train, steps=3, progress=False).config.train.steps == 3


def test_node_time_scale_puts_the_median_trial_span_at_ten_ode_units():
    rng = np.random.default_rng(0)
    spans = rng.uniform(0.2, 0.6, size=9)
    times = np.stack([np.sort(rng.uniform(0, 1, 12)) for _ in spans])
    times = (times - times[:, :1]) / (times[:, -1:] - times[:, :1]) * spans[:, None]
    mask = np.ones(times.shape, bool)
    mask[0, 6:] = False  # a shorter observed span on one trial, its padding ignored
    spans[0] = times[0, 5]
    trials = lj.Trials(rng.poisson(1.0, (9, 12, 3)), dt=0.01, times=times, mask=mask)
    adapted = node.adapt(node.Config(), trials)
    np.testing.assert_allclose(adapted.time_scale, 10 / np.median(spans), rtol=5e-3)  # 3 digits
    assert node.adapt(node.Config(time_scale=3.0), trials).time_scale == 3.0
    with pytest.raises(ValueError, match="time_scale"):
        node.init(None, node.Config(), trials)
    with pytest.raises(ValueError, match="two observed bins"):
        node.adapt(node.Config(), trials.replace(mask=np.eye(9, 12, dtype=bool)))
    config = dataclasses.replace(node.Config(latent_dim=2, hidden_dim=4, encoder_dim=4),
                                 train=TrainConfig(steps=1, batch_size=4))  # fmt: skip
    assert lj.fit(config, trials, progress=False).config.time_scale == adapted.time_scale


# ------------------------------------------------------ default fits on 100 trials (slow)


def _lorenz_with_dropped_bins(seed=0):
    """The issue's setting: 100 Lorenz trials x 100 bins x 30 neurons, 30% of bins kept."""
    data = lj.datasets.lorenz(seed=seed, num_trials=100, num_bins=100, num_neurons=30)
    sparse, index = lj.datasets.subsample(data.trials, 0.3, seed=seed, return_index=True)
    kept = np.zeros(data.trials.mask.shape, bool)
    for trial, bins in enumerate(index):
        kept[trial, bins[bins >= 0]] = True
    return data, sparse, kept


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, floor", [("seqvae", 0.35), ("node", 0.4), ("lfads", 0.35)]
)  # fmt: skip
def test_default_config_recovers_rates_at_dropped_bins_of_100_trials(name, floor):
    data, sparse, kept = _lorenz_with_dropped_bins()
    family = lj.family.get(name).family
    if name == "node":  # irregular observations; rates read out at every original time
        result = lj.fit(family.Config(), sparse, progress=False)
        post = lj.infer(result, sparse, times=data.trials.times)
    else:
        masked = data.trials.replace(mask=kept)
        post = lj.infer(result := lj.fit(family.Config(), masked, progress=False), masked)
    assert result.config.train.steps == auto_steps(100)
    r2 = lj.metrics.rate_r2(data.truth["rates"], np.asarray(post.rates), mask=~kept)
    assert r2 > floor, r2
