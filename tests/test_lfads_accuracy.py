"""LFADS accuracy on synthetic ground truth, AutoLFADS augmentations and PBT (slow).

    pytest -m slow tests/test_lfads_accuracy.py

Each Lorenz seed trains the "lorenz" preset (its own training budget: 1000 steps, dropout and
coordinated dropout 0.3) through `lj.fit`: about 2-5 minutes per seed on a busy 2-core CPU.
"""

import dataclasses

import numpy as np
import pytest

import latentjax as lj
from latentjax.models import lfads
from latentjax.train import TrainConfig

pytestmark = pytest.mark.slow


def with_train(config, steps, learning_rate=5e-3, batch_size=32):
    train = TrainConfig(
        learning_rate=learning_rate, batch_size=batch_size, steps=steps, grad_clip=200.0,
        chunk_size=100,
    )  # fmt: skip
    return dataclasses.replace(config, train=train)


def held_out_trials(data, seed):
    train, test = lj.data.split(
        data.trials.replace(conditions=np.arange(data.trials.num_trials)), seed=seed
    )
    return train, test, np.asarray(test.conditions)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lorenz_latents_and_rates_on_held_out_trials(seed):
    data = lj.datasets.lorenz(seed=seed)
    train, test, test_index = held_out_trials(data, seed)
    result = lj.fit(lfads.Config.preset("lorenz"), train, seed=seed, progress=False)
    post = lj.infer(result, test, seed=seed, n_samples=20)
    latent_r2 = lj.metrics.latent_r2(data.truth["latents"][test_index], post.latents).mean
    rate_r2 = lj.metrics.rate_r2(data.truth["rates"][test_index], post.rates)
    assert latent_r2 >= 0.9, latent_r2
    assert rate_r2 >= 0.8, rate_r2


def test_chaotic_rnn_rates_on_held_out_trials():
    data = lj.datasets.chaotic_rnn(seed=0)
    train, test, test_index = held_out_trials(data, 0)
    config = lfads.Config.preset("lorenz", fac_dim=20)
    post = lj.infer(lj.fit(config, train, progress=False), test, n_samples=20)
    rate_r2 = lj.metrics.rate_r2(data.truth["rates"][test_index], post.rates)
    assert rate_r2 >= 0.8, rate_r2


def test_pbt_sweep_over_lfads_knobs():
    data = lj.datasets.lorenz(seed=0, num_trials=40, num_bins=40)
    train, valid = lj.data.split(data.trials, seed=0)
    config = with_train(lfads.Config.preset("tiny", sv_rate=0.2), 400, 1e-2, 16)
    grid = {"train.learning_rate": [3e-3, 1e-2], "cd_rate": [0.0, 0.3], "kl_co_scale": [0.3]}
    pbt = lj.train.PBTConfig(bounds={"cd_rate": (0.0, 0.6), "train.learning_rate": (1e-4, 3e-2)})
    results = lj.sweep(config, train, valid=valid, seeds=(0,), grid=grid, pbt=pbt, progress=False)
    assert len(results) == 4
    finals = [r.history["valid_loss"][-1] for r in results]
    assert all(np.isfinite(finals))
    assert min(finals) < results[0].history["valid_loss"][0]
    # PBT acted: explored knobs left the grid and stayed inside their bounds
    rates = [r.config.train.learning_rate for r in results]
    drops = [r.config.cd_rate for r in results]
    assert any(x not in grid["train.learning_rate"] for x in rates), rates
    assert any(x not in grid["cd_rate"] for x in drops), drops
    assert all(1e-4 <= x <= 3e-2 for x in rates) and all(0.0 <= x <= 0.6 for x in drops)
