"""Reading and writing `Trials`: `.npz` files (exact round trip) and NWB files (NLB layout).

`save(trials, path)` writes every field of a `Trials` to a `.npz` file, without pickle: string
labels (regions, neuron ids, condition names) are stored as unicode arrays. `load(path)` reads
it back, or dispatches `.nwb` files to `load_nwb`.

A hand-made `.npz` file loads too: only `spikes` `[trials, time, neurons]` and `dt` (seconds
per bin) are required; the other fields take their `Trials` defaults.

Examples:
  >>> import numpy as np, latentjax as lj
  >>> trials = lj.Trials(np.ones((2, 5, 3), dtype=np.int32), dt=0.01, regions=["M1"] * 3)
  >>> lj.io.save(trials, "session.npz")
  >>> lj.io.load("session.npz").regions
  ('M1', 'M1', 'M1')
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from latentjax.data.nwb import load_nwb, nwb_heldout_units
from latentjax.data.trials import Trials

__all__ = ["load", "load_csv", "load_nwb", "nwb_heldout_units", "save"]

_REQUIRED = ("spikes", "dt")
_LABELS = ("condition_names", "regions", "neuron_ids")
_OPTIONAL = (
    "times",
    "mask",
    "behavior",
    "conditions",
    "condition_names",
    "regions",
    "neuron_ids",
    "continuous",
)


def save(trials: Trials, path) -> None:
    """Write `trials` to a `.npz` file; `load(path)` gives back equal fields and dtypes.

    Args:
      trials: the `Trials` to write.
      path: destination ending in `.npz`; written atomically (a temporary file, then a rename).
    """
    if not isinstance(trials, Trials):
        raise ValueError(f"save: `trials` must be a Trials, got {type(trials).__name__}")
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"save: `path` must end in .npz, got {str(path)!r}")
    arrays = {"dt": np.asarray(trials.dt), "continuous": np.asarray(trials.continuous)}
    for name, value in trials.fields().items():
        if name in arrays or value is None:
            continue
        array = np.asarray(value)
        if array.dtype == object:
            raise ValueError(
                f"save: `{name}` holds values that need pickle to store (dtype object); "
                "use strings or numbers"
            )
        arrays[name] = array
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, **arrays)
    os.replace(partial, path)


def load(path, **nwb_options) -> Trials:
    """Read `Trials` from a `.npz` file (written by `save`) or an NWB file (`load_nwb`).

    Args:
      path: a `.npz` or `.nwb` file.
      **nwb_options: keyword arguments of `load_nwb` (`bin_size` is required for `.nwb`).
    """
    path = Path(path)
    if path.suffix == ".nwb":
        if "bin_size" not in nwb_options:
            raise ValueError(
                f"load: reading the NWB file {str(path)!r} needs `bin_size` (seconds per bin), "
                "e.g. lj.io.load(path, bin_size=0.005)"
            )
        return load_nwb(path, **nwb_options)
    if nwb_options:
        raise ValueError(
            f"load: options {sorted(nwb_options)} apply to .nwb files only, not {str(path)!r}"
        )
    if path.suffix != ".npz":
        raise ValueError(f"load: `path` must end in .npz or .nwb, got {str(path)!r}")
    return _load_npz(path)


def load_csv(
    path,
    *,
    bin_size: float,
    time_column: str = "timestamp",
    unit_prefix: str = "unit_",
    behavior=("hand_vel_x", "hand_vel_y"),
) -> Trials:
    """Read a continuous recording stored one row per sample (e.g. 1 ms) as a stream.

    The layout of `shared/data/mc_maze_two_trials`: a column of times in seconds, one 0/1
    (or count) column per unit, and behaviour columns. Rows are grouped into bins of
    `bin_size` (a whole number of rows; the partial last bin is dropped): spikes are summed,
    behaviour averaged.

    Args:
      path: a `.csv` file with a header row.
      bin_size: seconds per bin; a whole multiple of the rows' sampling interval.
      time_column: the column of sample times (seconds, regular).
      unit_prefix: columns whose names start with it are units (their name, less the
        prefix, becomes the neuron id).
      behavior: columns read into `behavior` (`()` for none).

    Returns:
      A one-trial `Trials` `[1, bins, units]` (a stream; `lj.data.chop` cuts it into windows)
      with `times` from 0, `neuron_ids`, and `behavior` `[1, bins, len(behavior)]`.

    Examples:
      >>> import latentjax as lj
      >>> stream = lj.io.load_csv("trial_748_data.csv", bin_size=0.02)  # doctest: +SKIP
      >>> stream.shape                                                  # doctest: +SKIP
      (1, 161, 182)
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"load_csv: no such file {str(path)!r}")
    with path.open() as handle:
        header = handle.readline().strip().split(",")
    values = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    if time_column not in header:
        raise ValueError(f"load_csv: no column `time_column` {time_column!r} in {str(path)!r}")
    behavior = [behavior] if isinstance(behavior, str) else list(behavior)
    missing = [name for name in behavior if name not in header]
    if missing:
        raise ValueError(f"load_csv: `behavior` columns {missing} are not in {str(path)!r}")
    units = [i for i, name in enumerate(header) if name.startswith(unit_prefix)]
    if not units:
        raise ValueError(f"load_csv: no column starts with `unit_prefix` {unit_prefix!r}")
    times = values[:, header.index(time_column)]
    step = float(np.median(np.diff(times)))
    rows = bin_size / step
    if not np.isclose(rows, round(rows), rtol=1e-6) or round(rows) < 1:
        raise ValueError(
            f"load_csv: `bin_size` {bin_size:g} s must be a whole multiple of the sampling "
            f"interval {step:g} s"
        )
    rows = round(rows)
    num_bins = len(values) // rows
    if num_bins < 1:
        raise ValueError(f"load_csv: the recording is shorter than one bin ({bin_size:g} s)")
    binned = values[: num_bins * rows].reshape(num_bins, rows, -1)
    spikes = np.rint(binned[:, :, units].sum(1)).astype(np.int32)
    columns = [header.index(name) for name in behavior]
    return Trials(
        spikes[None],
        bin_size,
        behavior=binned[:, :, columns].mean(1)[None] if columns else None,
        neuron_ids=[header[i][len(unit_prefix) :] for i in units],
    )


def _load_npz(path: Path) -> Trials:
    if not path.is_file():
        raise ValueError(f"load: no such file {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            stored = {name: archive[name] for name in archive.files}
    except (EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"load: {str(path)!r} is not a readable .npz archive (empty, truncated or another "
            f"format: {' '.join(str(err).split())})"
        ) from err
    for name in _REQUIRED:
        if name not in stored:
            raise ValueError(f"load: {str(path)!r} has no `{name}` array (required)")
    unknown = sorted(set(stored) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ValueError(
            f"load: {str(path)!r} holds arrays {unknown} that are not Trials fields; "
            f"known fields are {list(_REQUIRED + _OPTIONAL)}"
        )
    for name in ("dt", "continuous"):
        if name in stored:
            if stored[name].ndim != 0:
                raise ValueError(f"load: `{name}` in {str(path)!r} must be a scalar")
            stored[name] = stored[name].item()
    for name in _LABELS:  # back to Python str / int labels, as Trials holds them
        if name in stored:
            stored[name] = stored[name].tolist()
    return Trials(**stored)
