"""`Trials`: the one data type every family, metric and geometry tool reads.

A batch of trials of binned population activity, trials first, then time:
`spikes` `[trials, time, neurons]`. Padding plus a boolean `mask` `[trials, time]` carries
variable-length trials and missing bins; `times` `[trials, time]` carries irregular sampling.

`Trials` is a registered JAX pytree whose leaves are the array fields (`spikes`, `times`,
`mask`, `behavior`, `conditions`); `dt`, `regions`, `neuron_ids`, `continuous` and
`condition_names` are static. Construction validates on the host, before any compilation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

__all__ = ["Trials"]

_LEAVES = ("spikes", "times", "mask", "behavior", "conditions")
_STATIC = ("dt", "regions", "neuron_ids", "continuous", "condition_names")


def _as_array(name: str, value: Any, dtype=None) -> np.ndarray:
    """`value` as an array, a ragged or non-numeric one (for `dtype`) raising a ValueError."""
    try:
        if dtype is not None and np.iscomplexobj(value):
            raise TypeError("complex values")
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Trials: `{name}` must be a (rectangular) array: {err}") from err


def _as_float_array(name: str, value: Any, ndim: int) -> np.ndarray:
    array = _as_array(name, value)
    if array.ndim != ndim:
        raise ValueError(f"Trials: `{name}` must have {ndim} dimensions, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"Trials: `{name}` must be numeric, got dtype {array.dtype}")
    if 0 in array.shape:
        raise ValueError(f"Trials: `{name}` has an empty axis, shape {array.shape}")
    return array


def _check_finite(name: str, array: np.ndarray, observed: np.ndarray) -> None:
    bad = ~np.isfinite(array) & observed
    if bad.any():
        where = tuple(int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"Trials: `{name}` holds {int(bad.sum())} NaN or Inf value(s) in observed bins "
            f"(first at index {where}); mark missing bins with `mask` instead"
        )


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Trials:
    """Binned population activity of many trials.

    Args:
      spikes: `[trials, time, neurons]` spike counts (ints, or floats holding counts); with
        `continuous=True`, any finite signal (calcium, LFP features).
      dt: seconds per bin (> 0).
      times: `[trials, time]` seconds of each bin, strictly increasing where observed;
        default `arange(time) * dt` for every trial.
      mask: `[trials, time]` bool, True where a bin is observed; default all True. Values in
        unobserved bins are ignored everywhere (NaN there is replaced by 0).
      behavior: `[trials, time, dims]` behaviour aligned to the bins (e.g. hand velocity).
      regions: `[neurons]` region label of each neuron (strings or ints).
      conditions: `[trials]` condition label of each trial; strings are stored as integer codes
        with the labels in `condition_names`.
      neuron_ids: `[neurons]` identifier of each neuron (e.g. NWB unit ids).
      continuous: `spikes` holds continuous signals rather than counts.

    Examples:
      >>> import numpy as np, latentjax as lj
      >>> trials = lj.Trials(np.zeros((4, 50, 10)), dt=0.01)
      >>> trials[:2].spikes.shape
      (2, 50, 10)
    """

    spikes: np.ndarray
    times: np.ndarray
    mask: np.ndarray
    behavior: np.ndarray | None
    conditions: np.ndarray | None
    dt: float
    regions: tuple | None
    neuron_ids: tuple | None
    continuous: bool
    condition_names: tuple | None

    def __init__(
        self,
        spikes,
        dt,
        *,
        times=None,
        mask=None,
        behavior=None,
        regions=None,
        conditions=None,
        neuron_ids=None,
        continuous=False,
        condition_names=None,
    ):
        spikes = _as_float_array("spikes", spikes, 3)
        num_trials, num_bins, num_neurons = spikes.shape
        try:
            dt = float(dt)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Trials: `dt` must be a number of seconds, got {dt!r}") from err
        if not np.isfinite(dt) or dt <= 0:
            raise ValueError(f"Trials: `dt` must be a positive number of seconds, got {dt}")

        if mask is None:
            mask = np.ones((num_trials, num_bins), dtype=bool)
        else:
            mask = _as_array("mask", mask)
            if mask.shape != (num_trials, num_bins):
                raise ValueError(
                    f"Trials: `mask` must have shape [trials, time] = {(num_trials, num_bins)}, "
                    f"got {mask.shape}"
                )
            if mask.dtype != bool:
                if not np.isin(mask, (0, 1)).all():
                    raise ValueError("Trials: `mask` must be boolean (True where observed)")
                mask = mask.astype(bool)

        observed = mask[:, :, None]
        _check_finite("spikes", spikes, observed)
        if not (observed.all()):
            spikes = np.where(observed, spikes, 0).astype(spikes.dtype)
        if not continuous:
            if (spikes < 0).any():
                raise ValueError(
                    "Trials: `spikes` holds negative counts; pass continuous=True for signals "
                    "that are not spike counts"
                )
            if spikes.dtype.kind == "f" and not np.all(spikes == np.round(spikes)):
                raise ValueError(
                    "Trials: `spikes` holds non-integer values; counts must be whole numbers "
                    "(pass continuous=True for continuous signals)"
                )

        if times is None:
            times = np.broadcast_to(np.arange(num_bins) * dt, (num_trials, num_bins)).copy()
        else:
            times = _as_array("times", times, dtype=np.float64)
            if times.ndim == 1 and times.shape == (num_bins,):
                times = np.broadcast_to(times, (num_trials, num_bins)).copy()
            if times.shape != (num_trials, num_bins):
                raise ValueError(
                    f"Trials: `times` must have shape [trials, time] = {(num_trials, num_bins)}, "
                    f"got {times.shape}"
                )
            _check_finite("times", times, mask)
            times = np.where(mask, times, 0.0) if not mask.all() else times
            for b in range(num_trials):
                observed_times = times[b][mask[b]]
                if np.any(np.diff(observed_times) <= 0):
                    raise ValueError(
                        f"Trials: `times` must be strictly increasing over observed bins; "
                        f"trial {b} is not"
                    )

        if behavior is not None:
            behavior = _as_float_array("behavior", behavior, 3)
            if behavior.shape[:2] != (num_trials, num_bins):
                raise ValueError(
                    f"Trials: `behavior` must have shape [trials, time, dims] with trials, time = "
                    f"{(num_trials, num_bins)}, got {behavior.shape}"
                )
            _check_finite("behavior", behavior, observed)

        for field, labels in (("regions", regions), ("neuron_ids", neuron_ids)):
            if isinstance(labels, (str, bytes)) or (labels is not None and np.ndim(labels) != 1):
                raise ValueError(
                    f"Trials: `{field}` must be a sequence with one label per neuron, "
                    f"got {labels!r}"
                )
        if regions is not None:
            regions = tuple(np.asarray(regions).tolist())
            if len(regions) != num_neurons:
                raise ValueError(
                    f"Trials: `regions` must give one label per neuron ({num_neurons}), "
                    f"got {len(regions)}"
                )
        if neuron_ids is not None:
            neuron_ids = tuple(np.asarray(neuron_ids).tolist())
            if len(neuron_ids) != num_neurons:
                raise ValueError(
                    f"Trials: `neuron_ids` must give one id per neuron ({num_neurons}), "
                    f"got {len(neuron_ids)}"
                )

        if conditions is not None:
            conditions = _as_array("conditions", conditions)
            if conditions.shape != (num_trials,):
                raise ValueError(
                    f"Trials: `conditions` must have shape [trials] = ({num_trials},), "
                    f"got {conditions.shape}"
                )
            if conditions.dtype.kind in "fc" and not np.isfinite(conditions).all():
                raise ValueError("Trials: `conditions` holds NaN or Inf labels")
            if conditions.dtype.kind not in "iu":
                if condition_names is not None:
                    raise ValueError(
                        "Trials: `condition_names` is only for integer-coded `conditions`"
                    )
                names, conditions = np.unique(conditions, return_inverse=True)
                condition_names = tuple(names.tolist())
            elif condition_names is not None:
                condition_names = tuple(condition_names)
                if conditions.min() < 0 or conditions.max() >= len(condition_names):
                    raise ValueError("Trials: `conditions` codes exceed `condition_names`")
        elif condition_names is not None:
            raise ValueError("Trials: `condition_names` given without `conditions`")

        self._set(
            spikes=spikes,
            times=times,
            mask=mask,
            behavior=behavior,
            conditions=conditions,
            dt=dt,
            regions=regions,
            neuron_ids=neuron_ids,
            continuous=bool(continuous),
            condition_names=condition_names,
        )

    def _set(self, **fields) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @classmethod
    def _unchecked(cls, **fields) -> Trials:
        obj = object.__new__(cls)
        obj._set(**fields)
        return obj

    # pytree protocol: array fields are leaves, the rest is static.
    def tree_flatten(self):
        return tuple(getattr(self, f) for f in _LEAVES), tuple(getattr(self, f) for f in _STATIC)

    @classmethod
    def tree_unflatten(cls, static, leaves):
        return cls._unchecked(
            **dict(zip(_LEAVES, leaves, strict=True)), **dict(zip(_STATIC, static, strict=True))
        )

    # shapes
    @property
    def num_trials(self) -> int:
        return self.spikes.shape[0]

    @property
    def num_bins(self) -> int:
        return self.spikes.shape[1]

    @property
    def num_neurons(self) -> int:
        return self.spikes.shape[2]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.spikes.shape)

    @property
    def region_names(self) -> tuple:
        """Region labels in order of first appearance (empty without `regions`)."""
        if self.regions is None:
            return ()
        return tuple(dict.fromkeys(self.regions))

    def fields(self) -> dict[str, Any]:
        """All fields as a dict (the keyword arguments that rebuild these trials)."""
        return {f: getattr(self, f) for f in _LEAVES + _STATIC}

    def replace(self, **changes) -> Trials:
        """A validated copy with some fields changed."""
        fields = self.fields()
        fields.update(changes)
        if "conditions" in changes and "condition_names" not in changes:
            fields["condition_names"] = None
        return Trials(**fields)

    # selection
    def __len__(self) -> int:
        return self.num_trials

    def __getitem__(self, index) -> Trials:
        """Select trials: an int (kept as a one-trial batch), a slice, indices or a bool mask."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        elif isinstance(index, tuple):
            raise ValueError("Trials: index selects trials only, e.g. trials[idx]")
        index = np.asarray(np.arange(self.num_trials)[index])
        if index.size == 0:
            raise ValueError("Trials: the selection holds no trial")
        return self._unchecked(
            **{f: None if getattr(self, f) is None else getattr(self, f)[index] for f in _LEAVES},
            **{f: getattr(self, f) for f in _STATIC},
        )

    def select_neurons(self, index) -> Trials:
        """Select neurons (an index array, a slice or a bool mask over `[neurons]`)."""
        index = np.asarray(np.arange(self.num_neurons)[index]).reshape(-1)
        if index.size == 0:
            raise ValueError("Trials: the neuron selection holds no neuron")

        def pick(labels):
            return None if labels is None else tuple(labels[i] for i in index)

        return self._unchecked(
            **{f: getattr(self, f) for f in _LEAVES if f != "spikes"},
            spikes=self.spikes[:, :, index],
            **{f: getattr(self, f) for f in _STATIC if f not in ("regions", "neuron_ids")},
            regions=pick(self.regions),
            neuron_ids=pick(self.neuron_ids),
        )

    def region(self, name) -> Trials:
        """The neurons of one region, e.g. `trials.region("M1")`."""
        if self.regions is None:
            raise ValueError("Trials.region: these trials have no `regions` labels")
        if name not in self.region_names:
            raise ValueError(
                f"Trials.region: no region {name!r}; regions are {list(self.region_names)}"
            )
        return self.select_neurons(np.array([r == name for r in self.regions]))

    def __repr__(self) -> str:
        if len(getattr(self.spikes, "shape", ())) != 3:  # leaves replaced by a tree_map
            return "Trials(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in _LEAVES) + ")"
        extras = [
            f"{f}={getattr(self, f).shape}"
            for f in ("behavior", "conditions")
            if getattr(self, f) is not None
        ]
        if self.regions is not None:
            extras.append(f"regions={list(self.region_names)}")
        if isinstance(self.mask, np.ndarray) and not self.mask.all():
            extras.append(f"observed={float(np.mean(self.mask)):.0%}")
        kind = "signals" if self.continuous else "spikes"
        return (
            f"Trials({self.num_trials} trials x {self.num_bins} bins x {self.num_neurons} "
            f"neurons of {kind}, dt={self.dt:g}s" + "".join(", " + e for e in extras) + ")"
        )
