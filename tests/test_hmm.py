"""HMM: exact inference against NumPy references, EM monotonicity, Viterbi by brute force,
state recovery, model selection of the number of states, input checks, jit/vmap."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

import latentjax as lj
from latentjax.models import hmm
from latentjax.nn.hmm import forward_backward, kmeans, viterbi


def _reference_forward_backward(initial, transitions, likelihoods):
    """Scaled (Rabiner) forward-backward with explicit loops in float64 probability space.

    `transitions` `[T-1, K, K]`, `likelihoods` `[T, K]` (probabilities, 1 for a masked bin).
    Returns (log p(y), marginals [T, K], pair marginals [T-1, K, K])."""
    num_bins, num_states = likelihoods.shape
    alpha = np.zeros((num_bins, num_states))
    scale = np.zeros(num_bins)
    alpha[0] = initial * likelihoods[0]
    scale[0] = alpha[0].sum()
    alpha[0] /= scale[0]
    for t in range(1, num_bins):
        for k in range(num_states):
            alpha[t, k] = sum(alpha[t - 1, j] * transitions[t - 1, j, k]
                              for j in range(num_states)) * likelihoods[t, k]  # fmt: skip
        scale[t] = alpha[t].sum()
        alpha[t] /= scale[t]
    beta = np.ones((num_bins, num_states))
    for t in range(num_bins - 2, -1, -1):
        for j in range(num_states):
            beta[t, j] = sum(transitions[t, j, k] * likelihoods[t + 1, k] * beta[t + 1, k]
                             for k in range(num_states))  # fmt: skip
        beta[t] /= scale[t + 1]
    marginals = alpha * beta
    pairs = np.zeros((num_bins - 1, num_states, num_states))
    for t in range(num_bins - 1):
        pairs[t] = (
            alpha[t][:, None]
            * transitions[t]
            * (likelihoods[t + 1] * beta[t + 1])[None]
            / scale[t + 1]
        )
    return np.log(scale).sum(), marginals, pairs


def _random_chain(rng, num_bins, num_states, time_varying):
    initial = rng.dirichlet(np.ones(num_states))
    shape = (num_bins - 1, num_states) if time_varying else (num_states,)
    transitions = rng.dirichlet(np.ones(num_states), size=shape)
    if not time_varying:
        transitions = np.broadcast_to(transitions, (num_bins - 1, num_states, num_states))
    log_likelihoods = rng.normal(size=(num_bins, num_states)) * 3 - 5
    return initial, transitions, log_likelihoods


@pytest.mark.parametrize("time_varying", [False, True])
def test_forward_backward_equals_a_numpy_scaled_reference_with_masked_bins(time_varying):
    rng = np.random.default_rng(0)
    num_bins, num_states = 40, 3
    initial, transitions, log_likelihoods = _random_chain(rng, num_bins, num_states, time_varying)
    mask = rng.random(num_bins) > 0.3
    mask[-5:] = False  # trailing padding
    want_ll, want_marginals, want_pairs = _reference_forward_backward(
        initial, transitions, np.where(mask[:, None], np.exp(log_likelihoods), 1.0)
    )
    with jax.enable_x64(True):
        given = transitions if time_varying else transitions[0]
        got = forward_backward(
            jnp.log(jnp.asarray(initial)), jnp.log(jnp.asarray(given)),
            jnp.where(jnp.asarray(mask)[:, None], jnp.asarray(log_likelihoods), 0.0), pairs=True,
        )  # fmt: skip
        assert got.marginals.dtype == jnp.float64
        np.testing.assert_allclose(got.log_likelihood, want_ll, rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(got.marginals, want_marginals, atol=1e-8)
        np.testing.assert_allclose(got.pair_marginals, want_pairs, atol=1e-8)
        np.testing.assert_allclose(got.transition_counts, want_pairs.sum(0), atol=1e-8)


def test_forward_backward_and_viterbi_agree_with_dynamax():
    """dynamax's HMM inference (scaled probabilities, a second independent implementation)."""
    from dynamax.hidden_markov_model import hmm_posterior_mode, hmm_smoother

    rng = np.random.default_rng(7)
    initial, transitions, log_likelihoods = _random_chain(rng, 50, 4, time_varying=True)
    with jax.enable_x64(True):
        args = (jnp.asarray(initial), jnp.asarray(transitions), jnp.asarray(log_likelihoods))
        theirs = hmm_smoother(*args)
        ours = forward_backward(jnp.log(args[0]), jnp.log(args[1]), args[2])
        np.testing.assert_allclose(ours.log_likelihood, theirs.marginal_loglik, rtol=1e-10)
        np.testing.assert_allclose(ours.marginals, theirs.smoothed_probs, atol=1e-8)
        np.testing.assert_array_equal(
            viterbi(jnp.log(args[0]), jnp.log(args[1]), args[2]), hmm_posterior_mode(*args)
        )


