"""`lj.io.save` / `lj.io.load` on `.npz` files: exact round trip of every `Trials` field."""

import numpy as np
import pytest

import latentjax as lj


def counts_with_padding(seed=0):
    rng = np.random.default_rng(seed)
    spikes = rng.poisson(1.5, size=(3, 6, 4)).astype(np.int16)
    mask = np.arange(6) < np.array([6, 4, 5])[:, None]
    times = np.cumsum(rng.uniform(0.01, 0.02, size=(3, 6)), axis=1)
    return lj.Trials(
        spikes,
        dt=0.015,
        times=times,
        mask=mask,
        behavior=rng.normal(size=(3, 6, 2)).astype(np.float32),
        regions=["M1", "PMd", "M1", "PMd"],
        conditions=["left", "right", "left"],
        neuron_ids=[1011, 1022, 2031, 2041],
    )


def continuous_signals(seed=1):
    rng = np.random.default_rng(seed)
    return lj.Trials(
        rng.normal(size=(2, 5, 3)),
        dt=1 / 30,
        regions=[3, 1, 3],
        conditions=np.array([1, 0]),
        condition_names=("rest", "reach"),
        neuron_ids=["cell-a", "cell-b", "cell-c"],
        continuous=True,
    )


@pytest.mark.parametrize("make", [counts_with_padding, continuous_signals])
def test_round_trip_is_exact(tmp_path, make):
    trials = make()
    path = tmp_path / "trials.npz"
    lj.io.save(trials, path)
    loaded = lj.io.load(path)
    for name, value in trials.fields().items():
        got = getattr(loaded, name)
        if isinstance(value, np.ndarray):
            assert got.dtype == value.dtype, name
            np.testing.assert_array_equal(got, value, err_msg=name)
        elif isinstance(value, tuple):
            assert got == value, name
            assert [type(v) for v in got] == [type(v) for v in value], name
        else:
            assert got == value and type(got) is type(value), name
    with np.load(path, allow_pickle=False) as archive:  # readable without pickle
        assert {archive[name].dtype.kind for name in archive.files} <= set("biufU")


def test_hand_made_file_needs_only_spikes_and_dt(tmp_path):
    spikes = np.arange(24).reshape(2, 3, 4)
    path = tmp_path / "mine.npz"
    np.savez(path, spikes=spikes, dt=0.01)
    loaded = lj.io.load(path)
    np.testing.assert_array_equal(loaded.spikes, spikes)
    assert loaded.dt == 0.01 and loaded.mask.all() and loaded.regions is None


@pytest.mark.parametrize("missing", ["spikes", "dt"])
def test_missing_required_array_is_named_with_the_file(tmp_path, missing):
    arrays = {"spikes": np.ones((1, 2, 3)), "dt": np.asarray(0.01)}
    del arrays[missing]
    path = tmp_path / "partial.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=f"partial.npz.*no `{missing}` array"):
        lj.io.load(path)


def test_unknown_arrays_are_rejected(tmp_path):
    path = tmp_path / "typo.npz"
    np.savez(path, spikes=np.ones((1, 2, 3)), dt=0.01, region=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"\['region'\] that are not Trials fields"):
        lj.io.load(path)


def test_bad_paths(tmp_path):
    trials = continuous_signals()
    with pytest.raises(ValueError, match="must end in .npz"):
        lj.io.save(trials, tmp_path / "trials.h5")
    with pytest.raises(ValueError, match="must end in .npz or .nwb"):
        lj.io.load(tmp_path / "trials.h5")
    with pytest.raises(ValueError, match="no such file"):
        lj.io.load(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="needs `bin_size`"):
        lj.io.load(tmp_path / "session.nwb")
    with pytest.raises(ValueError, match="apply to .nwb files only"):
        lj.io.load(tmp_path / "trials.npz", bin_size=0.01)
    with pytest.raises(ValueError, match="must be a Trials"):
        lj.io.save(np.ones((1, 2, 3)), tmp_path / "trials.npz")
