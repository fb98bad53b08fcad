"""Shared by the LFADS accuracy scripts: seeded splits, baselines and co-bps.

Protocol (NLB co-smoothing): trials are split 80/20 (`lj.data.split`, seeded) and 20% of the
neurons are held out (`lj.data.heldout_neurons`, seeded). Every model sees the held-in
neurons of the test trials only. LFADS predicts held-out rates itself (`n_heldout`, trained on
all neurons of the training trials); the baselines (spike smoothing, GPFA, LDS, PLDS) fit a
Poisson GLM (scikit-learn, alpha 1e-2) from their held-in features to each held-out neuron on
the training trials, as nlb_tools does.
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import numpy as np
from sklearn.linear_model import PoissonRegressor

import latentjax as lj
from latentjax.metrics.nlb import smooth_spikes


class Split(NamedTuple):
    train: lj.Trials  # training trials, held-in neurons then held-out neurons
    test_heldin: lj.Trials  # test trials, held-in neurons
    test_heldout: lj.Trials  # test trials, held-out neurons
    train_index: np.ndarray  # [train trials] indices into the original trials
    test_index: np.ndarray
    neuron_order: np.ndarray  # [neurons] original neuron of each column of `train`
    n_heldout: int


def split(trials: lj.Trials, *, seed: int, heldout_fraction=0.2) -> Split:
    """Seeded 80/20 trial split and held-out neurons (the last columns of `train`)."""
    tagged = lj.Trials(
        trials.spikes, trials.dt, mask=trials.mask, conditions=np.arange(trials.num_trials),
        neuron_ids=np.arange(trials.num_neurons),
    )  # fmt: skip
    train, test = lj.data.split(tagged, (0.8, 0.2), seed=seed)
    heldin, heldout = lj.data.heldout_neurons(tagged, heldout_fraction, seed=seed)
    order = np.array(heldin.neuron_ids + heldout.neuron_ids)
    n_heldout = heldout.num_neurons
    return Split(
        train=train.select_neurons(order),
        test_heldin=test.select_neurons(order[:-n_heldout]),
        test_heldout=test.select_neurons(order[-n_heldout:]),
        train_index=np.asarray(train.conditions),
        test_index=np.asarray(test.conditions),
        neuron_order=order,
        n_heldout=n_heldout,
    )


def glm_rates(train_features, train_heldout, *test_features) -> list[np.ndarray]:
    """Rates `[trials, time, heldout]` of per-neuron Poisson GLMs from features `[trials,
    time, dims]`, fitted on `train_features` -> `train_heldout`, for each of `test_features`."""
    flat = train_features.reshape(-1, train_features.shape[-1])
    mean, scale = flat.mean(0), flat.std(0) + 1e-6
    counts = train_heldout.reshape(-1, train_heldout.shape[-1])
    glms = [
        PoissonRegressor(alpha=1e-2, max_iter=500).fit((flat - mean) / scale, counts[:, n])
        for n in range(counts.shape[1])
    ]
    out = []
    for features in test_features:
        x = ((features - mean) / scale).reshape(-1, features.shape[-1])
        rates = np.stack([glm.predict(x) for glm in glms], axis=-1)
        out.append(rates.reshape(features.shape[:-1] + (counts.shape[1],)))
    return out


def glm_co_bps(train_features, train_heldout, test_features, test_heldout) -> float:
    """Co-bps of per-neuron Poisson GLMs from features `[trials, time, dims]`."""
    (rates,) = glm_rates(train_features, train_heldout, test_features)
    return lj.metrics.co_bps(rates, test_heldout)


BASELINES = ("smoothing", "gpfa", "lds", "plds")


def baselines(
    s: Split, *, latent_dim: int, kernel_sd_bins: float, seed: int, names=BASELINES
) -> list[dict]:
    """Rows {model, co_bps, seconds} for the named baselines (smoothing, GPFA, LDS, PLDS)."""
    heldin = s.train.select_neurons(slice(0, s.train.num_neurons - s.n_heldout))
    train_heldout = np.asarray(s.train.spikes)[..., -s.n_heldout :]
    test_heldout = np.asarray(s.test_heldout.spikes)
    rows = []
    if "smoothing" in names:
        start = time.perf_counter()
        smooth = [smooth_spikes(t.spikes, t.mask, kernel_sd_bins) for t in (heldin, s.test_heldin)]
        co = glm_co_bps(smooth[0], train_heldout, smooth[1], test_heldout)
        rows.append(dict(model="spike smoothing", co_bps=co, seconds=time.perf_counter() - start))
    families = {
        "gpfa": ("GPFA", lj.models.gpfa.Config(latent_dim=latent_dim)),
        "lds": ("LDS (sqrt counts)", lj.models.lds.Config(latent_dim=latent_dim, transform="sqrt")),
        "plds": ("PLDS", lj.models.plds.Config(latent_dim=latent_dim)),
    }
    for name, config in (families[n] for n in names if n in families):
        print(f"fitting {name}", flush=True)
        start = time.perf_counter()
        try:
            result = lj.fit(config, heldin, seed=seed, progress=False)
            latents = [np.asarray(lj.infer(result, t).latents) for t in (heldin, s.test_heldin)]
            co = glm_co_bps(latents[0], train_heldout, latents[1], test_heldout)
        except Exception as err:  # a baseline failing is reported, not fatal
            print(f"{name} failed: {err!r}")
            co = float("nan")
        rows.append(dict(model=name, co_bps=co, seconds=time.perf_counter() - start))
    return rows


def fit_lfads(config, s: Split, *, seed: int, steps: int, n_samples: int = 20):
    """(posterior of the test trials, seconds of training, co-bps) of LFADS."""
    config = dataclasses.replace(config, n_heldout=s.n_heldout)
    start = time.perf_counter()
    result = lj.fit(config, s.train, seed=seed, steps=steps, progress=False)
    seconds = time.perf_counter() - start
    post = lj.infer(result, s.test_heldin, seed=seed, n_samples=n_samples)
    co = lj.metrics.co_bps(np.asarray(post.rates)[..., -s.n_heldout :], s.test_heldout.spikes)
    return post, seconds, co
