"""`lj.io.load_nwb`: small NWB files written here with known spikes, malformed files, and the
real NLB and pynapple files of ../shared/data (skipped when absent)."""

import datetime
from pathlib import Path

import h5py
import numpy as np
import pynwb
import pytest
from conftest import SHARED_DATA

import latentjax as lj

BIN = 0.1
UNIT_IDS = [11, 12, 21, 22, 23]
UNIT_REGIONS = ["M1", "M1", "PMd", "PMd", "PMd"]
HELDOUT = [False, False, True, False, True]
TRIAL_STARTS = [0.5, 2.0, 4.0, 6.5]
TRIAL_STOPS = [1.5, 3.2, 4.9, 8.0]  # 10, 12, 9 and 15 bins of 0.1 s
MOVE_ONSETS = [0.9, 2.4, 4.3, 7.0]


def real_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"real data {relative} not found under {SHARED_DATA} (LATENTJAX_SHARED_DATA)")
    return path


def random_spike_times(seed: int, end: float = 9.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.uniform(0.0, end, size=rng.integers(40, 80))) for _ in UNIT_IDS]


def write_nwb(
    path,
    spike_times,
    *,
    trials=True,
    units=True,
    heldout=True,
    behavior=True,
    unit_location=None,
    link_groups=False,
    epochs=None,
    obs_intervals=None,
):
    """An NWB file in the NLB layout: units linked to electrodes (located "M1" or "PMd") of the
    groups `electrode_group_M1` and `electrode_group_PMd`, or (`link_groups`) to the groups."""
    nwb = pynwb.NWBFile(
        session_description="test",
        identifier="test",
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    )
    device = nwb.create_device(name="array")
    groups = {
        region: nwb.create_electrode_group(
            name=f"electrode_group_{region}", description="", location="", device=device
        )
        for region in ("M1", "PMd")
    }
    for region in UNIT_REGIONS:
        nwb.add_electrode(location=region, group=groups[region])
    if units:
        if heldout:
            nwb.add_unit_column(name="heldout", description="NLB held-out unit")
        if unit_location is not None:
            nwb.add_unit_column(name="location", description="brain region")
        for row, (unit_id, times) in enumerate(zip(UNIT_IDS, spike_times, strict=True)):
            columns = {"heldout": HELDOUT[row]} if heldout else {}
            if unit_location is not None:
                columns["location"] = unit_location[row]
            if obs_intervals is not None:
                columns["obs_intervals"] = obs_intervals[row]
            if link_groups:
                columns["electrode_group"] = groups[UNIT_REGIONS[row]]
            else:
                columns["electrodes"] = [row]
            nwb.add_unit(spike_times=times, id=unit_id, **columns)
    if trials:
        nwb.add_trial_column(name="move_onset_time", description="movement onset")
        for start, stop, onset in zip(TRIAL_STARTS, TRIAL_STOPS, MOVE_ONSETS, strict=True):
            nwb.add_trial(start_time=start, stop_time=stop, move_onset_time=onset)
    for start, stop in epochs or ():
        nwb.add_epoch(start_time=start, stop_time=stop)
    if behavior:
        stamps = np.arange(1001) * 0.01  # 0..10 s at 100 Hz
        velocity = np.stack([2.0 * stamps + 1.0, -3.0 * stamps], axis=1)  # linear: exact interp
        module = nwb.create_processing_module(name="behavior", description="behaviour")
        module.add(pynwb.TimeSeries(name="hand_vel", data=velocity, timestamps=stamps, unit="m/s"))
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


@pytest.fixture(scope="module")
def spike_times():
    return random_spike_times(seed=0)


@pytest.fixture(scope="module")
def nlb_file(tmp_path_factory, spike_times):
    return write_nwb(tmp_path_factory.mktemp("nwb") / "nlb.nwb", spike_times)


@pytest.fixture(scope="module")
def untrialled_file(tmp_path_factory, spike_times):
    path = tmp_path_factory.mktemp("nwb") / "no_trials.nwb"
    return write_nwb(path, spike_times, trials=False, heldout=False, behavior=False)


def histogram_counts(times, start, num_bins):
    counts, _ = np.histogram(times, bins=start + np.arange(num_bins + 1) * BIN)
    return counts


