"""Poisson LDS: the Laplace E-step against a dense Newton solve, recovery, held-out bits/spike."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from scipy.special import gammaln
from sklearn.linear_model import PoissonRegressor

import latentjax as lj
from latentjax.models import lds, plds


def random_params(seed, num_latents=2, num_neurons=6):
    rng = np.random.default_rng(seed)
    dynamics = rng.normal(size=(num_latents, num_latents))
    dynamics *= 0.9 / np.max(np.abs(np.linalg.eigvals(dynamics)))
    return plds.Params(
        initial_mean=rng.normal(size=num_latents),
        initial_cov=np.eye(num_latents),
        dynamics=dynamics,
        dynamics_bias=0.1 * rng.normal(size=num_latents),
        dynamics_cov=0.2 * np.eye(num_latents),
        emissions=0.7 * rng.normal(size=(num_neurons, num_latents)),
        emissions_bias=np.log(rng.uniform(0.3, 2.0, num_neurons)),
    )


def dense_log_joint(params, counts, mask, link):
    """log p(y, z) of a whole path and its gradient, written densely (independent of the
    family's block-tridiagonal Newton steps)."""
    num_bins, num_latents = counts.shape[0], params.dynamics.shape[0]
    q_inv = np.linalg.inv(params.dynamics_cov)
    p0_inv = np.linalg.inv(params.initial_cov)

    def value(flat):
        z = flat.reshape(num_bins, num_latents)
        eta = z @ params.emissions.T + params.emissions_bias
        rate = np.exp(eta) if link == "exp" else np.log1p(np.exp(eta))
        log_lik = np.sum(mask[:, None] * (counts * np.log(rate) - rate - gammaln(counts + 1)))
        r0 = z[0] - params.initial_mean
        residual = z[1:] - z[:-1] @ params.dynamics.T - params.dynamics_bias
        log_prior = -0.5 * r0 @ p0_inv @ r0 - 0.5 * np.sum((residual @ q_inv) * residual)
        log_prior -= 0.5 * np.linalg.slogdet(2 * np.pi * params.initial_cov)[1]
        log_prior -= 0.5 * (num_bins - 1) * np.linalg.slogdet(2 * np.pi * params.dynamics_cov)[1]
        return log_lik + log_prior

    return value


def numerical_hessian(function, x, step=1e-4):
    size = x.size
    hessian = np.zeros((size, size))
    for i in range(size):
        for j in range(i, size):
            ei, ej = np.eye(size)[i] * step, np.eye(size)[j] * step
            hessian[i, j] = hessian[j, i] = (
                function(x + ei + ej)
                - function(x + ei - ej)
                - function(x - ei + ej)
                + function(x - ei - ej)
            ) / (4 * step**2)
    return hessian


@pytest.mark.parametrize("link", ["exp", "softplus"])
def test_laplace_posterior_matches_dense_optimum(link):
    num_bins = 12
    with jax.enable_x64(True):
        params = random_params(0)
        rng = np.random.default_rng(1)
        counts = rng.poisson(1.0, size=(1, num_bins, 6)).astype(float)
        mask = np.ones((1, num_bins), bool)
        mask[0, 4:6] = False
        trials = lj.Trials(counts, dt=0.01, mask=mask)
        config = plds.Config(latent_dim=2, link=link, posterior_newton_iters=30)
        posterior = plds.posterior(params, trials, config)

        objective = dense_log_joint(params, counts[0] * mask[0][:, None], mask[0], link)
        optimum = scipy.optimize.minimize(
            lambda x: -objective(x), np.zeros(num_bins * 2), method="BFGS", options={"gtol": 1e-9}
        )
        np.testing.assert_allclose(posterior.latents[0].reshape(-1), optimum.x, atol=1e-5)
        hessian = numerical_hessian(objective, optimum.x)
        covariance = np.linalg.inv(-hessian)
        marginals = np.array(
            [covariance[2 * t : 2 * t + 2, 2 * t : 2 * t + 2] for t in range(num_bins)]
        )
        np.testing.assert_allclose(posterior.covariances[0], marginals, atol=1e-5)
        laplace = objective(optimum.x) + 0.5 * np.linalg.slogdet(2 * np.pi * covariance)[1]
        np.testing.assert_allclose(posterior.log_likelihood[0], laplace, atol=1e-5)
        # the validation score: the same Laplace log p(y), negated, per observed entry
        score, _ = plds.validation_loss(params, trials, None, config, 0)
        np.testing.assert_allclose(float(score), -laplace / (mask.sum() * 6), rtol=1e-6)


def poisson_readout_bits_per_spike(train_latents, train_counts, test_latents, test_counts):
    """Held-out neurons' rates from latents through a Poisson GLM (scikit-learn)."""
    X_train = train_latents.reshape(-1, train_latents.shape[-1])
    X_test = test_latents.reshape(-1, test_latents.shape[-1])
    rates = []
    for n in range(train_counts.shape[-1]):
        glm = PoissonRegressor(alpha=1e-4, max_iter=500)
        glm.fit(X_train, train_counts[..., n].reshape(-1))
        rates.append(glm.predict(X_test))
    rates = np.stack(rates, -1).reshape(test_counts.shape)
    return lj.metrics.bits_per_spike(rates, test_counts)


@pytest.mark.slow
def test_plds_recovers_latents_and_beats_gaussian_lds_on_heldout_neurons():
    data = lj.datasets.plds(
        seed=0, num_trials=60, num_bins=50, num_latents=2, num_neurons=50, dt=0.02
    )
    trials = data.trials
    heldin, heldout = np.arange(40), np.arange(40, 50)
    train, test = trials[:40].select_neurons(heldin), trials[40:].select_neurons(heldin)
    counts = np.asarray(trials.spikes)[..., heldout]

    result = lj.fit(plds.Config(latent_dim=2), train, steps=30, progress=False)
    history = np.asarray(result.history["log_likelihood"])
    assert np.all(np.isfinite(history))
    train_latents = np.asarray(lj.infer(result, train).latents)
    test_posterior = lj.infer(result, test)
    test_latents = np.asarray(test_posterior.latents)
    r2 = lj.metrics.latent_r2(data.truth["latents"][40:], test_latents, fit_on="train").mean
    assert r2 >= 0.9, r2
    assert np.all(np.asarray(test_posterior.rates) > 0)
    plds_bps = poisson_readout_bits_per_spike(train_latents, counts[:40], test_latents, counts[40:])

    gaussian = lj.fit(lds.Config(latent_dim=2, transform="sqrt"), train, steps=30, progress=False)
    lds_bps = poisson_readout_bits_per_spike(
        np.asarray(lj.infer(gaussian, train).latents),
        counts[:40],
        np.asarray(lj.infer(gaussian, test).latents),
        counts[40:],
    )
    assert plds_bps > lds_bps, (plds_bps, lds_bps)


def test_plds_validates_input():
    with pytest.raises(ValueError, match="link"):
        plds.Config(latent_dim=2, link="relu")
    with pytest.raises(ValueError, match="latent_dim"):
        plds.Config(latent_dim=0)
    signals = lj.Trials(np.random.default_rng(0).normal(size=(2, 5, 3)), dt=0.01, continuous=True)
    with pytest.raises(ValueError, match="counts"):
        plds.init(jax.random.PRNGKey(0), plds.Config(latent_dim=1), signals)


def test_newton_maximise_stays_put_when_the_step_is_not_finite():
    """A damped Newton step that overflows (here exp(1000)) must not replace theta by NaN;
    a finite problem still converges to its maximiser."""
    from latentjax.nn.poisson import newton_maximise

    def overflowing(theta):
        return -jnp.sum(jnp.exp(theta))

    stuck = newton_maximise(overflowing, jnp.array([1000.0]), 2)
    np.testing.assert_array_equal(np.asarray(stuck), [1000.0])

    def quadratic(theta):
        return -jnp.sum((theta - 3.0) ** 2)

    np.testing.assert_allclose(np.asarray(newton_maximise(quadratic, jnp.zeros(2), 2)), 3.0)


def test_log_factorial_equals_scipy_gammaln():
    """The Poisson read-outs' log(y!) (Stirling's series, shifted) against scipy, at counts
    and between them, in float64 and float32."""
    from latentjax.nn.poisson import log_factorial

    y = np.concatenate([np.arange(0, 400), np.linspace(0, 60, 1201), [1e3, 1e4, 1e5, 1e6]])
    exact = gammaln(y + 1)
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(log_factorial)(jnp.asarray(y)))
    np.testing.assert_allclose(got, exact, rtol=1e-12, atol=1e-12)
    got32 = np.asarray(log_factorial(jnp.asarray(y, jnp.float32)), np.float64)
    np.testing.assert_allclose(got32, exact, rtol=3e-6, atol=3e-6)