def test_hmm_log_likelihood_of_masked_trials_equals_the_reference():
    """The family's emission terms: masked bins contribute nothing (Poisson and Gaussian)."""
    rng = np.random.default_rng(1)
    num_states, num_neurons, num_bins = 3, 4, 25
    mask = rng.random((2, num_bins)) > 0.25
    with jax.enable_x64(True):
        for poisson in (True, False):
            params = hmm.Params(
                jnp.asarray(rng.dirichlet(np.ones(num_states))),
                jnp.asarray(rng.dirichlet(np.ones(num_states) * 3, size=num_states)),
                jnp.asarray(rng.uniform(0.2, 3.0, (num_states, num_neurons))),
                jnp.asarray(rng.uniform(0.5, 2.0, (num_states, num_neurons))),
            )
            signals = rng.poisson(1.0, (2, num_bins, num_neurons)).astype(float)
            config = hmm.Config(num_states=num_states,
                                emissions="poisson" if poisson else "gaussian")  # fmt: skip
            trials = lj.Trials(np.where(mask[..., None], signals, np.nan), 0.01, mask=mask,
                               continuous=not poisson)  # fmt: skip
            got = hmm.log_likelihood(params, trials, config)
            for b in range(2):
                means, variances = np.asarray(params.means), np.asarray(params.variances)
                if poisson:
                    from scipy.stats import poisson as dist

                    per = dist.logpmf(signals[b][:, None], means[None]).sum(-1)
                else:
                    from scipy.stats import norm

                    per = norm.logpdf(signals[b][:, None], means[None], np.sqrt(variances)).sum(-1)
                want, _, _ = _reference_forward_backward(
                    np.asarray(params.initial_probs),
                    np.broadcast_to(params.transition_matrix, (num_bins - 1, 3, 3)),
                    np.where(mask[b][:, None], np.exp(per), 1.0),
                )
                np.testing.assert_allclose(got[b], want, rtol=1e-10)


def test_viterbi_equals_brute_force_on_a_tiny_chain():
    rng = np.random.default_rng(2)
    for trial in range(5):
        initial, transitions, log_likelihoods = _random_chain(rng, 6, 3, time_varying=trial % 2)
        log_p = np.log(transitions)
        best, best_path = -np.inf, None
        for path in itertools.product(range(3), repeat=6):
            score = (
                np.log(initial[path[0]])
                + log_likelihoods[0, path[0]]
                + sum(
                    log_p[t, path[t], path[t + 1]] + log_likelihoods[t + 1, path[t + 1]]
                    for t in range(5)
                )
            )
            if score > best:
                best, best_path = score, path
        with jax.enable_x64(True):
            got = viterbi(jnp.log(initial), jnp.asarray(log_p), jnp.asarray(log_likelihoods))
        assert tuple(np.asarray(got)) == best_path


def sample_hmm(seed, num_trials=40, num_bins=60, num_states=3, num_neurons=12, poisson=True):
    """Trials and true states of a random sticky HMM."""
    rng = np.random.default_rng(seed)
    transitions = np.full((num_states, num_states), 0.08 / (num_states - 1))
    np.fill_diagonal(transitions, 0.92)
    states = np.zeros((num_trials, num_bins), int)
    states[:, 0] = rng.integers(0, num_states, num_trials)
    for t in range(1, num_bins):
        cumulative = transitions[states[:, t - 1]].cumsum(-1)
        states[:, t] = (rng.random((num_trials, 1)) > cumulative).sum(-1)
    if poisson:
        means = rng.uniform(0.2, 3.0, (num_states, num_neurons))
        signals = rng.poisson(means[states]).astype(np.float32)
    else:
        means = rng.normal(0, 1.0, (num_states, num_neurons))
        signals = (means[states] + 0.7 * rng.standard_normal(means[states].shape)).astype(
            np.float32
        )
    return lj.Trials(signals, 0.02, continuous=not poisson), states


def _accuracy(found, truth, num_states):
    confusion = np.zeros((max(found.max(), truth.max()) + 1,) * 2)
    np.add.at(confusion, (found.ravel(), truth.ravel()), 1)
    rows, columns = linear_sum_assignment(-confusion)
    return confusion[rows, columns].sum() / truth.size