def test_trial_rows_give_exact_counts_with_padding(nlb_file, spike_times):
    trials = lj.io.load_nwb(nlb_file, bin_size=BIN)
    lengths = [10, 12, 9, 15]
    assert trials.shape == (4, 15, 5)
    assert trials.dt == BIN and trials.spikes.dtype.kind == "i"
    np.testing.assert_array_equal(trials.mask, np.arange(15) < np.array(lengths)[:, None])
    for b, (start, length) in enumerate(zip(TRIAL_STARTS, lengths, strict=True)):
        for unit, times in enumerate(spike_times):
            np.testing.assert_array_equal(
                trials.spikes[b, :length, unit], histogram_counts(times, start, length)
            )
        np.testing.assert_allclose(trials.times[b, :length], np.arange(length) * BIN, atol=1e-9)
    assert trials.neuron_ids == tuple(UNIT_IDS)
    assert trials.regions == tuple(UNIT_REGIONS)  # from the electrodes' locations


def test_aligned_windows_and_behavior(nlb_file, spike_times):
    trials = lj.io.load(nlb_file, bin_size=BIN, align="move_onset_time", window=(-0.3, 0.5))
    assert trials.shape == (4, 8, 5) and trials.mask.all()
    for b, onset in enumerate(MOVE_ONSETS):
        for unit, times in enumerate(spike_times):
            np.testing.assert_array_equal(
                trials.spikes[b, :, unit], histogram_counts(times, onset - 0.3, 8)
            )
    np.testing.assert_allclose(trials.times[0], -0.3 + np.arange(8) * BIN, atol=1e-9)
    centres = np.array(MOVE_ONSETS)[:, None] - 0.3 + (np.arange(8) + 0.5) * BIN
    expected = np.stack([2.0 * centres + 1.0, -3.0 * centres], axis=-1)
    assert trials.behavior.shape == (4, 8, 2) and trials.behavior.dtype == np.float32
    np.testing.assert_allclose(trials.behavior, expected, rtol=1e-5, atol=1e-5)


def test_behavior_can_be_switched_off_or_named(nlb_file):
    assert lj.io.load_nwb(nlb_file, bin_size=BIN, behavior=()).behavior is None
    trials = lj.io.load_nwb(nlb_file, bin_size=BIN, behavior=["hand_vel", "hand_vel"])
    assert trials.behavior.shape == (4, 15, 4)
    with pytest.raises(ValueError, match="no TimeSeries named 'eye_pos'"):
        lj.io.load_nwb(nlb_file, bin_size=BIN, behavior="eye_pos")


def test_region_overrides(nlb_file):
    labels = ["a", "b", "c", "d", "e"]
    assert lj.io.load_nwb(nlb_file, bin_size=BIN, regions=labels).regions == tuple(labels)
    with pytest.raises(ValueError, match="one label per unit"):
        lj.io.load_nwb(nlb_file, bin_size=BIN, regions=labels[:2])
    with pytest.raises(ValueError, match="names no column"):
        lj.io.load_nwb(nlb_file, bin_size=BIN, regions="area")


def test_units_location_column_gives_regions(tmp_path, spike_times):
    labels = ["CA1", "CA1", "CA3", "DG", "DG"]
    path = write_nwb(tmp_path / "loc.nwb", spike_times, unit_location=labels, behavior=False)
    assert lj.io.load_nwb(path, bin_size=BIN).regions == tuple(labels)


def test_electrode_group_names_give_regions(tmp_path, spike_times):
    path = write_nwb(tmp_path / "groups.nwb", spike_times, link_groups=True, behavior=False)
    assert lj.io.load_nwb(path, bin_size=BIN).regions == tuple(UNIT_REGIONS)


def test_heldout_units_select_nlb_heldout_neurons(nlb_file):
    mask = lj.io.nwb_heldout_units(nlb_file)
    np.testing.assert_array_equal(mask, HELDOUT)
    trials = lj.io.load_nwb(nlb_file, bin_size=BIN)
    heldin, heldout = lj.data.heldout_neurons(trials, neurons=mask)
    assert heldout.neuron_ids == (21, 23) and heldin.neuron_ids == (11, 12, 22)


