"""Reading NWB files in the Neural Latents Benchmark layout into `Trials`.

What is read (with `pynwb`):
- `units`: the spike times of each unit, counted in bins of `bin_size` seconds; bins are
  half-open, `[left, left + bin_size)`. The unit ids become `neuron_ids`.
- `trials`: one trial per row, from `start_time` to `stop_time` (the partial last bin is
  dropped; shorter trials are padded and `mask` is False on the padding), or a fixed `window`
  around the column named by `align` (e.g. `move_onset_time`). Files without a trials table
  load as one continuous stream, a one-trial `Trials` over the epochs table if there is one,
  else from 0 to the end of the recording (`lj.data.chop` cuts it into overlapping windows),
  or are cut into consecutive trials of `trial_length` seconds; on a file with a trials
  table `trial_length` needs `ignore_trials=True`.
- what was recorded: a bin is kept (`mask` True) only when it lies inside its trial's
  `start_time`..`stop_time` (a `window` that runs past them does not reach into the gap or the
  next trial) and inside the `obs_intervals` of every unit (when the units table has them).
  Other bins have `mask` False and zero counts; `strict=True` refuses them instead.
- behaviour: `TimeSeries` found anywhere in the file by name (NLB: `hand_vel` in
  `processing/behavior`), linearly interpolated at the bin centres into `behavior`.
- regions: from a `region` or `location` column of the units table, else through each unit's
  first electrode (the electrodes table's `location`, else its group name, with an
  `electrode_group_` prefix dropped), else through a units `electrode_group` column.
- held-out units (NLB `heldout` column): `nwb_heldout_units(path)` gives the boolean mask in
  the order of the loaded neurons, to pass to `lj.data.heldout_neurons(trials, neurons=mask)`.

`times` of each trial count seconds from its reference: the `align` event when aligned, else
the trial start; they are the left edges of the bins.

Check the regions you get: in the NLB MC_Maze files the units' electrode links ignore the
array (every unit links to an electrode of the PMd group), while the first digit of the unit id
names the array; pass `regions=` (one label per unit, or a units column name) to override.

Examples:
  The NLB MC_Maze_Small file (DANDI:000140; the examples need it, so doctests skip them):

  >>> import latentjax as lj
  >>> trials = lj.io.load_nwb("sub-Jenkins_ses-small_desc-test_ecephys.nwb", bin_size=0.005,
  ...                         align="move_onset_time", window=(-0.25, 0.45))  # doctest: +SKIP
  >>> trials.shape                                                              # doctest: +SKIP
  (100, 140, 107)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from latentjax.data.trials import Trials

__all__ = ["load_nwb", "nwb_heldout_units"]

# Relative slack when counting whole bins in a duration (0.7 / 0.005 is 139.99999999999997).
_BIN_SLACK = 1e-6
_AUTO_BEHAVIOR = ("hand_vel",)
_GROUP_PREFIX = "electrode_group_"
_SPAN = ("start_time", "stop_time")


def load_nwb(
    path,
    *,
    bin_size: float,
    align: str | None = None,
    window: tuple[float, float] | None = None,
    trial_length: float | None = None,
    behavior: str | Sequence[str] | None = None,
    regions: str | Sequence | None = None,
    strict: bool = False,
    ignore_trials: bool = False,
) -> Trials:
    """Bin the spikes of an NWB file into `Trials` `[trials, time, units]`.

    Args:
      path: an NWB file.
      bin_size: seconds per bin (> 0); becomes `dt`.
      align: a column of the trials table (e.g. `"move_onset_time"`); with `window`, every
        trial is the fixed window around that event. Trials whose event is NaN are dropped
        with a warning.
      window: `(before, after)` seconds around the `align` event, e.g. `(-0.25, 0.45)`.
      trial_length: seconds per trial when cutting the recording into consecutive trials
        (a file with a trials table needs `ignore_trials`); without it a file with no
        trials table loads as one stream `[1, time, units]`.
      behavior: names of `TimeSeries` to read into `behavior` `[trials, time, dims]`
        (their columns concatenated); default: `hand_vel` when the file has it; `()` for none.
      regions: region labels of the units: default from the file (see the module docstring);
        a units-table column name, or one label per unit.
      strict: refuse (ValueError) a trial with a bin outside its trial's start..stop or the
        units' `obs_intervals`, instead of masking that bin.
      ignore_trials: with `trial_length`, cut the recording into consecutive trials although
        the file has a trials table (the units' `obs_intervals` still mask the gaps).

    Returns:
      `Trials` with `spikes` int32 counts `[trials, time, units]`, `dt = bin_size`, `mask`,
      `times`, `neuron_ids` (unit ids), `regions` and `behavior` where available.
    """
    pynwb = _import_pynwb()
    bin_size = _positive_seconds("bin_size", bin_size)
    for name, flag in (("strict", strict), ("ignore_trials", ignore_trials)):
        if not isinstance(flag, bool | np.bool_):
            raise ValueError(f"load_nwb: `{name}` must be True or False, got {flag!r}")
    if trial_length is not None:
        trial_length = _positive_seconds("trial_length", trial_length)
        if align is not None or window is not None:
            raise ValueError("load_nwb: give either `trial_length` or `align` and `window`")
    elif ignore_trials:
        raise ValueError("load_nwb: `ignore_trials` goes with `trial_length`")
    if (align is None) != (window is None):
        raise ValueError(
            "load_nwb: `align` and `window` go together, e.g. "
            "align='move_onset_time', window=(-0.25, 0.45)"
        )
    if window is not None:
        window = _check_window(window)

    with _open(path, pynwb) as nwb:
        unit_ids, spike_times = _read_units(nwb)
        recording_end = _recording_end(nwb, spike_times)
        spans = None  # the [start, stop] `[trials, 2]` of the trial each window belongs to
        if trial_length is not None:
            if nwb.trials is not None and len(nwb.trials) and not ignore_trials:
                raise ValueError(
                    f"load_nwb: {str(path)!r} has a trials table; `trial_length` would cut "
                    "across its trials and the gaps between them: load the trials (drop "
                    "`trial_length`), or pass `ignore_trials=True` to cut the recording anyway"
                )
            starts, durations, references = _tile_recording(nwb, trial_length, recording_end)
            row_ids = np.arange(len(starts))
        elif nwb.trials is None:
            if align is not None:
                raise ValueError(
                    f"load_nwb: {str(path)!r} has no trials table to align on (`align`); "
                    "load it as one stream (no `align`/`window`) or pass `trial_length`"
                )
            span_start, span_stop = _recording_span(nwb, recording_end)
            starts, durations = np.array([span_start]), np.array([span_stop - span_start])
            references, row_ids = starts, np.arange(1)
        elif align is not None:
            starts, durations, references, spans, row_ids = _aligned_windows(
                nwb.trials, align, window
            )
        else:
            starts, durations, references, row_ids = _trial_rows(nwb.trials)
            spans = np.stack([starts, starts + durations], axis=1)
        num_bins = np.floor(durations / bin_size + _BIN_SLACK).astype(int)
        if num_bins.min() < 1:
            raise ValueError(
                f"load_nwb: trial {int(np.argmin(num_bins))} is shorter than one bin "
                f"({durations.min():g} s < bin_size {bin_size:g} s)"
            )
        edges = starts[:, None] + np.arange(num_bins.max() + 1) * bin_size
        requested = np.arange(num_bins.max()) < num_bins[:, None]
        in_trial, observed = _recorded_bins(edges, spans, _read_obs_intervals(nwb.units))
        if strict:
            _refuse_unrecorded(requested, in_trial, observed, edges, row_ids, trial_length)
        mask = requested & in_trial & observed
        empty = ~mask.any(axis=1)
        if empty.any():
            raise ValueError(
                f"load_nwb: trial {int(np.argmax(empty))} has no recorded bin (all outside its "
                "trial's start_time..stop_time or the units' obs_intervals); check `window`"
            )
        spikes = _bin_counts(spike_times, edges)
        spikes[~mask] = 0
        times = edges[:, :-1] - references[:, None]
        centres = edges[:, :-1] + bin_size / 2
        behavior_values = _read_behavior(nwb, behavior, centres, mask)
        labels = _unit_regions(nwb, regions, len(unit_ids))

    return Trials(
        spikes,
        bin_size,
        times=times,
        mask=mask,
        behavior=behavior_values,
        regions=labels,
        neuron_ids=unit_ids,
    )


def nwb_heldout_units(path) -> np.ndarray:
    """The NLB `heldout` column of the units table: bool `[units]`, in the order of `load_nwb`.

    Examples:
      On an NLB training file (skipped by doctests: it needs the file):

      >>> mask = lj.io.nwb_heldout_units(path)                            # doctest: +SKIP
      >>> heldin, heldout = lj.data.heldout_neurons(trials, neurons=mask)  # doctest: +SKIP
    """
    with _open(path, _import_pynwb()) as nwb:
        if nwb.units is None:
            raise ValueError(f"nwb_heldout_units: {str(path)!r} has no units table")
        if "heldout" not in nwb.units.colnames:
            raise ValueError(
                f"nwb_heldout_units: the units table of {str(path)!r} has no `heldout` column; "
                f"its columns are {list(nwb.units.colnames)}"
            )
        return np.asarray(nwb.units["heldout"].data[:], dtype=bool)


def _import_pynwb():
    # Imported on first use: pynwb takes a while to import and most sessions read no NWB.
    import pynwb

    return pynwb


@contextlib.contextmanager
def _open(path, pynwb):
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"load_nwb: no such file {str(path)!r}")
    try:
        io = pynwb.NWBHDF5IO(str(path), "r")
        nwb = io.read()
    except Exception as err:  # h5py and hdmf raise many kinds for unreadable files
        raise ValueError(f"load_nwb: cannot read {str(path)!r} as NWB: {err}") from err
    try:
        yield nwb
    finally:
        io.close()


def _positive_seconds(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"load_nwb: `{name}` must be a number of seconds, got {value!r}") from err
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"load_nwb: `{name}` must be a positive number of seconds, got {value}")
    return value


def _check_window(window) -> tuple[float, float]:
    try:
        before, after = (float(w) for w in window)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"load_nwb: `window` must be (before, after) in seconds, got {window!r}"
        ) from err
    if not (np.isfinite(before) and np.isfinite(after) and before < after):
        raise ValueError(f"load_nwb: `window` must satisfy before < after, got {window!r}")
    return before, after


def _read_units(nwb) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unit ids `[units]` and each unit's sorted spike times, validated."""
    units = nwb.units
    if units is None or len(units) == 0:
        raise ValueError("load_nwb: the file has no units table (or it is empty)")
    if "spike_times" not in units.colnames:
        raise ValueError(
            f"load_nwb: the units table has no `spike_times` column; "
            f"its columns are {list(units.colnames)}"
        )
    unit_ids = np.asarray(units.id[:])
    flat = np.asarray(units.spike_times.data[:], dtype=np.float64)
    ends = np.asarray(units.spike_times_index.data[:], dtype=np.int64)
    spike_times = [np.sort(t) for t in np.split(flat, ends[:-1])]
    for unit_id, times in zip(unit_ids, spike_times, strict=True):
        if times.size and (not np.isfinite(times).all() or times[0] < 0):
            raise ValueError(
                f"load_nwb: units.spike_times of unit {unit_id} holds times outside the session "
                f"(negative, NaN or Inf; first {times[0]:g} s)"
            )
    return unit_ids, spike_times


def _recording_end(nwb, spike_times: list[np.ndarray]) -> float:
    """The last time the file covers: its last spike, trial or epoch stop."""
    ends = [t[-1] for t in spike_times if t.size]
    for table in (nwb.trials, nwb.epochs):
        if table is not None and len(table):
            ends.append(float(np.max(table["stop_time"].data[:])))
    return max(ends, default=0.0)


def _trial_rows(trials) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Starts, durations and time references `[trials]` of the rows of the trials table."""
    if len(trials) == 0:
        raise ValueError("load_nwb: the trials table is empty")
    starts = np.asarray(trials["start_time"].data[:], dtype=np.float64)
    stops = np.asarray(trials["stop_time"].data[:], dtype=np.float64)
    bad = ~(stops > starts)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"load_nwb: trials row id {trials.id[row]} stops before it starts "
            f"(start_time {starts[row]:g} s, stop_time {stops[row]:g} s)"
        )
    if starts.min() < 0:
        raise ValueError("load_nwb: the trials table holds a negative start_time")
    return starts, stops - starts, starts, np.asarray(trials.id[:])


def _aligned_windows(trials, align: str, window):
    """Fixed windows `[event + before, event + after)` around the `align` column."""
    if align not in trials.colnames:
        raise ValueError(
            f"load_nwb: the trials table has no column {align!r} to align on; "
            f"its columns are {list(trials.colnames)}"
        )
    events = np.asarray(trials[align].data[:], dtype=np.float64)
    missing = np.isnan(events)
    if missing.all():
        raise ValueError(f"load_nwb: trials.{align} is NaN in every trial")
    if missing.any():
        warnings.warn(
            f"load_nwb: dropped {int(missing.sum())} trial(s) whose {align} is NaN", stacklevel=3
        )
    row_ids = np.asarray(trials.id[:])[~missing]
    events = events[~missing]
    spans = np.stack(
        [np.asarray(trials[column].data[:], dtype=np.float64)[~missing] for column in _SPAN],
        axis=1,
    )
    before, after = window
    return events + before, np.full(events.shape, after - before), events, spans, row_ids


def _recording_span(nwb, recording_end: float) -> tuple[float, float]:
    """(start, stop) seconds of the recording: over the epochs, or 0..recording end."""
    if nwb.epochs is not None and len(nwb.epochs):
        return (
            float(np.min(nwb.epochs["start_time"].data[:])),
            float(np.max(nwb.epochs["stop_time"].data[:])),
        )
    return 0.0, recording_end


def _tile_recording(nwb, trial_length: float, recording_end: float):
    """Consecutive trials of `trial_length` seconds over the epochs, or 0..recording end."""
    span_start, span_stop = _recording_span(nwb, recording_end)
    num_trials = int(np.floor((span_stop - span_start) / trial_length + _BIN_SLACK))
    if num_trials < 1:
        raise ValueError(
            f"load_nwb: `trial_length` {trial_length:g} s exceeds the recording "
            f"({span_stop - span_start:g} s)"
        )
    starts = span_start + np.arange(num_trials) * trial_length
    return starts, np.full(num_trials, trial_length), starts


def _read_obs_intervals(units) -> list[np.ndarray] | None:
    """Each unit's merged, sorted observation intervals `[k, 2]`; None without the column."""
    if "obs_intervals" not in units.colnames:
        return None
    flat = np.asarray(units.obs_intervals.data[:], dtype=np.float64).reshape(-1, 2)
    ends = np.asarray(units.obs_intervals_index.data[:], dtype=np.int64)
    return [_merge(intervals) for intervals in np.split(flat, ends[:-1])]


def _merge(intervals: np.ndarray) -> np.ndarray:
    """Sorted, non-overlapping union of `intervals` `[k, 2]`."""
    merged: list[list[float]] = []
    for start, stop in intervals[np.argsort(intervals[:, 0])]:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return np.asarray(merged, dtype=np.float64).reshape(-1, 2)


def _recorded_bins(edges: np.ndarray, spans, obs_intervals) -> tuple[np.ndarray, np.ndarray]:
    """Whether each bin `[trials, time]` lies inside its trial's span, and inside the
    observation intervals of every unit."""
    lefts, rights = edges[:, :-1], edges[:, 1:]
    slack = _BIN_SLACK * float(np.min(rights - lefts))
    in_trial = np.ones(lefts.shape, dtype=bool)
    if spans is not None:
        in_trial = (lefts >= spans[:, :1] - slack) & (rights <= spans[:, 1:] + slack)
    observed = np.ones(lefts.shape, dtype=bool)
    units = [intervals for intervals in obs_intervals or () if len(intervals)]  # [] : unknown
    unique = {intervals.tobytes(): intervals for intervals in units}
    for intervals in unique.values():
        row = np.searchsorted(intervals[:, 0], lefts + slack, side="right") - 1
        inside = intervals[np.maximum(row, 0), 1] >= rights - slack
        observed &= (row >= 0) & inside
    return in_trial, observed


def _refuse_unrecorded(requested, in_trial, observed, edges, row_ids, trial_length) -> None:
    """`strict`: a ValueError naming the first trial with a requested bin not recorded."""
    bad = requested & ~(in_trial & observed)
    if not bad.any():
        return
    trial, step = np.argwhere(bad)[0]
    where = f"trial {trial}" if trial_length is not None else f"trials row id {row_ids[trial]}"
    reason = (
        "outside the trial's start_time..stop_time"
        if not in_trial[trial, step]
        else "outside the units' obs_intervals"
    )
    raise ValueError(
        f"load_nwb: `strict`: {int(bad.sum())} bin(s) were not recorded; the first, "
        f"{edges[trial, step]:g}..{edges[trial, step + 1]:g} s of {where}, lies {reason} "
        "(pass strict=False to mask them, or choose a shorter `window`)"
    )


def _bin_counts(spike_times: list[np.ndarray], edges: np.ndarray) -> np.ndarray:
    """Spike counts int32 `[trials, time, units]` in the bins between `edges` `[trials, time+1]`."""
    counts = np.empty(edges.shape[:1] + (edges.shape[1] - 1, len(spike_times)), dtype=np.int32)
    for unit, times in enumerate(spike_times):
        counts[:, :, unit] = np.diff(np.searchsorted(times, edges, side="left"), axis=1)
    return counts


def _read_behavior(nwb, behavior, centres: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Named `TimeSeries` interpolated at bin `centres` `[trials, time]`: `[trials, time, D]`."""
    if behavior is None:
        names = [name for name in _AUTO_BEHAVIOR if _find_series(nwb, name)]
    elif isinstance(behavior, str):
        names = [behavior]
    else:
        names = list(behavior)
    columns = []
    for name in names:
        found = _find_series(nwb, name)
        if not found:
            raise ValueError(f"load_nwb: the file has no TimeSeries named {name!r} (`behavior`)")
        if len(found) > 1:
            raise ValueError(f"load_nwb: several TimeSeries are named {name!r}; rename them")
        columns.append(_interpolate(found[0], centres, mask))
    if not columns:
        return None
    return np.concatenate(columns, axis=-1).astype(np.float32)


def _find_series(nwb, name: str) -> list:
    from pynwb import TimeSeries

    return [obj for obj in nwb.objects.values() if isinstance(obj, TimeSeries) and obj.name == name]


def _interpolate(series, centres: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Linear interpolation of each column of `series` at `centres`, over its finite samples."""
    stamps = np.asarray(series.get_timestamps(), dtype=np.float64)
    values = np.asarray(series.data[:], dtype=np.float64).reshape(len(stamps), -1)
    result = np.zeros(centres.shape + values.shape[1:])
    wanted = centres[mask]
    for column in range(values.shape[1]):
        finite = np.isfinite(values[:, column])
        known = stamps[finite]
        if known.size < 2 or wanted.min() < known[0] or wanted.max() > known[-1]:
            raise ValueError(
                f"load_nwb: TimeSeries {series.name!r} does not cover the trials "
                f"(column {column} is finite over {known[:1]}..{known[-1:]} s, bins span "
                f"{wanted.min():g}..{wanted.max():g} s)"
            )
        result[mask, column] = np.interp(wanted, known, values[finite, column])
    return result


def _unit_regions(nwb, regions, num_units: int) -> tuple | None:
    """One region label per unit: from `regions`, or from the file (see the module docstring)."""
    units = nwb.units
    if isinstance(regions, str):
        if regions not in units.colnames:
            raise ValueError(
                f"load_nwb: `regions` names no column of the units table: {regions!r}; "
                f"its columns are {list(units.colnames)}"
            )
        return tuple(str(label) for label in units[regions].data[:])
    if regions is not None:
        labels = tuple(np.asarray(regions).tolist())
        if len(labels) != num_units:
            raise ValueError(
                f"load_nwb: `regions` must give one label per unit ({num_units}), got {len(labels)}"
            )
        return labels
    for column in ("region", "location"):
        if column in units.colnames:
            labels = tuple(_text(label) for label in units[column].data[:])
            if any(labels):
                return labels
    if "electrodes" in units.colnames and nwb.electrodes is not None:
        return _regions_from_electrodes(nwb)
    if "electrode_group" in units.colnames:
        return tuple(_group_label(group) for group in units["electrode_group"].data[:])
    return None


def _regions_from_electrodes(nwb) -> tuple:
    """The region of each unit's first electrode: its `location`, else its group's label."""
    units, electrodes = nwb.units, nwb.electrodes
    rows = np.asarray(units.electrodes.data[:], dtype=np.int64)
    ends = np.asarray(units.electrodes_index.data[:], dtype=np.int64)
    firsts = np.concatenate([[0], ends[:-1]])
    locations = (
        [_text(v) for v in electrodes["location"].data[:]]
        if "location" in electrodes.colnames
        else [""] * len(electrodes)
    )
    groups = [_group_label(g) for g in electrodes["group"].data[:]]
    labels = []
    for first, end in zip(firsts, ends, strict=True):
        if first == end:
            raise ValueError("load_nwb: a unit of the units table links to no electrode")
        row = rows[first]
        labels.append(locations[row] or groups[row])
    return tuple(labels)


def _group_label(group) -> str:
    return group.location or group.name.removeprefix(_GROUP_PREFIX)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
