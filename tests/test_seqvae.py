"""RNN sequential VAE: masking, stochastic latents, training through lj.fit and lj.sweep."""

from __future__ import annotations

import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import latentjax as lj
import latentjax.models.seqvae as seqvae
from latentjax.train import TrainConfig

TINY = seqvae.Config(
    encoder_dim=8,
    initial_dim=4,
    generator_dim=8,
    latent_dim=3,
    kl_ramp_steps=0,
    train=TrainConfig(learning_rate=2e-2, batch_size=8, steps=60, chunk_size=20),
)


@pytest.fixture(scope="module")
def lorenz():
    data = lj.datasets.lorenz(seed=0, num_trials=8, num_bins=20, num_neurons=6)
    mask = np.random.default_rng(0).random((8, 20)) < 0.5
    return data, data.trials.replace(mask=mask)


def test_masked_bins_do_not_change_the_loss(lorenz):
    _, trials = lorenz
    config = dataclasses.replace(TINY, input_dim=2)
    params = seqvae.init(jax.random.PRNGKey(0), config, trials)
    garbled = np.asarray(trials.spikes).copy()
    garbled[~np.asarray(trials.mask)] = 7
    batch = jax.tree.map(jnp.asarray, trials)
    other = batch.replace(spikes=garbled)
    key = jax.random.PRNGKey(1)
    loss = jax.jit(seqvae.loss, static_argnums=3)
    np.testing.assert_allclose(loss(params, batch, key, config, 0)[0],
                               loss(params, other, key, config, 0)[0], rtol=1e-6)  # fmt: skip


def test_reconstruction_term_is_the_poisson_log_likelihood(lorenz):
    _, trials = lorenz
    config = dataclasses.replace(TINY, kl_scale=0.0)
    params = seqvae.init(jax.random.PRNGKey(0), config, trials)
    # A near-zero posterior variance of z0 (no step latents): the sampled loss is the
    # reconstruction of the posterior mean.
    initial = params["initial"]
    initial["bias"] = initial["bias"].at[4:].set(-30.0)
    initial["kernel"] = initial["kernel"].at[:, 4:].set(0.0)
    _, aux = seqvae.loss(params, jax.tree.map(jnp.asarray, trials), jax.random.PRNGKey(3),
                         config, 0)  # fmt: skip
    rates = seqvae.posterior(params, trials, config, jax.random.PRNGKey(0)).rates
    spikes, mask = np.asarray(trials.spikes), np.asarray(trials.mask)
    expected = -scipy.stats.poisson.logpmf(spikes, rates)[mask].sum() / (mask.sum() * 6)
    np.testing.assert_allclose(float(aux["recon"]), expected, rtol=1e-3)


def test_validation_loss_weighs_the_kl_fully_at_every_step(lorenz):
    _, trials = lorenz
    config = dataclasses.replace(TINY, kl_ramp_steps=100, kl_scale=0.5)
    params = seqvae.init(jax.random.PRNGKey(0), config, trials)
    batch, key = jax.tree.map(jnp.asarray, trials), jax.random.PRNGKey(2)
    loss = jax.jit(seqvae.loss, static_argnums=3)
    validation_loss = jax.jit(seqvae.validation_loss, static_argnums=3)
    ramped, aux = loss(params, batch, key, config, 0)
    np.testing.assert_allclose(ramped, aux["recon"], rtol=1e-6)  # KL weight 0 at step 0
    for step in (0, 50, 1000):
        value, _ = validation_loss(params, batch, key, config, step)
        np.testing.assert_allclose(value, aux["recon"] + 0.5 * aux["kl"], rtol=1e-5)


def test_coordinated_dropout_scores_hidden_bins_as_an_unbiased_estimate(lorenz):
    """With the encoder cut off (a constant, nearly certain z0) the rates do not depend on
    what the encoder sees, so the coordinated-dropout reconstruction (hidden bins only,
    weight 1 / cd_rate) averages over draws to the full one; validation hides nothing."""
    _, trials = lorenz
    config = dataclasses.replace(TINY, cd_rate=0.4, kl_scale=0.0)
    params = seqvae.init(jax.random.PRNGKey(0), config, trials)
    bias = jnp.concatenate([jnp.full(4, 0.5), jnp.full(4, -30.0)])  # mean 0.5, var ~VAR_MIN
    params = {**params, "initial": {"kernel": 0 * params["initial"]["kernel"], "bias": bias}}
    batch = jax.tree.map(jnp.asarray, trials)
    keys = jax.random.split(jax.random.PRNGKey(5), 400)
    draws = jax.jit(jax.vmap(lambda k: seqvae.loss(params, batch, k, config, 0)[1]["recon"]))(keys)
    full, _ = seqvae.validation_loss(params, batch, keys[0], config, 0)
    without_cd, _ = seqvae.loss(params, batch, keys[0], dataclasses.replace(config, cd_rate=0.0), 0)
    np.testing.assert_allclose(full, without_cd, rtol=1e-5)
    standard_error = float(np.std(draws)) / np.sqrt(draws.size)
    assert abs(float(np.mean(draws)) - float(full)) < 4 * standard_error
    assert float(np.std(draws)) > 0.01 * float(full)  # the draws do hide different bins