def test_no_trials_table_loads_a_stream_or_tiles(untrialled_file, spike_times):
    stream = lj.io.load_nwb(untrialled_file, bin_size=BIN)
    last_spike = max(t[-1] for t in spike_times)
    num_bins = int(np.floor(last_spike / BIN + 1e-6))
    assert stream.shape == (1, num_bins, 5) and stream.mask.all()
    for unit, times in enumerate(spike_times):
        np.testing.assert_array_equal(
            stream.spikes[0, :, unit], histogram_counts(times, 0.0, num_bins)
        )
    with pytest.raises(ValueError, match="no trials table to align on"):
        lj.io.load_nwb(untrialled_file, bin_size=BIN, align="move_onset_time", window=(0, 1))
    with pytest.raises(ValueError, match="no `heldout` column"):
        lj.io.nwb_heldout_units(untrialled_file)
    trials = lj.io.load_nwb(untrialled_file, bin_size=BIN, trial_length=1.0)
    last_spike = max(t[-1] for t in spike_times)
    assert trials.shape == (int(last_spike), 10, 5) and trials.mask.all()
    for b in range(trials.num_trials):
        for unit, times in enumerate(spike_times):
            np.testing.assert_array_equal(
                trials.spikes[b, :, unit], histogram_counts(times, float(b), 10)
            )


def test_windows_past_the_trial_are_masked_with_no_spike(nlb_file, spike_times):
    # Trial 2 runs 4.0..4.9 s; the window 4.0..5.1 s around its onset (4.3 s) reaches 0.2 s
    # past its stop, where the recording may hold nothing, or another trial; trial 0 too.
    trials = lj.io.load_nwb(nlb_file, bin_size=BIN, align="move_onset_time", window=(-0.3, 0.8))
    assert trials.shape == (4, 11, 5)
    np.testing.assert_array_equal(trials.mask, np.arange(11) < np.array([9, 11, 9, 11])[:, None])
    assert (trials.spikes[2, 9:] == 0).all()
    counts = np.stack([histogram_counts(times, 4.0, 11) for times in spike_times], axis=1)
    assert counts[9:].sum() > 0  # there are spikes there to leave out
    np.testing.assert_array_equal(trials.spikes[2, :9], counts[:9])


def test_bins_outside_obs_intervals_are_masked(tmp_path, spike_times):
    gaps = [[[0.0, 3.0], [3.5, 9.0]]] * 4 + [[[0.0, 3.0], [3.5, 7.2]]]  # the last unit stops
    path = write_nwb(
        tmp_path / "obs.nwb", spike_times, trials=False, behavior=False, obs_intervals=gaps
    )
    trials = lj.io.load_nwb(path, bin_size=BIN, trial_length=1.0)
    expected = np.ones((trials.num_trials, 10), dtype=bool)
    expected[3, :5] = False  # 3.0..3.5 s: no unit recorded
    expected[7, 2:] = False  # 7.2.. s: the last unit no longer recorded
    np.testing.assert_array_equal(trials.mask, expected)
    assert (trials.spikes[~expected] == 0).all()
    np.testing.assert_array_equal(trials.spikes[3, 5:, 0], histogram_counts(spike_times[0], 3.5, 5))
    with pytest.raises(ValueError, match="3..3.1 s of trial 3, lies outside the units' obs_int"):
        lj.io.load_nwb(path, bin_size=BIN, trial_length=1.0, strict=True)


def test_trial_length_on_a_trials_table_needs_ignore_trials(nlb_file, spike_times):
    with pytest.raises(ValueError, match="has a trials table.*`ignore_trials=True`"):
        lj.io.load_nwb(nlb_file, bin_size=BIN, trial_length=2.0)
    trials = lj.io.load_nwb(nlb_file, bin_size=BIN, trial_length=2.0, ignore_trials=True)
    assert trials.shape == (4, 20, 5) and trials.mask.all()
    np.testing.assert_array_equal(trials.spikes[1, :, 2], histogram_counts(spike_times[2], 2.0, 20))


def test_the_command_line_flags_for_trial_tables(nlb_file, tmp_path, capsys):
    from latentjax.cli import main

    argv = ["fit", "lds", "--data", str(nlb_file), "--bin-size", str(BIN)]
    argv += ["--trial-length", "2.0", "--out", str(tmp_path / "run")]
    assert main(argv) == 1  # refused before anything is fitted or written
    assert "has a trials table" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    from latentjax.cli import load_data, make_parser

    args = make_parser().parse_args([*argv, "--ignore-trials"])
    assert load_data(args.data, args)[0].shape == (4, 20, 5)
    args = make_parser().parse_args(
        ["infer", "--run", "x", "--data", str(nlb_file), "--bin-size", str(BIN)]
        + ["--align", "start_time", "--window", "0", "3", "--strict-windows"]
    )
    with pytest.raises(ValueError, match="outside"):
        load_data(args.data, args)