def test_em_never_decreases_the_log_likelihood_over_ten_seeds():
    """Every EM iteration (the Fitter's step, compiled once) from ten k-means starts, Poisson
    and Gaussian emissions, some bins masked."""
    for poisson in (True, False):
        trials, _ = sample_hmm(0, num_trials=10, num_bins=40, poisson=poisson)
        trials = trials.replace(mask=np.random.default_rng(0).random((10, 40)) > 0.1)
        config = hmm.Config(num_states=3)
        em = hmm.fitter(config)
        step = jax.jit(em.step)
        for seed in range(10):
            state = em.init(hmm.init(jax.random.PRNGKey(seed), config, trials), trials)
            values = []
            for _ in range(15):
                state, info = step(state, trials, None)
                values.append(float(info["log_likelihood"]))
            values = np.asarray(values)
            assert np.all(np.diff(values) >= -1e-5 * np.abs(values[:-1])), (seed, values)
            assert values[-1] > values[0]


@pytest.mark.parametrize("poisson", [True, False])
def test_hmm_recovers_the_states_of_simulated_data(poisson):
    trials, states = sample_hmm(3, poisson=poisson)
    result = lj.fit(hmm.Config(num_states=3), trials, progress=False)
    posterior = lj.infer(result, trials)
    assert posterior.latents.shape == (40, 60, 3)
    np.testing.assert_allclose(np.asarray(posterior.latents).sum(-1), 1.0, atol=1e-5)
    assert _accuracy(np.asarray(posterior.most_likely), states, 3) >= 0.95


def test_sweep_over_num_states_picks_the_true_number_by_held_out_likelihood():
    trials, _ = sample_hmm(4, num_trials=60, num_states=3)
    train, valid = lj.data.split(trials, (0.7, 0.3), seed=0)
    config = hmm.Config(train=lj.train.TrainConfig(steps=20, chunk_size=20))
    population = lj.sweep(config, train, valid=valid, grid={"num_states": [2, 3, 4, 5]},
                          progress=False)  # fmt: skip
    assert lj.best(population).config.num_states == 3


def test_sticky_prior_lengthens_the_dwell_times():
    trials, _ = sample_hmm(5, num_trials=10, num_bins=40)
    stay = []
    for stickiness in (0.0, 1000.0):
        config = hmm.Config(num_states=3, stickiness=stickiness,
                            train=lj.train.TrainConfig(steps=5, chunk_size=5))  # fmt: skip
        result = lj.fit(config, trials, progress=False)
        stay.append(np.diagonal(np.asarray(result.params.transition_matrix)).mean())
    assert stay[1] > stay[0]


def test_bad_inputs_raise_value_errors_naming_the_argument():
    with pytest.raises(ValueError, match="num_states"):
        hmm.Config(num_states=0)
    with pytest.raises(ValueError, match="emissions"):
        hmm.Config(emissions="gamma")
    with pytest.raises(ValueError, match="stickiness"):
        lj.fit(hmm.Config(stickiness=-1.0), sample_hmm(0, 4, 10)[0], progress=False)
    continuous = lj.datasets.nascar(seed=0, num_trials=3, num_bins=10, observations="gaussian")
    with pytest.raises(ValueError, match="emissions"):
        hmm.init(jax.random.PRNGKey(0), hmm.Config(emissions="poisson"), continuous.trials)
    trials, _ = sample_hmm(0, 4, 10)
    params = hmm.init(jax.random.PRNGKey(0), hmm.Config(num_states=2), trials)
    with pytest.raises(ValueError, match="unknown options"):
        hmm.posterior(params, trials, hmm.Config(num_states=2), nonsense=1)


def test_inference_is_jittable_and_vmappable():
    rng = np.random.default_rng(6)
    initial, transitions, log_likelihoods = _random_chain(rng, 20, 3, time_varying=False)
    batch = jnp.asarray(np.stack([log_likelihoods, log_likelihoods[::-1]]), jnp.float32)
    log_pi, log_p = jnp.log(jnp.asarray(initial, jnp.float32)), jnp.log(transitions[0])
    one = jax.jit(forward_backward)(log_pi, log_p, batch[1])
    many = jax.jit(jax.vmap(forward_backward, in_axes=(None, None, 0)))(log_pi, log_p, batch)
    np.testing.assert_allclose(many.marginals[1], one.marginals, atol=1e-6)
    paths = jax.jit(jax.vmap(viterbi, in_axes=(None, None, 0)))(log_pi, log_p, batch)
    assert paths.shape == (2, 20) and paths.dtype == jnp.int32
    centres, labels = jax.jit(kmeans, static_argnums=3)(
        jax.random.PRNGKey(0), jnp.asarray(rng.normal(size=(50, 2)), jnp.float32),
        jnp.ones(50), 3,
    )  # fmt: skip
    assert centres.shape == (3, 2) and labels.shape == (50,)