def test_fit_learns_and_posterior_predicts_masked_bins(lorenz):
    data, trials = lorenz
    result = lj.fit(TINY, trials, progress=False)
    loss = result.history["loss"]
    assert loss[-1] < loss[0]
    post = lj.infer(result, trials)
    assert post.latents.shape == (8, 20, 3) and post.rates.shape == (8, 20, 6)
    assert np.isfinite(post.rates).all()
    # the masked bins, never seen in training or inference, are predicted: better than the
    # untrained model and than each neuron's mean rate over the observed bins
    spikes, hidden = np.asarray(data.trials.spikes), ~np.asarray(trials.mask)
    untrained = seqvae.posterior(seqvae.init(jax.random.PRNGKey(0), TINY, trials), trials, TINY,
                                 jax.random.PRNGKey(0))  # fmt: skip
    mean_rate = np.broadcast_to(spikes[~hidden].mean(0), spikes.shape)

    def hidden_log_lik(rates):
        return scipy.stats.poisson.logpmf(spikes, np.asarray(rates))[hidden].sum()

    trained = hidden_log_lik(post.rates)
    assert trained > hidden_log_lik(untrained.rates) and trained > hidden_log_lik(mean_rate)


def test_refinement_reaches_a_map_of_the_log_joint_and_ignores_masked_bins(lorenz):
    """`refine_steps`: the initial states and inputs move from the encoder's means to a local
    maximum of log p(y_observed, z0, u): the log joint, computed independently with scipy from
    the returned rates and latent variables, rises on every trial; L-BFGS started from the
    refined point barely improves it; counts at masked bins change nothing."""
    _, trials = lorenz
    config = dataclasses.replace(TINY, input_dim=2)
    params = seqvae.init(jax.random.PRNGKey(0), config, trials)
    key = jax.random.PRNGKey(0)
    amortised = seqvae.posterior(params, trials, config, key)
    refined = seqvae.posterior(params, trials, config, key, refine_steps=300, refine_lr=0.05)
    spikes, mask = np.asarray(trials.spikes), np.asarray(trials.mask)

    def neg_log_joint(post):  # [trials]
        log_lik = np.where(mask[..., None], scipy.stats.poisson.logpmf(spikes, post.rates), 0)
        log_prior = scipy.stats.norm.logpdf(post.extras["initial_mean"]).sum(-1)
        log_prior += scipy.stats.norm.logpdf(post.extras["inputs"]).sum((-2, -1))
        return -log_lik.sum((-2, -1)) - log_prior

    assert (neg_log_joint(refined) < neg_log_joint(amortised) - 0.1).all()

    start = {"initial": jnp.asarray(refined.extras["initial_mean"][0]),
             "inputs": jnp.asarray(refined.extras["inputs"][0])}  # fmt: skip
    flat, unflatten = jax.flatten_util.ravel_pytree(start)
    objective = jax.jit(jax.value_and_grad(lambda x: seqvae._neg_log_joint(
        params, jnp.asarray(spikes[0], jnp.float32), jnp.asarray(mask[0]), unflatten(x), config
    )))  # fmt: skip
    value = float(objective(flat)[0])
    np.testing.assert_allclose(value, neg_log_joint(refined)[0], rtol=1e-4)
    polished = scipy.optimize.minimize(
        lambda x: tuple(np.asarray(v, np.float64) for v in objective(jnp.asarray(x, jnp.float32))),
        np.asarray(flat, np.float64), jac=True, method="L-BFGS-B",
    )  # fmt: skip
    assert value - polished.fun < 0.01 * (neg_log_joint(amortised)[0] - value)

    garbled = spikes.copy()
    garbled[~mask] = 7
    again = seqvae.posterior(params, trials.replace(spikes=garbled), config, key,
                             refine_steps=300, refine_lr=0.05)  # fmt: skip
    np.testing.assert_allclose(again.rates, refined.rates, rtol=1e-5)
    with pytest.raises(ValueError, match="refine_steps"):
        seqvae.posterior(params, trials, config, key, refine_steps=-1)


@pytest.mark.slow
def test_sweep_trains_a_population_over_the_kl_knob(lorenz):
    _, trials = lorenz
    results = lj.sweep(TINY, trials, seeds=(0,), grid={"kl_scale": [0.5, 1.0]}, steps=20,
                       progress=False)  # fmt: skip
    assert [r.config.kl_scale for r in results] == [0.5, 1.0]
    assert all(np.isfinite(r.history["loss"]).all() for r in results)


@pytest.mark.parametrize(
    "changes, message",
    [(dict(encoder_dim=0), "encoder_dim"), (dict(input_dim=-1), "input_dim"),
     (dict(readout="gamma"), "readout"), (dict(cd_rate=-0.1), "cd_rate")],
)  # fmt: skip
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        seqvae.Config(**changes)


def test_continuous_signals_need_the_gaussian_readout():
    trials = lj.Trials(np.random.default_rng(0).normal(size=(2, 5, 3)), dt=0.1, continuous=True)
    with pytest.raises(ValueError, match="gaussian"):
        seqvae.init(jax.random.PRNGKey(0), TINY, trials)
    config = dataclasses.replace(TINY, readout="gaussian")
    params = seqvae.init(jax.random.PRNGKey(0), config, trials)
    post = seqvae.posterior(params, trials, config, jax.random.PRNGKey(0))
    assert post.rates.shape == (2, 5, 3)