def test_trial_length_tiles_the_epochs(tmp_path, spike_times):
    path = write_nwb(
        tmp_path / "epochs.nwb", spike_times, trials=False, behavior=False, epochs=[(2.0, 7.5)]
    )
    trials = lj.io.load_nwb(path, bin_size=BIN, trial_length=2.0)
    assert trials.shape == (2, 20, 5)
    np.testing.assert_array_equal(trials.spikes[1, :, 0], histogram_counts(spike_times[0], 4.0, 20))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"bin_size": 0.0}, "bin_size"),
        ({"bin_size": BIN, "align": "move_onset_time"}, "`align` and `window` go together"),
        ({"bin_size": BIN, "align": "move_onset_time", "window": (0.5, -0.3)}, "before < after"),
        ({"bin_size": BIN, "align": "go_cue_time", "window": (-0.3, 0.5)}, "no column 'go_cue"),
        (
            {"bin_size": BIN, "align": "move_onset_time", "window": (-1.0, 0.5), "strict": True},
            "`strict`: 24 bin.*of trials row id 0, lies outside the trial's start_time",
        ),
        ({"bin_size": BIN, "align": "move_onset_time", "window": (5.0, 6.0)}, "no recorded bin"),
        ({"bin_size": BIN, "trial_length": 1.0, "align": "move_onset_time"}, "either"),
        ({"bin_size": BIN, "trial_length": 1.0}, "has a trials table.*ignore_trials=True"),
        ({"bin_size": BIN, "ignore_trials": True}, "`ignore_trials` goes with `trial_length`"),
        ({"bin_size": BIN, "strict": "yes"}, "`strict` must be True or False"),
        ({"bin_size": 2.0}, "shorter than one bin"),
    ],
)
def test_invalid_options(nlb_file, options, message):
    with pytest.raises(ValueError, match=message):
        lj.io.load_nwb(nlb_file, **options)


def test_malformed_files(tmp_path, spike_times):
    no_units = write_nwb(tmp_path / "no_units.nwb", spike_times, units=False, behavior=False)
    with pytest.raises(ValueError, match="no units table"):
        lj.io.load_nwb(no_units, bin_size=BIN)

    negative = [times - 1.0 for times in spike_times]
    early = write_nwb(tmp_path / "negative.nwb", negative, behavior=False)
    with pytest.raises(ValueError, match="spike_times of unit 11.*outside the session"):
        lj.io.load_nwb(early, bin_size=BIN)

    reversed_trial = write_nwb(tmp_path / "reversed.nwb", spike_times, behavior=False)
    with h5py.File(reversed_trial, "r+") as file:
        file["intervals/trials/stop_time"][2] = 3.5  # trial 2 starts at 4.0
    with pytest.raises(ValueError, match="trials row id 2 stops before it starts"):
        lj.io.load_nwb(reversed_trial, bin_size=BIN)

    not_nwb = tmp_path / "text.nwb"
    not_nwb.write_text("not an NWB file")
    with pytest.raises(ValueError, match="cannot read"):
        lj.io.load_nwb(not_nwb, bin_size=BIN)
    with pytest.raises(ValueError, match="no such file"):
        lj.io.load_nwb(tmp_path / "absent.nwb", bin_size=BIN)


@pytest.fixture(scope="module")
def mc_maze_path():
    return real_file("mc_maze_small_test/sub-Jenkins_ses-small_desc-test_ecephys.nwb")


def test_mc_maze_small_aligned_to_movement_onset(mc_maze_path):
    trials = lj.io.load(mc_maze_path, bin_size=0.005, align="move_onset_time", window=(-0.25, 0.45))
    assert trials.shape == (100, 140, 107) and trials.mask.all()
    # Independent reading with h5py: spike times, their unit index and the onsets.
    with h5py.File(mc_maze_path, "r") as file:
        flat = file["units/spike_times"][:]
        ends = file["units/spike_times_index"][:]
        unit_ids = file["units/id"][:]
        onsets = file["intervals/trials/move_onset_time"][:]
        electrode_rows = file["units/electrodes"][:]
        locations = file["general/extracellular_ephys/electrodes/location"].asstr()[:]
    assert trials.neuron_ids == tuple(unit_ids.tolist())
    assert trials.regions == tuple(locations[electrode_rows].tolist())  # one electrode per unit
    per_unit = np.split(flat, ends[:-1])
    for unit in (0, 50, 106):
        for b in (0, 99):
            edges = onsets[b] - 0.25 + np.arange(141) * 0.005
            np.testing.assert_array_equal(
                trials.spikes[b, :, unit], np.histogram(per_unit[unit], bins=edges)[0]
            )
    assert trials.spikes.sum() == flat.size  # the windows cover every spike of this split
    assert not lj.io.nwb_heldout_units(mc_maze_path).any()  # the test split holds none out


