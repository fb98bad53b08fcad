"""Synthetic datasets: determinism, Poisson statistics and each system's ground truth."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import latentjax as lj
from latentjax.datasets.multiregion import _companion_radius

SMALL = {
    "lorenz": dict(num_trials=6, num_bins=40, num_neurons=8),
    "chaotic_rnn": dict(num_trials=4, num_bins=30, num_units=12, input_pulses=True),
    "lds": dict(num_trials=5, num_bins=30, num_latents=3, num_neurons=7),
    "plds": dict(num_trials=5, num_bins=30, num_latents=3, num_neurons=7),
    "multiregion": dict(num_trials=5, num_bins=30, neurons_per_region=4, global_latent_dim=1),
    "ring": dict(num_trials=5, num_bins=30, num_neurons=10),
    "torus": dict(num_trials=5, num_bins=30, num_neurons=10),
    "flip_flop": dict(num_trials=5, num_bins=30, num_neurons=6),
    "nascar": dict(num_trials=5, num_bins=30, num_neurons=8),
}
SPIKING = ["lorenz", "chaotic_rnn", "plds", "multiregion", "ring", "torus", "flip_flop", "nascar"]


def wrapped(angle):
    return np.angle(np.exp(1j * angle))


def test_available_lists_every_generator_with_a_description():
    descriptions = lj.datasets.available()
    assert set(descriptions) == set(SMALL)
    for text in descriptions.values():
        assert text and "\n" not in text


@pytest.mark.parametrize("name", sorted(SMALL))
def test_generators_are_deterministic_per_seed_and_shapes_agree(name):
    first = lj.datasets.generate(name, seed=3, **SMALL[name])
    again = lj.datasets.generate(name, seed=3, **SMALL[name])
    other = lj.datasets.generate(name, seed=4, **SMALL[name])
    np.testing.assert_array_equal(first.trials.spikes, again.trials.spikes)
    np.testing.assert_array_equal(first.truth["latents"], again.truth["latents"])
    assert not np.array_equal(first.truth["latents"], other.truth["latents"])
    assert not np.array_equal(first.trials.spikes, other.trials.spikes)

    num_trials, num_bins, num_neurons = first.trials.shape
    assert first.truth["rates"].shape == (num_trials, num_bins, num_neurons)
    assert first.truth["latents"].shape[:2] == (num_trials, num_bins)
    assert first.truth["latents"].dtype == np.float32
    assert first.trials.spikes.dtype == np.float32


@pytest.mark.parametrize("name", SPIKING)
def test_poisson_counts_average_to_the_rates(name):
    data = lj.datasets.generate(name, seed=1)
    spikes, rates = data.trials.spikes.astype(np.float64), data.truth["rates"].astype(np.float64)
    # Per neuron, (total count - total rate) / sqrt(total rate) is ~ N(0, 1) under Poisson.
    z = (spikes - rates).sum(axis=(0, 1)) / np.sqrt(rates.sum(axis=(0, 1)))
    num_neurons = z.size
    assert abs(z.sum() / np.sqrt(num_neurons)) < 4.5
    assert (z**2).sum() < num_neurons + 5 * np.sqrt(2 * num_neurons)
    # Poisson variance equals the mean: bins with higher rates vary more, as predicted.
    scaled_variance = ((spikes - rates) ** 2 / rates).mean()
    assert abs(scaled_variance - 1.0) < 0.05


@pytest.mark.parametrize(
    "name, kwargs", [("lds", {}), ("multiregion", dict(observations="gaussian"))]
)
def test_gaussian_observation_noise_has_covariance_r(name, kwargs):
    data = lj.datasets.generate(name, seed=2, **kwargs)
    assert data.trials.continuous
    residuals = (data.trials.spikes - data.truth["rates"]).reshape(-1, data.trials.num_neurons)
    covariance = np.cov(residuals.T)
    noise = data.truth["params"]["R"]
    np.testing.assert_allclose(np.diag(covariance), np.diag(noise), rtol=0.06)
    off_diagonal = covariance - np.diag(np.diag(covariance))
    assert np.abs(off_diagonal).max() < 0.05 * np.diag(noise).max()


def test_lorenz_latents_follow_the_lorenz_equations():
    data = lj.datasets.lorenz(seed=0, num_trials=4, num_bins=60, num_neurons=5)
    params = data.truth["params"]
    states = data.truth["latents"].astype(np.float64) * params["scale"] + params["mean"]
    np.testing.assert_allclose(states[:, 0], params["initial_states"], rtol=1e-6, atol=1e-5)

    def lorenz_field(_, s):  # written out independently of the library's vector field
        x, y, z = s
        sigma, rho, beta = params["sigma"], params["rho"], params["beta"]
        return [sigma * (y - x), x * (rho - z) - y, x * y - beta * z]

    span = params["ode_time_per_bin"] * (states.shape[1] - 1)
    for trial in range(states.shape[0]):
        reference = solve_ivp(
            lorenz_field,
            (0.0, span),
            states[trial, 0],
            t_eval=np.linspace(0.0, span, states.shape[1]),
            rtol=1e-11,
            atol=1e-11,
        ).y.T
        np.testing.assert_allclose(states[trial], reference, atol=5e-4)

    # Finite differences of the state match the vector field (4th-order central differences).
    h = params["ode_time_per_bin"]
    derivative = (-states[:, 4:] + 8 * states[:, 3:-1] - 8 * states[:, 1:-3] + states[:, :-4]) / (
        12 * h
    )
    field = np.array([lorenz_field(0, s) for s in states[:, 2:-2].reshape(-1, 3)])
    error = np.linalg.norm(derivative.reshape(-1, 3) - field, axis=1)
    assert np.median(error / np.linalg.norm(field, axis=1)) < 0.005
    # The trajectories lie on the attractor: both lobes visited, z in its usual range.
    assert (states[..., 0] > 0).any() and (states[..., 0] < 0).any()
    assert 0 < states[..., 2].min() and states[..., 2].max() < 50


def test_lorenz_conditions_share_their_trajectory():
    data = lj.datasets.lorenz(seed=0, num_trials=9, num_bins=20, num_conditions=3)
    conditions = data.trials.conditions
    latents = data.truth["latents"]
    np.testing.assert_array_equal(latents[conditions == 1][0], latents[conditions == 1][1])
    assert not np.allclose(latents[0], latents[1])


def test_chaotic_rnn_follows_its_ode_and_records_pulses():
    data = lj.datasets.chaotic_rnn(seed=0, num_trials=3, num_bins=60, input_pulses=True)
    params, states, inputs = data.truth["params"], data.truth["latents"], data.truth["inputs"]
    recurrent, weights = params["J"].astype(np.float64), params["input_weights"][:, 0]
    dt = data.trials.dt

    assert (np.count_nonzero(inputs[..., 0], axis=1) == 1).all()
    pulse_bins = np.nonzero(inputs[..., 0])[1]
    assert ((pulse_bins >= 15) & (pulse_bins < 45)).all()

    def field(_, x, u):
        return (-x + params["gain"] * recurrent @ np.tanh(x) + weights * u) / params["tau"]

    for trial in range(3):
        for t in (0, pulse_bins[trial], 50):  # includes the bin with the pulse
            u = inputs[trial, t, 0]
            stepped = solve_ivp(field, (0, dt), states[trial, t], args=(u,), rtol=1e-10).y[:, -1]
            np.testing.assert_allclose(stepped, states[trial, t + 1], atol=1e-3)

    quiet = lj.datasets.chaotic_rnn(seed=0, num_trials=3, num_bins=60)
    assert not quiet.truth["inputs"].any()
    # rates = max_rate_hz * dt * (1 + tanh(x)) / 2 with 30 Hz and 10 ms bins.
    expected = (1 + np.tanh(quiet.truth["latents"])) * 0.15
    np.testing.assert_allclose(quiet.truth["rates"], expected, rtol=1e-5, atol=1e-7)


def test_lds_latents_follow_the_dynamics():
    data = lj.datasets.lds(seed=0, num_trials=200, num_bins=50, num_latents=4, num_neurons=5)
    params, latents = data.truth["params"], data.truth["latents"].astype(np.float64)
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(params["A"])), 0.95, rtol=1e-5)
    residuals = (latents[:, 1:] - latents[:, :-1] @ params["A"].T).reshape(-1, 4)
    np.testing.assert_allclose(residuals.mean(axis=0), 0.0, atol=0.02)
    np.testing.assert_allclose(np.cov(residuals.T), params["Q"], atol=0.01)
    # Q = (1 - rho^2) I keeps the latents stationary with unit covariance.
    np.testing.assert_allclose(np.cov(latents.reshape(-1, 4).T), np.eye(4), atol=0.15)
    np.testing.assert_allclose(
        data.truth["rates"], latents @ params["C"].T + params["d"], rtol=1e-4, atol=1e-4
    )


def test_plds_rates_are_exp_of_the_linear_readout():
    data = lj.datasets.plds(seed=0, num_trials=4)
    params, latents = data.truth["params"], data.truth["latents"]
    np.testing.assert_allclose(
        np.log(data.truth["rates"]), latents @ params["C"].T + params["d"], atol=1e-4
    )


def lagged_regression(latents, slices, target, sources, max_lag):
    """OLS weights `{(source, lag): [K_target, K_source]}` of x_target[t] on x_target[t-1] and
    x_source[t-lag], lag = 1..max_lag, for region indices `target` and `sources`."""
    num_bins = latents.shape[1]
    columns = [latents[:, max_lag - 1 : -1, slices[f"R{target}"]]]
    names = [(target, 1)]
    for source in sources:
        for lag in range(1, max_lag + 1):
            columns.append(latents[:, max_lag - lag : num_bins - lag, slices[f"R{source}"]])
            names.append((source, lag))
    design = np.concatenate(columns, axis=-1)
    design = design.reshape(-1, design.shape[-1])
    response = latents[:, max_lag:, slices[f"R{target}"]]
    response = response.reshape(-1, response.shape[-1])
    weights = np.linalg.lstsq(design, response, rcond=None)[0].T
    bounds = np.cumsum([0] + [c.shape[-1] for c in columns])
    return {name: weights[:, bounds[i] : bounds[i + 1]] for i, name in enumerate(names)}


def test_multiregion_lagged_regression_finds_the_true_edges_and_delays():
    data = lj.datasets.multiregion(seed=0, num_trials=200, num_bins=60)
    truth, latents = data.truth, data.truth["latents"].astype(np.float64)
    assert data.trials.region_names == ("R0", "R1", "R2")
    np.testing.assert_array_equal(truth["delays"], [[0, 2, 0], [0, 0, 1], [0, 0, 0]])
    assert truth["coupling"][0, 1] > 0 and truth["coupling"][1, 2] > 0
    assert np.count_nonzero(truth["coupling"]) == 2
    assert _companion_radius(truth["params"]["var_matrices"]) < 0.98

    for target in range(3):
        sources = [s for s in range(3) if s != target]
        blocks = lagged_regression(latents, truth["latent_slices"], target, sources, max_lag=3)
        np.testing.assert_allclose(
            blocks[target, 1], truth["params"]["dynamics"][target], atol=0.06
        )
        for source in sources:
            for lag in (1, 2, 3):
                estimate = blocks[source, lag]
                if truth["delays"][source, target] == lag:
                    coupling = truth["params"]["coupling_matrices"][source, target]
                    np.testing.assert_allclose(estimate, coupling, atol=0.06)
                    strength = np.linalg.norm(estimate, ord=2)
                    np.testing.assert_allclose(strength, truth["coupling"][source, target], 0.1)
                else:
                    assert np.abs(estimate).max() < 0.06, (source, target, lag)


def test_multiregion_scales_strong_feedback_to_stability():
    data = lj.datasets.multiregion(
        seed=0, num_regions=2, edges=[(0, 1), (1, 0)], delays=[1, 3], coupling_strength=3.0
    )
    coupling = data.truth["coupling"]
    assert 0 < coupling[0, 1] < 3 and coupling[0, 1] == coupling[1, 0]
    assert _companion_radius(data.truth["params"]["var_matrices"]) < 0.98
    assert np.isfinite(data.truth["latents"]).all()


def test_multiregion_neurons_read_their_own_region_and_the_global_latent():
    data = lj.datasets.multiregion(seed=0, num_trials=3, global_latent_dim=2)
    readout, slices = data.truth["params"]["readout"], data.truth["latent_slices"]
    regions = np.array(data.trials.regions)
    assert data.truth["latents"].shape[-1] == 8 and slices["global"] == slice(6, 8)
    for label in ("R0", "R1", "R2"):
        own = readout[:, regions == label]
        assert (np.abs(own[slices[label]]).sum(axis=0) > 0).all()
        assert (np.abs(own[slices["global"]]).sum(axis=0) > 0).all()
        others = [slices[r] for r in ("R0", "R1", "R2") if r != label]
        assert not np.concatenate([own[sl] for sl in others]).any()


def test_multiregion_condition_dynamics_hold_exactly_their_conditions_edges():
    """Each condition's VAR has the union's coupling blocks for its own edges and none for
    the others (a regression: condition matrices were once built on top of the union)."""
    data = lj.datasets.multiregion(
        seed=0, num_trials=4, condition_edges=(((0, 1), (1, 2)), ((1, 2),))
    )
    union = data.truth["params"]["var_matrices"]
    conditions = data.truth["params"]["condition_var_matrices"]
    blocks = {(0, 1): (slice(2, 4), slice(0, 2)), (1, 2): (slice(4, 6), slice(2, 4))}
    for c, edges in enumerate((((0, 1), (1, 2)), ((1, 2),))):
        for edge, (rows, cols) in blocks.items():
            want = union[:, rows, cols] if edge in edges else 0.0 * union[:, rows, cols]
            np.testing.assert_array_equal(conditions[c][:, rows, cols], want)
    np.testing.assert_array_equal(conditions[1][:, 0:2, 0:2], union[:, 0:2, 0:2])  # own


def decode_angle(counts, preferred):
    """Population-vector estimate of the angle from counts `[..., neurons]`."""
    return np.angle(counts @ np.exp(1j * preferred))


def smooth_over_time(counts, width):
    kernel = np.ones(width)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="same"), 1, counts)


def test_ring_angle_is_decodable_from_the_counts():
    data = lj.datasets.ring(seed=0, num_trials=40)
    angle, preferred = data.truth["angle"], data.truth["params"]["preferred"]
    np.testing.assert_allclose(
        data.truth["latents"], np.stack([np.cos(angle), np.sin(angle)], -1), atol=1e-6
    )
    estimate = decode_angle(smooth_over_time(data.trials.spikes, 5), preferred)
    error = np.abs(wrapped(estimate - angle))
    assert np.median(error) < 0.3
    shuffled = np.abs(wrapped(estimate - np.roll(angle, 1, axis=0)))
    assert np.median(shuffled) > 1.0
    # The angle drifts smoothly: per-bin steps are small.
    assert np.abs(wrapped(np.diff(angle, axis=1))).max() < 0.2


def test_torus_angles_are_decodable_from_the_counts():
    data = lj.datasets.torus(seed=0, num_trials=40)
    angles, preferred = data.truth["angles"], data.truth["params"]["preferred"]
    smoothed = smooth_over_time(data.trials.spikes, 5)
    for axis in range(2):
        estimate = decode_angle(smoothed, preferred[:, axis])
        assert np.median(np.abs(wrapped(estimate - angles[..., axis]))) < 0.4
    np.testing.assert_allclose(data.truth["latents"][..., 2], np.cos(angles[..., 1]), atol=1e-6)


def test_subsample_compacts_kept_bins_with_their_times():
    data = lj.datasets.lorenz(seed=0, num_trials=5, num_bins=50, num_neurons=4)
    sparse, index = lj.datasets.subsample(data.trials, 0.3, seed=1, return_index=True)
    assert sparse.shape == (5, 15, 4) and index.shape == (5, 15)
    assert sparse.mask.all() and (np.diff(index, axis=1) > 0).all()
    np.testing.assert_allclose(sparse.times, index * data.trials.dt)
    gathered = np.take_along_axis(data.trials.spikes, index[..., None], axis=1)
    np.testing.assert_array_equal(sparse.spikes, gathered)
    assert len({tuple(row) for row in index}) == 5  # trials drop different bins

    again = lj.datasets.subsample(data.trials, 0.3, seed=1)
    np.testing.assert_array_equal(again.times, sparse.times)
    full = lj.datasets.subsample(data.trials, 1.0)
    np.testing.assert_array_equal(full.spikes, data.trials.spikes)
    np.testing.assert_array_equal(full.times, data.trials.times)


def test_subsample_pads_trials_that_keep_fewer_bins():
    data = lj.datasets.ring(seed=0, num_trials=3, num_bins=20, num_neurons=5)
    mask = np.ones((3, 20), dtype=bool)
    mask[1, 10:] = False  # trial 1 observed for 10 bins only
    trials = data.trials.replace(mask=mask)
    sparse, index = lj.datasets.subsample(trials, 0.5, seed=0, return_index=True)
    assert sparse.shape[1] == 10
    np.testing.assert_array_equal(sparse.mask.sum(axis=1), [10, 5, 10])
    assert (index[1, 5:] == -1).all() and (index[1, :5] < 10).all()
    np.testing.assert_array_equal(sparse.spikes[1, 5:], 0)
    observed = sparse.mask
    np.testing.assert_allclose(sparse.times[observed], index[observed] * trials.dt)
    gathered = np.take_along_axis(trials.behavior, np.maximum(index, 0)[..., None], axis=1)
    np.testing.assert_array_equal(sparse.behavior[observed], gathered[observed])


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: lj.datasets.lorenz(num_trials=0), "num_trials"),
        (lambda: lj.datasets.lorenz(num_neurons=2.5), "num_neurons"),
        (lambda: lj.datasets.lorenz(dt=-0.01), "dt"),
        (lambda: lj.datasets.lorenz(seed=-1), "seed"),
        (lambda: lj.datasets.lorenz(num_trials=4, num_conditions=5), "num_conditions"),
        (lambda: lj.datasets.lorenz(baseline_hz=(20, 5)), "baseline_hz"),
        (lambda: lj.datasets.chaotic_rnn(num_units=True), "num_units"),
        (lambda: lj.datasets.lds(spectral_radius=1.2), "spectral_radius"),
        (lambda: lj.datasets.plds(num_latents=0), "num_latents"),
        (lambda: lj.datasets.multiregion(edges=[(0, 3)]), "edges"),
        (lambda: lj.datasets.multiregion(edges=[(0, 0)], delays=[1]), "edges"),
        (lambda: lj.datasets.multiregion(delays=(2,)), "delays"),
        (lambda: lj.datasets.multiregion(delays=(0, 1)), "delays"),
        (lambda: lj.datasets.multiregion(latent_dim=(2, 2)), "latent_dim"),
        (lambda: lj.datasets.multiregion(observations="binary"), "observations"),
        (lambda: lj.datasets.ring(kappa=0), "kappa"),
        (lambda: lj.datasets.nascar(observations="binary"), "observations"),
        (lambda: lj.datasets.nascar(speed=2.0), "speed"),
        (lambda: lj.datasets.torus(num_bins=1), "num_bins"),
        (lambda: lj.datasets.generate("spiral"), "name"),
        (lambda: lj.datasets.subsample(lj.datasets.ring().trials, 0.0), "keep"),
        (lambda: lj.datasets.subsample(np.zeros((2, 3, 4)), 0.5), "trials"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(call, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call()


def test_flip_flop_bits_take_the_sign_of_the_latest_pulse_and_hold_it():
    data = lj.datasets.flip_flop(seed=2, num_trials=6, num_bins=80, pulse_probability=0.1)
    bits, pulses = data.truth["latents"], data.truth["inputs"]
    assert np.count_nonzero(pulses) > 20
    for trial in range(6):
        for channel in range(3):
            state = bits[trial, 0, channel] if pulses[trial, 0, channel] == 0 else None
            for t in range(80):
                pulse = pulses[trial, t, channel]
                state = pulse if pulse != 0 else state
                assert bits[trial, t, channel] == state
    params = data.truth["params"]
    np.testing.assert_allclose(
        data.truth["rates"], np.exp(bits @ params["readout"] + params["bias"]), rtol=1e-5
    )
