"""Causal inference (`lj.infer(..., causal=True)`), streaming (`lj.decode.stream`) and the
behaviour decoders (`lj.decode.Wiener`, `lj.decode.KalmanVelocity`), each against an
independent reference written here: a covariance-form Kalman filter in NumPy, a per-bin
Laplace filter by scipy's optimiser, scikit-learn's Ridge on a lagged design."""

import jax
import numpy as np
import pytest
import scipy.optimize
import scipy.signal
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

import latentjax as lj
from latentjax.models import lds, lfads, plds

NUM_TRIALS, NUM_BINS, NUM_NEURONS, NUM_LATENTS = 3, 20, 6, 2


@pytest.fixture(scope="module")
def gaussian():
    return lj.datasets.lds(
        seed=0,
        num_trials=NUM_TRIALS,
        num_bins=NUM_BINS,
        num_latents=NUM_LATENTS,
        num_neurons=NUM_NEURONS,
    )


@pytest.fixture(scope="module")
def poisson():
    return lj.datasets.plds(
        seed=1,
        num_trials=NUM_TRIALS,
        num_bins=NUM_BINS,
        num_latents=NUM_LATENTS,
        num_neurons=NUM_NEURONS,
    )


def lds_result(truth, dtype=np.float32):
    p = {k: np.asarray(v, dtype) for k, v in truth["params"].items()}
    params = lds.params_from_arrays(
        initial_mean=p["m0"], initial_cov=p["S0"], dynamics=p["A"], dynamics_cov=p["Q"],
        emissions=p["C"], emissions_cov=np.diag(p["R"]), emissions_bias=p["d"],
    )  # fmt: skip
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    config = lds.Config(latent_dim=NUM_LATENTS, transform="none")
    return lj.FitResult(params, config)


def plds_result(truth, dtype=np.float32, newton_iters=3):
    p = {k: np.asarray(v, dtype) for k, v in truth["params"].items()}
    params = plds.Params(
        p["m0"], p["S0"], p["A"], np.zeros(NUM_LATENTS, dtype), p["Q"], p["C"], p["d"]
    )
    config = plds.Config(latent_dim=NUM_LATENTS, filter_newton_iters=newton_iters)
    return lj.FitResult(jax.tree.map(np.asarray, params), config)


def numpy_kalman_filter(m0, S0, A, Q, C, d, R, y, observed):
    """Covariance-form Kalman filter (gain K = P C^T S^-1 with the full S = C P C^T + R)."""
    mean, cov, means, covs = m0, S0, [], []
    for t in range(len(y)):
        if observed[t]:
            innovation_cov = C @ cov @ C.T + R
            gain = np.linalg.solve(innovation_cov, C @ cov).T
            mean = mean + gain @ (y[t] - C @ mean - d)
            cov = (np.eye(len(mean)) - gain @ C) @ cov
        means.append(mean)
        covs.append(cov)
        mean, cov = A @ mean, A @ cov @ A.T + Q
    return np.array(means), np.array(covs)


def test_causal_lds_equals_a_numpy_kalman_filter(gaussian):
    trials = gaussian.trials
    mask = np.ones((NUM_TRIALS, NUM_BINS), bool)
    mask[0, 5:8] = False  # missing bins: prediction only
    trials = trials.replace(mask=mask)
    with jax.enable_x64(True):
        result = lds_result(gaussian.truth, np.float64)
        posterior = lj.infer(result, trials, causal=True)
        latents, covs = np.asarray(posterior.latents), np.asarray(posterior.covariances)
        smoothed = np.asarray(lj.infer(result, trials).latents)
    p = gaussian.truth["params"]
    for b in range(NUM_TRIALS):
        means, references = numpy_kalman_filter(
            p["m0"], p["S0"], p["A"], p["Q"], p["C"], p["d"], p["R"], trials.spikes[b], mask[b]
        )
        np.testing.assert_allclose(latents[b], means, atol=1e-6, rtol=0)
        np.testing.assert_allclose(covs[b], references, atol=1e-6, rtol=0)
    # the filter is not the smoother, except at the last bin
    assert np.abs(latents[:, :-1] - smoothed[:, :-1]).max() > 1e-3
    np.testing.assert_allclose(latents[:, -1], smoothed[:, -1], atol=1e-6)