def test_mc_maze_small_window_past_the_trial_end(mc_maze_path):
    # Trials run 0.7 s from 0.25 s before movement onset, 0.1 s apart: 0.60 s after onset
    # reaches 0.1 s into the unrecorded gap, then 0.05 s into the next trial.
    trials = lj.io.load(mc_maze_path, bin_size=0.005, align="move_onset_time", window=(-0.25, 0.6))
    assert trials.shape == (100, 170, 107)
    np.testing.assert_array_equal(trials.mask, np.broadcast_to(np.arange(170) < 140, (100, 170)))
    assert not trials.spikes[:, 140:].any()  # neither the gap nor the next trial's spikes
    with h5py.File(mc_maze_path, "r") as file:
        flat = file["units/spike_times"][:]
        ends = file["units/spike_times_index"][:]
        onsets = file["intervals/trials/move_onset_time"][:]
    per_unit = np.split(flat, ends[:-1])
    for b in (0, 42, 98):
        edges = onsets[b] - 0.25 + np.arange(171) * 0.005
        counts = np.stack([np.histogram(t, bins=edges)[0] for t in per_unit], axis=1)
        assert counts[160:].sum() > 0  # the next trial does spike there
        np.testing.assert_array_equal(trials.spikes[b, :140], counts[:140])
    with pytest.raises(ValueError, match="`strict`.*outside the trial's start_time..stop_time"):
        lj.io.load(
            mc_maze_path, bin_size=0.005, align="move_onset_time", window=(-0.25, 0.6), strict=True
        )


def test_mc_maze_small_cut_into_trials_masks_the_gaps(mc_maze_path):
    with pytest.raises(ValueError, match="ignore_trials"):
        lj.io.load_nwb(mc_maze_path, bin_size=0.005, trial_length=1.0)
    trials = lj.io.load_nwb(mc_maze_path, bin_size=0.005, trial_length=1.0, ignore_trials=True)
    with h5py.File(mc_maze_path, "r") as file:
        flat = file["units/spike_times"][:]
        intervals = file["units/obs_intervals"][:]  # the same for every unit here: the trials
    lefts = (np.arange(trials.num_trials)[:, None] + np.arange(200) * 0.005)[..., None]
    observed = ((lefts >= intervals[:, 0] - 1e-9) & (lefts + 0.005 <= intervals[:, 1] + 1e-9)).any(
        -1
    )
    np.testing.assert_array_equal(trials.mask, observed)
    assert trials.spikes.sum() == np.sum(flat < trials.num_trials)  # every spike is in a trial


def test_pynapple_file_cut_into_trials():
    path = real_file("pynapple_a8604/A8604-211122.nwb")
    trials = lj.io.load_nwb(path, bin_size=0.05, trial_length=1.0)
    with h5py.File(path, "r") as file:
        flat = file["units/spike_times"][:]
        epoch_stop = file["intervals/epochs/stop_time"][:].max()
    assert trials.shape == (int(epoch_stop), 20, 3)
    assert trials.neuron_ids == (6, 191, 206)
    assert trials.spikes.sum() == np.sum(flat < int(epoch_stop))


def test_trials_without_the_align_event_are_dropped_with_a_warning(tmp_path, spike_times):
    path = write_nwb(tmp_path / "nan_onset.nwb", spike_times, behavior=False)
    with h5py.File(path, "r+") as file:
        file["intervals/trials/move_onset_time"][1] = np.nan
    with pytest.warns(UserWarning, match="dropped 1 trial"):
        trials = lj.io.load_nwb(path, bin_size=BIN, align="move_onset_time", window=(-0.3, 0.5))
    assert trials.num_trials == 3
    np.testing.assert_array_equal(
        trials.spikes[1, :, 0], histogram_counts(spike_times[0], MOVE_ONSETS[2] - 0.3, 8)
    )


def test_behavior_must_cover_the_trials(tmp_path, spike_times):
    path = write_nwb(tmp_path / "long.nwb", spike_times, trials=False, epochs=[(0.0, 12.0)])
    with pytest.raises(ValueError, match="'hand_vel' does not cover the trials"):
        lj.io.load_nwb(path, bin_size=BIN, trial_length=1.0)
    with pytest.raises(ValueError, match="exceeds the recording"):
        lj.io.load_nwb(path, bin_size=BIN, trial_length=20.0)
    assert lj.io.load_nwb(path, bin_size=BIN, trial_length=1.0, behavior=()).num_trials == 12
