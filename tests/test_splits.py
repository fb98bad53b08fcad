"""`lj.data.split`, `lj.data.heldout_neurons`, `lj.data.forward_split`."""

import numpy as np
import pytest

import latentjax as lj


def numbered_trials(num_trials=10, num_bins=12, num_neurons=8, lengths=None):
    """Trials whose `conditions` number them and whose spikes encode (trial, bin, neuron)."""
    trial, time, neuron = np.meshgrid(
        np.arange(num_trials), np.arange(num_bins), np.arange(num_neurons), indexing="ij"
    )
    mask = None if lengths is None else np.arange(num_bins) < np.asarray(lengths)[:, None]
    return lj.Trials(
        10000 * trial + 100 * time + neuron,
        dt=0.01,
        mask=mask,
        behavior=np.stack([trial, time], axis=-1)[:, :, 0, :].astype(np.float32),
        conditions=np.arange(num_trials),
        neuron_ids=[f"n{i}" for i in range(num_neurons)],
    )


@pytest.mark.parametrize(
    "num_trials, fractions, sizes",
    [(10, (0.8, 0.2), [8, 2]), (7, (0.5, 0.3, 0.2), [4, 2, 1]), (3, (1.0,), [3])],
)
def test_split_is_disjoint_and_covers_every_trial(num_trials, fractions, sizes):
    trials = numbered_trials(num_trials)
    parts = lj.data.split(trials, fractions, seed=3)
    assert [len(part) for part in parts] == sizes
    ids = np.concatenate([part.conditions for part in parts])
    np.testing.assert_array_equal(np.sort(ids), np.arange(num_trials))
    for part in parts:
        assert np.all(np.diff(part.conditions) > 0)  # original order kept
        np.testing.assert_array_equal(part.spikes, trials.spikes[part.conditions])


def test_split_is_deterministic_per_seed():
    trials = numbered_trials(40)

    def test_ids(seed):
        return lj.data.split(trials, seed=seed)[1].conditions

    np.testing.assert_array_equal(test_ids(0), test_ids(0))
    assert not np.array_equal(test_ids(0), test_ids(1))


@pytest.mark.parametrize(
    "fractions, message",
    [
        ((0.5, 0.6), "sum to 1"),
        ((1.2, -0.2), "positive"),
        ((1.0, 0.0), "positive"),
        ((), "positive"),
        ((0.95, 0.05), "too few"),
    ],
)
def test_split_validates_fractions(fractions, message):
    with pytest.raises(ValueError, match=message):
        lj.data.split(numbered_trials(10), fractions)


@pytest.mark.parametrize("n_heldout, expected", [(3, 3), (0.25, 2), (0.01, 1)])
def test_heldout_neurons_random(n_heldout, expected):
    trials = numbered_trials()
    heldin, heldout = lj.data.heldout_neurons(trials, n_heldout, seed=5)
    assert heldout.num_neurons == expected and heldin.num_neurons == 8 - expected
    assert sorted(heldin.neuron_ids + heldout.neuron_ids) == sorted(trials.neuron_ids)
    for part in (heldin, heldout):
        columns = [trials.neuron_ids.index(i) for i in part.neuron_ids]
        assert columns == sorted(columns)
        np.testing.assert_array_equal(part.spikes, trials.spikes[:, :, columns])
    again = lj.data.heldout_neurons(trials, n_heldout, seed=5)[1]
    assert again.neuron_ids == heldout.neuron_ids


def test_heldout_neurons_explicit():
    trials = numbered_trials()
    mask = np.zeros(8, dtype=bool)
    mask[[1, 6]] = True
    for neurons in (mask, [6, 1]):
        heldin, heldout = lj.data.heldout_neurons(trials, neurons=neurons)
        assert heldout.neuron_ids == ("n1", "n6") and heldin.num_neurons == 6


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((0,), {}, r"\[1, 7\]"),
        ((8,), {}, r"\[1, 7\]"),
        ((1.0,), {}, "fraction in"),
        ((True,), {}, "must be a number"),
        ((), {}, "either"),
        ((2,), {"neurons": [0]}, "either"),
        ((), {"neurons": np.ones(8, dtype=bool)}, "at most 7"),
        ((), {"neurons": np.ones(5, dtype=bool)}, r"shape \(8,\)"),
        ((), {"neurons": [0, 8]}, "indices must be in"),
        ((), {"neurons": [2, 2]}, "repeat"),
    ],
)
def test_heldout_neurons_validation(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lj.data.heldout_neurons(numbered_trials(), *args, **kwargs)


def test_forward_split_of_equal_length_trials():
    trials = numbered_trials()
    observed, forward = lj.data.forward_split(trials, 3)
    np.testing.assert_array_equal(observed.spikes, trials.spikes[:, :9])
    np.testing.assert_array_equal(forward.spikes, trials.spikes[:, 9:])
    np.testing.assert_array_equal(forward.times, trials.times[:, 9:])
    np.testing.assert_array_equal(forward.behavior, trials.behavior[:, 9:])
    assert observed.mask.all() and forward.mask.all()
    assert forward.neuron_ids == trials.neuron_ids
    np.testing.assert_array_equal(forward.conditions, trials.conditions)


def test_forward_split_of_padded_trials_takes_each_trials_last_bins():
    lengths = [12, 7, 9]
    trials = numbered_trials(3, lengths=lengths)
    observed, forward = lj.data.forward_split(trials, 2)
    assert observed.shape == (3, 10, 8) and forward.shape == (3, 2, 8)
    for b, length in enumerate(lengths):
        bins = forward.spikes[b, :, 0] // 100 % 100  # the bin index encoded in the spikes
        assert bins.tolist() == [length - 2, length - 1]
        assert observed.mask[b].tolist() == [t < length - 2 for t in range(10)]
        assert np.all(observed.spikes[b, length - 2 :] == 0)  # held-out bins left out
    assert forward.mask.all()


@pytest.mark.parametrize(
    "n_forward, message", [(0, r"\[1, 11\]"), (12, r"\[1, 11\]"), (2.0, "must be an int")]
)
def test_forward_split_validation(n_forward, message):
    with pytest.raises(ValueError, match=message):
        lj.data.forward_split(numbered_trials(), n_forward)
    with pytest.raises(ValueError, match="trial 1 has 3 bins"):
        lj.data.forward_split(numbered_trials(3, lengths=[12, 3, 9]), 3)