def test_causal_plds_is_a_per_bin_laplace_filter(poisson):
    """Reference: at each bin the mode of log p(y_t | z) + log N(z; prediction) by scipy's
    trust-region Newton, its covariance the inverse Hessian, then the Gaussian prediction."""
    p = poisson.truth["params"]
    counts = poisson.trials.spikes[0].astype(float)
    with jax.enable_x64(True):
        result = plds_result(poisson.truth, np.float64, newton_iters=25)
        latents = np.asarray(lj.infer(result, poisson.trials[0], causal=True).latents[0])
    mean, cov = p["m0"], p["S0"]
    for t in range(NUM_BINS):
        precision = np.linalg.inv(cov)

        def negative(z, y=counts[t], m=mean, P=precision):
            eta = p["C"] @ z + p["d"]
            return -(y @ eta - np.exp(eta).sum()) + 0.5 * (z - m) @ P @ (z - m)

        def gradient(z, y=counts[t], m=mean, P=precision):
            return -p["C"].T @ (y - np.exp(p["C"] @ z + p["d"])) + P @ (z - m)

        def hessian(z, P=precision):
            return p["C"].T @ (np.exp(p["C"] @ z + p["d"])[:, None] * p["C"]) + P

        mode = scipy.optimize.minimize(
            negative, mean, jac=gradient, hess=hessian, method="trust-exact", tol=1e-12
        ).x
        np.testing.assert_allclose(latents[t], mode, atol=1e-6, rtol=0)
        filtered_cov = np.linalg.inv(hessian(mode))
        mean, cov = p["A"] @ mode, p["A"] @ filtered_cov @ p["A"].T + p["Q"]


@pytest.mark.parametrize("family", ["lds", "plds"])
def test_streaming_one_bin_at_a_time_equals_causal_inference(family, gaussian, poisson):
    data, make = (gaussian, lds_result) if family == "lds" else (poisson, plds_result)
    result = make(data.truth)
    trials = data.trials
    causal = lj.infer(result, trials, causal=True)
    velocity = causal.latents @ np.array([[1.0, 0.5], [-0.5, 2.0]])  # a known read-out
    readout = lj.decode.fit(lj.decode.Wiener(lags=3, alpha=1e-3), causal, velocity)
    decoder = lj.decode.stream(result, readout)
    latents_only = lj.decode.stream(result)
    for b in range(2):
        state, plain, outputs, latents = decoder.init(), latents_only.init(), [], []
        for t in range(NUM_BINS):
            state, out = decoder.step(state, trials.spikes[b, t])
            plain, z = latents_only.step(plain, trials.spikes[b, t])
            outputs.append(np.asarray(out))
            latents.append(np.asarray(z))
        np.testing.assert_allclose(latents, causal.latents[b], rtol=1e-4, atol=1e-5)
        expected = lj.decode.predict(readout, causal)[b]
        np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)
        _, replay = decoder.run(trials.spikes[b])
        np.testing.assert_allclose(replay, expected, rtol=1e-4, atol=1e-4)
    # one compiled program for every bin
    assert decoder._step._cache_size() == 1


@pytest.mark.parametrize("options", [{}, {"ci_lag": 0, "readin_dim": 3, "n_heldout": 1}])
def test_causal_lfads_streams_its_causal_posterior_and_never_reads_the_future(options):
    rng = np.random.default_rng(4)
    trials = lj.Trials(rng.poisson(1.0, (NUM_TRIALS, NUM_BINS, NUM_NEURONS)), dt=0.02)
    config = lfads.Config.preset("tiny", causal=True, **options)
    result = lj.FitResult(lfads.init(jax.random.key(0), config, trials), config)
    causal = lj.infer(result, trials, causal=True)
    decoder = lj.decode.stream(result)
    state, latents = decoder.init(), []
    for t in range(NUM_BINS):
        state, z = decoder.step(state, trials.spikes[0, t])
        latents.append(np.asarray(z))
    np.testing.assert_allclose(latents, causal.latents[0], rtol=1e-5, atol=1e-6)
    # new spikes from bin 12 on change the factors from bin 12 on, and none before
    spikes = np.array(trials.spikes)
    spikes[:, 12:] = rng.poisson(3.0, spikes[:, 12:].shape)
    changed = lj.infer(result, trials.replace(spikes=spikes), causal=True).latents
    np.testing.assert_array_equal(changed[:, :12], causal.latents[:, :12])
    assert np.abs(changed[:, 12:] - causal.latents[:, 12:]).max() > 1e-3


def test_bidirectional_lfads_refuses_to_be_causal():
    trials = lj.Trials(np.ones((2, NUM_BINS, NUM_NEURONS), int), dt=0.02)
    config = lfads.Config.preset("tiny")
    result = lj.FitResult(lfads.init(jax.random.key(0), config, trials), config)
    with pytest.raises(ValueError, match=r"`causal=True` needs a model trained with"):
        lj.infer(result, trials, causal=True)
    with pytest.raises(ValueError, match=r"Config\(causal=True\)"):
        lj.decode.stream(result)


