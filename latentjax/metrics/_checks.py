"""Input checks shared by the metrics: host-side, before any computation.

Every metric reads NumPy or JAX arrays, converts them to float64 NumPy arrays here, and raises a
`ValueError` that names the function and the argument when a shape or value is wrong.
"""

from __future__ import annotations

import numpy as np


def as_array(function: str, name: str, value, ndim: int | None = None) -> np.ndarray:
    """`value` as a float64 array, checking its rank when `ndim` is given."""
    try:
        if np.iscomplexobj(value):
            raise TypeError("complex values")
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{function}: `{name}` must be a real numeric array ({err}), got {value!r}"
        ) from err
    if ndim is not None and array.ndim != ndim:
        raise ValueError(
            f"{function}: `{name}` must have {ndim} dimensions, got shape {array.shape}"
        )
    if 0 in array.shape:
        raise ValueError(f"{function}: `{name}` has an empty axis, shape {array.shape}")
    return array


def as_number(function: str, name: str, value) -> float:
    """`value` as a float (NaN and Inf pass: the caller checks the range)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{function}: `{name}` must be a number, got {value!r}")
    return float(value)


def check_same_shape(function: str, names: tuple[str, str], a, b, axes: int | None = None):
    """Raise unless `a` and `b` agree in shape (on their first `axes` axes, when given)."""
    shape_a, shape_b = np.shape(a)[:axes], np.shape(b)[:axes]
    if shape_a != shape_b:
        what = "shape" if axes is None else f"first {axes} axes"
        raise ValueError(
            f"{function}: `{names[0]}` and `{names[1]}` must agree in {what}, "
            f"got {np.shape(a)} and {np.shape(b)}"
        )


def observed_bins(function: str, mask, shape: tuple[int, ...]) -> np.ndarray:
    """The bool mask of observed bins, of shape `shape` (all True when `mask` is None)."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(
            f"{function}: `mask` must have shape {tuple(shape)} (the leading axes of the data, "
            f"[trials, time]), got {mask.shape}"
        )
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{function}: `mask` must be boolean (True where observed)")
        mask = mask.astype(bool)
    return mask


def check_finite_where(function: str, name: str, array: np.ndarray, where: np.ndarray) -> None:
    """Raise if `array` holds NaN or Inf in the evaluated entries `where`."""
    bad = ~np.isfinite(array) & where
    if bad.any():
        raise ValueError(
            f"{function}: `{name}` holds {int(bad.sum())} NaN or Inf value(s) in evaluated bins"
        )


def trial_indices(function: str, name: str, index, num_trials: int) -> np.ndarray:
    """Trial indices (ints, a slice or a bool mask over trials) as a non-empty int array."""
    try:
        selected = np.arange(num_trials)[index]
    except (IndexError, TypeError, ValueError) as err:
        raise ValueError(
            f"{function}: `{name}` must index trials (0..{num_trials - 1}), got {index!r}"
        ) from err
    selected = np.atleast_1d(selected)
    if selected.size == 0:
        raise ValueError(f"{function}: `{name}` selects no trial")
    return selected


def split_trials(function: str, num_trials: int, train_fraction: float, seed: int):
    """A seeded random split of trial indices into (train, test), both non-empty."""
    if not 0 < as_number(function, "train_fraction", train_fraction) < 1:
        raise ValueError(f"{function}: `train_fraction` must be in (0, 1), got {train_fraction}")
    if num_trials < 2:
        raise ValueError(
            f"{function}: a train/test split needs at least 2 trials, got {num_trials}"
        )
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{function}: `seed` must be an int >= 0, got {seed!r}")
    order = np.random.default_rng(seed).permutation(num_trials)
    num_train = int(np.clip(round(train_fraction * num_trials), 1, num_trials - 1))
    return np.sort(order[:num_train]), np.sort(order[num_train:])
