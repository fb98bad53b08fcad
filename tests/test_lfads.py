"""LFADS: the loss against a NumPy computation by hand, priors and read-outs against scipy,
augmentations, held-out neurons, sessions, and a tiny training run (loss falls, finite
gradients, shapes)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads
from scipy import stats

import latentjax as lj
from latentjax.models import lfads
from latentjax.models.lfads import augment
from latentjax.nn import priors, readouts

TINY = lfads.Config.preset("tiny")
loss = jax.jit(lfads.loss, static_argnums=3)
validation_loss = jax.jit(lfads.validation_loss, static_argnums=3)


def poisson_trials(seed=0, shape=(8, 20, 6), rate=1.0):
    return lj.Trials(np.random.default_rng(seed).poisson(rate, shape), dt=0.01)


# ----------------------------------------------------------------------------- by hand


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_gru(p, x, h, clip):
    """The GRU equations, written out (gates r, z, n; reset applied after U h)."""
    hidden = h.size
    gx = x @ p["input_kernel"] + p["input_bias"]
    gh = h @ p["hidden_kernel"] + p["hidden_bias"]
    r = sigmoid(gx[:hidden] + gh[:hidden])
    z = sigmoid(gx[hidden : 2 * hidden] + gh[hidden : 2 * hidden])
    n = np.tanh(gx[2 * hidden :] + r * gh[2 * hidden :])
    return np.clip(z * h + (1 - z) * n, -clip, clip)


def np_lfads_loss(p, spikes, config, kl_weight, l2_weight):
    """LFADS negative ELBO per entry for one trial, posterior samples at their means."""
    core, prior = p["core"], p["priors"]
    readout = p["sessions"][0]["readout"]
    bins, neurons = spikes.shape
    x = spikes[:, : neurons - config.n_heldout]
    clip = config.cell_clip

    def run(name, reverse):
        w = core[name]
        h = w["initial_state"]
        states = [None] * bins
        for t in reversed(range(bins)) if reverse else range(bins):
            h = np_gru(w, x[t], h, clip)
            states[t] = h
        return np.array(states)

    ic_enc = np.concatenate([run("ic_enc_fwd", False)[-1], run("ic_enc_bwd", True)[0]])
    ic_mean, ic_logvar = np.split(ic_enc @ core["ic_kernel"] + core["ic_bias"], 2)
    ic_var = np.exp(ic_logvar) + config.ic_post_var_min
    g = ic_mean @ core["ic_to_g0_kernel"] + core["ic_to_g0_bias"]
    ci_fwd, ci_bwd = run("ci_enc_fwd", False), run("ci_enc_bwd", True)
    w_fac = core["factors_kernel"] / np.sqrt((core["factors_kernel"] ** 2).sum(0))
    f = g @ w_fac
    h = core["controller"]["initial_state"]
    log_lik, kl_co = 0.0, 0.0
    for t in range(bins):
        ci_f = ci_fwd[t - 1] if t >= 1 else np.zeros_like(ci_fwd[0])
        ci_b = ci_bwd[t + 1] if t + 1 < bins else np.zeros_like(ci_bwd[0])
        h = np_gru(core["controller"], np.concatenate([ci_f, ci_b, f]), h, clip)
        co_mean, co_logvar = np.split(h @ core["co_kernel"] + core["co_bias"], 2)
        co_var = np.exp(co_logvar) + config.co_post_var_min
        g = np_gru(core["generator"], co_mean, g, clip)
        f = g @ w_fac
        log_rates = f @ readout["kernel"] + readout["bias"]
        log_lik += stats.poisson.logpmf(spikes[t], np.exp(log_rates)).sum()
        prior_var = np.exp(prior["co"]["log_var"])
        kl_co += np.sum(
            np.log(np.sqrt(prior_var / co_var))
            + (co_var + (co_mean - prior["co"]["mean"]) ** 2) / (2 * prior_var)
            - 0.5
        )
    prior_var = np.exp(prior["ic"]["log_var"])
    kl_ic = np.sum(
        0.5 * np.log(prior_var / ic_var)
        + (ic_var + (ic_mean - prior["ic"]["mean"]) ** 2) / (2 * prior_var)
        - 0.5
    )
    elbo = (-log_lik + kl_weight * (config.kl_ic_scale * kl_ic + config.kl_co_scale * kl_co)) / (
        bins * neurons
    )
    u_gen, u_con = core["generator"]["hidden_kernel"], core["controller"]["hidden_kernel"]
    l2 = config.l2_gen_scale * 0.5 * np.mean(u_gen**2)
    l2 += config.l2_con_scale * 0.5 * np.mean(u_con**2)
    return elbo + l2_weight * l2


def test_loss_equals_hand_computation():
    config = lfads.Config(
        ic_enc_dim=1, ci_enc_dim=1, con_dim=1, co_dim=1, ic_dim=1, gen_dim=2, fac_dim=1,
        n_heldout=1, co_prior="gaussian", dropout=0.0, cd_rate=0.0, cell_clip=0.8,
        ic_post_var_min=1e-14, co_post_var_min=1e-14, kl_ic_scale=0.7, kl_co_scale=0.3,
        l2_gen_scale=0.5, l2_con_scale=0.25, kl_ramp_steps=10, l2_ramp_steps=4,
    )  # fmt: skip
    spikes = np.array([[[1, 0, 2], [0, 3, 1], [2, 1, 0]]])
    trials = lj.Trials(spikes, dt=0.01)
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        params = lfads.init(jax.random.key(0), config, trials)
        params = jax.tree.map(lambda a: rng.normal(0, 0.7, np.shape(a)), params)
        # Posterior log-variances of -40: the samples equal the means to ~1e-9.
        params["core"]["ic_kernel"][:, 1] = 0.0
        params["core"]["ic_bias"][1] = -40.0
        params["core"]["co_kernel"][:, 1] = 0.0
        params["core"]["co_bias"][1] = -40.0
        expected = np_lfads_loss(params, spikes[0].astype(float), config, 0.5, 1.0)
        params = jax.tree.map(jnp.asarray, params)
        value, aux = jax.jit(lfads.loss, static_argnums=3)(
            params, trials, jax.random.key(3), config, 5
        )
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)
    assert set(aux) == {"recon", "kl_ic", "kl_co", "l2"}


def test_loss_gradients_match_finite_differences():
    """Reverse-mode gradients of the whole network (encoders, controller, generator) against
    central differences along random directions, in float64."""
    config = dataclasses.replace(TINY, dropout=0.0, cd_rate=0.0)
    with jax.enable_x64(True):
        trials = poisson_trials(shape=(3, 12, 6))
        params = lfads.init(jax.random.key(0), config, trials)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)

        @jax.jit
        def value(params):
            return lfads.loss(params, trials, jax.random.key(3), config, 5)[0]

        check_grads(value, (params,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- pieces


def test_ar1_log_prob_matches_dense_gaussian():
    tau, var, bins = np.array([4.0, 15.0]), np.array([0.3, 2.0]), 6
    u = np.random.default_rng(0).normal(size=(bins, 2))
    with jax.enable_x64(True):
        got = priors.ar1_log_prob(jnp.asarray(u), jnp.log(tau), jnp.log(var))
    expected = 0.0
    lags = np.abs(np.subtract.outer(np.arange(bins), np.arange(bins)))
    for k in range(2):  # stationary AR(1): Cov(u_s, u_t) = var * alpha^|s - t|
        cov = var[k] * np.exp(-1 / tau[k]) ** lags
        expected += stats.multivariate_normal(np.zeros(bins), cov).logpdf(u[:, k])
    np.testing.assert_allclose(float(got), expected, rtol=1e-7)


def test_gaussian_kl_matches_monte_carlo():
    mean_q, var_q, mean_p, var_p = 0.3, 0.5, -0.2, 1.7
    got = float(priors.gaussian_kl(mean_q, var_q, mean_p, np.log(var_p)))
    z = np.random.default_rng(0).normal(mean_q, np.sqrt(var_q), 400_000)
    mc = np.mean(
        stats.norm(mean_q, np.sqrt(var_q)).logpdf(z) - stats.norm(mean_p, np.sqrt(var_p)).logpdf(z)
    )
    np.testing.assert_allclose(got, mc, atol=3e-3)


def test_readouts_match_scipy():
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, (5, 4)).astype(float)
    positive = rng.gamma(2.0, 1.5, (5, 4))
    log_params = rng.normal(0, 0.5, (5, 3, 4))
    a, b, q = np.exp(log_params[:, 0]), np.exp(log_params[:, 1]), sigmoid(log_params[:, 2])
    with jax.enable_x64(True):
        poisson = readouts.log_likelihood("poisson", log_params[:, :1], counts)
        gaussian = readouts.log_likelihood("gaussian", log_params[:, :2], positive)
        gamma = readouts.log_likelihood("gamma", log_params[:, :2], positive)
        zeros = np.where(rng.random((5, 4)) < 0.4, 0.0, positive + 0.1)
        zig = readouts.log_likelihood("zero_inflated_gamma", log_params, zeros, 0.1)
        zig_mean = readouts.expected_value("zero_inflated_gamma", log_params, 0.1)
    np.testing.assert_allclose(poisson, stats.poisson.logpmf(counts, a), rtol=1e-10)
    np.testing.assert_allclose(
        gaussian, stats.norm.logpdf(positive, log_params[:, 0], np.sqrt(b)), rtol=1e-10
    )
    np.testing.assert_allclose(gamma, stats.gamma.logpdf(positive, a, scale=1 / b), rtol=1e-10)
    nonzero = np.log(q) + stats.gamma.logpdf(zeros - 0.1, a, scale=1 / b)
    np.testing.assert_allclose(zig, np.where(zeros > 0.1, nonzero, np.log(1 - q)), rtol=1e-10)
    np.testing.assert_allclose(zig_mean, q * (0.1 + a / b), rtol=1e-10)


def test_poisson_loss_is_finite_at_huge_log_rates():
    value = readouts.log_likelihood("poisson", jnp.full((1, 1, 3), 500.0), jnp.ones((1, 3)))
    assert np.all(np.isfinite(value))


def test_coordinated_dropout_is_unbiased():
    multiplier, weight = augment.coordinated_dropout(jax.random.key(0), 0.3, (200, 500))
    hidden = np.asarray(multiplier) == 0
    assert abs(hidden.mean() - 0.3) < 0.01
    np.testing.assert_allclose(np.asarray(weight)[~hidden], 0.0)
    assert abs(float(weight.mean()) - 1.0) < 0.02  # unbiased estimate of the full sum
    assert abs(float(multiplier.mean()) - 1.0) < 0.02
    multiplier, weight = augment.coordinated_dropout(jax.random.key(0), 0.0, (3, 4))
    np.testing.assert_array_equal(multiplier, 1.0)
    np.testing.assert_array_equal(weight, 1.0)


def test_sample_validation_mask_is_fixed_per_trial():
    trials = poisson_trials(shape=(4, 30, 10))
    masks = jax.vmap(lambda y: augment.sample_validation_mask(y, 0.2, 0))(trials.spikes)
    again = augment.sample_validation_mask(jnp.asarray(trials.spikes[2]), 0.2, 0)
    np.testing.assert_array_equal(masks[2], again)
    assert not np.array_equal(masks[0], masks[1])
    assert abs(float(masks.mean()) - 0.2) < 0.05


@pytest.mark.slow  # ~50 s: a full training run; the fixed-mask test covers the mask itself
def test_sample_validation_hides_entries_from_training(monkeypatch):
    """Held entries reach neither the encoders nor the training loss; validation scores them."""
    bins, neurons = 20, 6
    held = np.random.default_rng(5).random((bins, neurons)) < 0.25
    # a content-independent mask, so that editing the held entries keeps them held
    monkeypatch.setattr(augment, "sample_validation_mask", lambda values, rate, seed: held)
    config = dataclasses.replace(TINY, sv_rate=0.25, dropout=0.1, cd_rate=0.2)
    trials = poisson_trials(shape=(8, bins, neurons))
    params = lfads.init(jax.random.key(0), config, trials)
    spikes = trials.spikes.copy()
    spikes[:, held] += 3
    edited = trials.replace(spikes=spikes)
    key = jax.random.key(1)
    # fresh closures: traced with the patched mask
    train_loss = jax.jit(lambda p, t: lfads.loss(p, t, key, config, 7)[0])
    valid_loss = jax.jit(lambda p, t: lfads.validation_loss(p, t, key, config, 7)[0])
    np.testing.assert_allclose(train_loss(params, edited), train_loss(params, trials))
    assert abs(float(valid_loss(params, edited)) - float(valid_loss(params, trials))) > 1e-3


# ----------------------------------------------------------------------------- model


@pytest.mark.slow  # ~1-2 min: 200 engine steps; the CLI demo test trains LFADS by default
def test_tiny_training_loss_falls_with_finite_gradients_and_shapes():
    data = lj.datasets.lorenz(seed=0, num_trials=16, num_bins=25, num_neurons=6)
    trials = data.trials
    config = dataclasses.replace(
        TINY, n_heldout=2, train=dataclasses.replace(TINY.train, chunk_size=50)
    )
    result = lj.fit(config, trials, steps=200, progress=False)  # through the engine
    history = result.history
    assert np.all(np.isfinite(history["grad_norm"])) and history["nonfinite_steps"][-1] == 0
    assert history["recon"][-1] < history["recon"][0] - 0.01, history["recon"]
    post = lj.infer(result, trials, n_samples=4)
    assert post.latents.shape == (16, 25, config.fac_dim)
    assert post.rates.shape == (16, 25, 6)
    assert post.inputs.shape == (16, 25, config.co_dim)
    assert post.initial_states.shape == (16, config.gen_dim)


def test_heldout_neurons_never_reach_the_encoder():
    config = dataclasses.replace(TINY, n_heldout=2)
    trials = poisson_trials()
    params = lfads.init(jax.random.key(0), config, trials)
    spikes = trials.spikes.copy()
    spikes[..., -2:] = 9
    changed = lfads.posterior(
        params, trials.replace(spikes=spikes), config, jax.random.key(1), n_samples=2
    )
    heldin_only = lfads.posterior(
        params, trials.select_neurons(slice(0, 4)), config, jax.random.key(1), n_samples=2
    )
    assert changed.rates.shape == heldin_only.rates.shape == trials.shape
    np.testing.assert_allclose(changed.rates, heldin_only.rates, rtol=1e-6)


@pytest.mark.parametrize(
    "changes",
    [
        dict(co_dim=0, readout="gaussian", external_inputs=(1,)),
        dict(co_prior="gaussian", forward_bins=5, readout="zero_inflated_gamma", readin_dim=3),
    ],
    ids=["autonomous-gaussian-external", "gaussianprior-forward-zig-readin"],
)
def test_variants_give_finite_losses_and_gradients(changes):
    rng = np.random.default_rng(0)
    config = dataclasses.replace(TINY, **changes)
    continuous = config.readout != "poisson"
    values = rng.poisson(1.0, (6, 20, 5)) * (rng.gamma(2.0, 1.0, (6, 20, 5)) if continuous else 1)
    trials = lj.Trials(values, 0.01, behavior=rng.normal(size=(6, 20, 2)), continuous=continuous)
    params = lfads.init(jax.random.key(0), config, trials)
    value_and_grad = jax.jit(jax.value_and_grad(lfads.loss, has_aux=True), static_argnums=3)
    (value, _), grads = value_and_grad(params, trials, jax.random.key(1), config, 3)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.slow  # ~2 min on 2 cores: two sessions' read-ins compiled into one training run
def test_two_sessions_share_one_generator():
    """Two sessions: different neurons read out the same latents; a shared model fits both."""
    data = lj.datasets.lorenz(seed=0, num_trials=24, num_bins=30, num_neurons=16)
    first = data.trials[:12].select_neurons(slice(0, 10))
    second = data.trials[12:].select_neurons(slice(7, 16))
    config = dataclasses.replace(TINY, readin_dim=4)
    params = lfads.init(jax.random.key(0), config, [first, second])
    assert params["sessions"][0]["readin"]["kernel"].shape == (10, 4)
    assert params["sessions"][1]["readout"]["bias"].shape == (9,)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    step = jax.jit(
        lambda p, o, key, i: _adam_step(optimizer, p, o, (first, second), key, config, i)
    )
    losses = []
    for i, key in enumerate(jax.random.split(jax.random.key(1), 60)):
        params, opt_state, value = step(params, opt_state, key, i)
        losses.append(float(value))
    assert np.mean(losses[-10:]) < np.mean(losses[:3])
    post = lfads.posterior(params, second, config, jax.random.key(2), n_samples=2, session=1)
    assert post.rates.shape == second.shape
    with pytest.raises(ValueError, match="session"):
        lfads.posterior(params, second, config, jax.random.key(2), session=2)
    with pytest.raises(ValueError, match="neurons"):
        lfads.posterior(params, first, config, jax.random.key(2), session=1)


def _adam_step(optimizer, params, opt_state, batch, key, config, step):
    (value, _), grads = jax.value_and_grad(lfads.loss, has_aux=True)(
        params, batch, key, config, step
    )
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, value


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "config_changes,match",
    [
        (dict(n_heldout=6), "n_heldout"),
        (dict(forward_bins=20), "forward_bins"),
        (dict(external_inputs=(0,)), "external_inputs"),
    ],
)
def test_init_rejects_bad_input(config_changes, match):
    with pytest.raises(ValueError, match=match):
        lfads.init(jax.random.key(0), dataclasses.replace(TINY, **config_changes), poisson_trials())


def test_config_and_data_checks():
    with pytest.raises(ValueError, match="readout"):
        lfads.Config(readout="binomial")
    with pytest.raises(ValueError, match="co_prior"):
        lfads.Config(co_prior="laplace")
    with pytest.raises(ValueError, match="gen_dim"):
        lfads.Config(gen_dim=0)
    with pytest.raises(ValueError, match="name"):
        lfads.Config.preset("mc_maze_huge")
    signals = lj.Trials(np.random.default_rng(0).normal(size=(4, 10, 3)), 0.01, continuous=True)
    with pytest.raises(ValueError, match="readout"):
        lfads.init(jax.random.key(0), TINY, signals)
    with pytest.raises(ValueError, match="readin_dim"):
        lfads.init(jax.random.key(0), TINY, [poisson_trials(), poisson_trials(1)])
    with pytest.raises(ValueError, match="n_samples"):
        params = lfads.init(jax.random.key(0), TINY, poisson_trials())
        lfads.posterior(params, poisson_trials(), TINY, jax.random.key(0), n_samples=0)


def test_presets_match_published_sizes():
    maze = lfads.Config.preset("nlb_mc_maze")
    sizes = (maze.ic_enc_dim, maze.ci_enc_dim, maze.con_dim, maze.co_dim, maze.ic_dim)
    assert sizes == (100, 80, 80, 4, 100)
    assert (maze.gen_dim, maze.fac_dim, maze.cd_rate, maze.co_prior) == (100, 40, 0.3, "ar1")
    assert lfads.Config.preset("lorenz", fac_dim=3).fac_dim == 3


def test_validation_without_sample_validation_weighs_the_kl_fully():
    """sv_rate 0: the encoders saw every scored entry, so the score is reconstruction plus
    each KL at its configured weight whatever the step (not reconstruction alone, which
    rewards stopping before the KL ramp); sv_rate > 0: reconstruction of held entries."""
    trials = poisson_trials()
    key = jax.random.key(2)
    config = dataclasses.replace(TINY, kl_ic_scale=0.5, kl_co_scale=2.0)
    params = lfads.init(jax.random.key(0), config, trials)
    score, aux = validation_loss(params, trials, key, config, 0)
    assert float(aux["kl_ic"]) > 0 and float(aux["kl_co"]) > 0
    expected = aux["recon"] + 0.5 * aux["kl_ic"] + 2.0 * aux["kl_co"]
    np.testing.assert_allclose(float(score), float(expected), rtol=1e-6)
    later, _ = validation_loss(params, trials, key, config, 10**6)
    np.testing.assert_allclose(float(later), float(score), rtol=1e-6)
    held = dataclasses.replace(config, sv_rate=0.25)
    score, aux = validation_loss(params, trials, key, held, 0)
    np.testing.assert_allclose(float(score), float(aux["recon"]), rtol=1e-6)