def test_families_without_a_causal_posterior_say_so():
    result = lj.FitResult(params=None, config=lj.models.gpfa.Config())
    trials = lj.Trials(np.zeros((1, 5, 3), int), dt=0.02)
    with pytest.raises(ValueError, match="`causal=True`.*'gpfa'.*lds, plds"):
        lj.infer(result, trials, causal=True)
    with pytest.raises(ValueError, match="no causal filter to stream"):
        lj.decode.stream(result)
    with pytest.raises(ValueError, match="`causal` must be True or False"):
        lj.infer(result, trials, causal="yes")
    assert {"lds", "plds", "lfads"} <= set(lj.family.causal_families())


def lagged_reference(inputs, lags, start):
    """Row t of trial b: inputs[b, t], inputs[b, t-1], ... (`start` before the trial)."""
    rows = []
    for trial in inputs:
        for t in range(trial.shape[0]):
            rows.append(
                np.concatenate([trial[t - lag] if t - lag >= 0 else start for lag in range(lags)])
            )
    return np.array(rows)


def test_wiener_filter_is_ridge_on_lagged_smoothed_inputs():
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, (NUM_TRIALS, NUM_BINS, NUM_NEURONS)).astype(float)
    behavior = rng.normal(size=(NUM_TRIALS, NUM_BINS, 2))
    config = lj.decode.Wiener(lags=3, alpha=2.0, smooth=2.0)
    decoder = lj.decode.fit(config, counts, behavior)
    decay, start = np.exp(-1 / 2.0), counts.reshape(-1, NUM_NEURONS).mean(0)
    smoothed = scipy.signal.lfilter([1 - decay], [1, -decay], counts, axis=1, zi=(
        np.broadcast_to(decay * start, (NUM_TRIALS, 1, NUM_NEURONS))
    ))[0]  # fmt: skip
    design = lagged_reference(smoothed, 3, start)
    scale = design.std(0)
    ridge = Ridge(alpha=2.0).fit(design / scale, behavior.reshape(-1, 2))
    expected = ridge.predict(design / scale).reshape(behavior.shape)
    np.testing.assert_allclose(lj.decode.predict(decoder, counts), expected, atol=1e-4)
    # the cross-validated penalty is one of the grid's
    assert lj.decode.fit(lj.decode.Wiener(lags=2), counts, behavior).alpha > 0


def test_kalman_velocity_decoder_is_a_kalman_filter_on_regressed_models():
    rng = np.random.default_rng(2)
    num_bins, num_neurons = 60, 8
    velocity = np.zeros((2, num_bins, 2))
    for t in range(1, num_bins):
        velocity[:, t] = 0.9 * velocity[:, t - 1] + 0.3 * rng.normal(size=(2, 2))
    tuning = rng.normal(size=(num_neurons, 2))
    counts = rng.poisson(np.exp(0.5 + 0.8 * velocity @ tuning.T)).astype(float)
    config = lj.decode.KalmanVelocity(shrinkage=0.2)
    decoder = lj.decode.fit(config, counts[:1], velocity[:1])
    decoded = lj.decode.predict(decoder, counts[1:])
    # reference: least squares fitted here, covariance-form filter with the N x N S
    x, y = velocity[0], np.sqrt(counts[0])
    A = np.linalg.lstsq(x[:-1], x[1:], rcond=None)[0].T
    residual = x[1:] - x[:-1] @ A.T
    W = residual.T @ residual / (len(residual) - 1)  # about zero: the model has no drift
    design = np.c_[x, np.ones(num_bins)]
    coefficients = np.linalg.lstsq(design, y, rcond=None)[0].T
    H, b = coefficients[:, :2], coefficients[:, 2]
    Q = np.cov((y - design @ coefficients.T).T)
    Q = 0.8 * Q + 0.2 * np.diag(np.diag(Q))
    means, _ = numpy_kalman_filter(
        x.mean(0), np.cov(x.T), A, W, H, b, Q, np.sqrt(counts[1]), np.ones(num_bins, bool)
    )
    np.testing.assert_allclose(decoded[0], means, atol=1e-3)
    assert lj.decode.r2(decoded, velocity[1:]).mean > 0.5
    stream = lj.decode.stream(None, decoder)
    _, replay = stream.run(counts[1])
    np.testing.assert_allclose(replay, decoded[0], atol=1e-5)


def test_r2_per_axis_matches_scikit_learn():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(2, 10, 3))
    guess = truth + 0.5 * rng.normal(size=truth.shape)
    mask = np.ones((2, 10), bool)
    mask[1, 7:] = False
    score = lj.decode.r2(guess, truth, mask=mask)
    expected = r2_score(truth[mask], guess[mask], multioutput="raw_values")
    np.testing.assert_allclose(score.per_axis, expected, rtol=1e-12)
    assert score.mean == pytest.approx(expected.mean())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: lj.decode.fit("wiener", np.zeros((1, 20, 2)), np.zeros((1, 20, 1))), "`config`"),
        (
            lambda: lj.decode.fit(lj.decode.Wiener(), np.zeros((20, 2)), np.zeros((20, 1))),
            "`inputs`",
        ),
        (
            lambda: lj.decode.fit(lj.decode.Wiener(), np.zeros((1, 20, 2)), np.zeros((1, 9, 1))),
            "`behavior`",
        ),
        (lambda: lj.decode.Wiener(lags=0), "`lags`"),
        (lambda: lj.decode.KalmanVelocity(transform="log"), "`transform`"),
        (lambda: lj.decode.stream(None), "give a fitted `result`"),
        (lambda: lj.decode.predict("decoder", np.zeros((1, 5, 2))), "`decoder`"),
        (
            lambda: lj.decode.stream(
                None, lj.decode.fit(lj.decode.Wiener(), np.ones((1, 20, 2)), np.ones((1, 20, 1)))
            ).step(None, np.zeros(3)),
            r"`counts` must be \[2\]",
        ),
    ],
)
def test_decoders_validate_their_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_mc_maze_trials_load_as_streams_with_hand_velocity(shared_file):
    path = shared_file("mc_maze_two_trials/trial_748_data.csv")
    stream = lj.io.load_csv(path, bin_size=0.02)
    assert stream.shape == (1, 161, 182) and stream.behavior.shape == (1, 161, 2)
    header = path.read_text().splitlines()[0].split(",")
    raw = np.loadtxt(path, delimiter=",", skiprows=1)
    units = [i for i, name in enumerate(header) if name.startswith("unit_")]
    np.testing.assert_array_equal(
        stream.spikes[0], raw[: 161 * 20, units].reshape(161, 20, -1).sum(1)
    )
    velocity = raw[: 161 * 20, [header.index("hand_vel_x"), header.index("hand_vel_y")]]
    np.testing.assert_allclose(stream.behavior[0], velocity.reshape(161, 20, 2).mean(1))
    assert stream.neuron_ids[0] == header[units[0]][len("unit_") :]
    with pytest.raises(ValueError, match="whole multiple"):
        lj.io.load_csv(path, bin_size=0.0125)


@pytest.mark.slow
def test_causal_lds_latents_beat_smoothed_spikes_on_mc_maze(shared_file):
    """The acceptance check of scripts/bench_realtime.py at its chosen settings (train on
    trial 748, test on trial 1356, a 5-bin window): a smoke test on two real trials."""
    folder = shared_file("mc_maze_two_trials")
    train = lj.io.load_csv(folder / "trial_748_data.csv", bin_size=0.02)
    test = lj.io.load_csv(folder / "trial_1356_data.csv", bin_size=0.02)
    config = lds.Config(latent_dim=4, train=lj.train.TrainConfig(steps=5, chunk_size=5))
    result = lj.fit(config, train, progress=False)
    readout = lj.decode.fit(
        lj.decode.Wiener(lags=5), lj.infer(result, train, causal=True), train.behavior
    )
    decoder = lj.decode.stream(result, readout)
    latent_r2 = lj.decode.r2(lj.decode.replay(decoder, test).outputs, test.behavior).mean
    spikes = lj.decode.fit(lj.decode.Wiener(lags=5, smooth=4.0), train, train.behavior)
    spikes_r2 = lj.decode.r2(lj.decode.predict(spikes, test), test.behavior).mean
    assert latent_r2 > spikes_r2 > 0


@pytest.mark.slow
def test_a_trained_causal_lfads_streams_what_it_infers():
    """Causal LFADS trains through `lj.fit` like the bidirectional model (minutes: slow)."""
    data = lj.datasets.lorenz(seed=0, num_trials=16, num_bins=NUM_BINS, num_neurons=NUM_NEURONS)
    config = lfads.Config.preset("tiny", causal=True)
    result = lj.fit(config, data.trials, steps=50, progress=False)
    assert np.isfinite(result.history["loss"]).all()
    causal = lj.infer(result, data.trials[:2], causal=True)
    _, streamed = lj.decode.stream(result).run(np.asarray(data.trials.spikes[1], np.float32))
    np.testing.assert_allclose(streamed, causal.latents[1], rtol=1e-5, atol=1e-5)
