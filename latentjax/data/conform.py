"""Check new trials against the data a model was fitted on, before inference or evaluation.

A model is fitted on `[trials, time, neurons]` spike counts with a bin size, neuron
identities and region labels. Trials given later (to `lj.infer`, `lj.evaluate`, or as
validation data) must describe the same neurons at the same bin size, or every latent is
silently wrong. `signature` is what a fit keeps of its training data (the same keys as the
run folder's `data.json`); `conform` checks trials against it and reorders neurons whose ids
match the fitted ones as a set.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from latentjax.data.trials import Trials

__all__ = ["conform", "signature", "signature_of_record"]


def signature(data: Trials | tuple | None) -> dict | None:
    """`{"shape", "dt", "regions", "neuron_ids"}` of `Trials`, or `{"sessions": [...]}`."""
    if data is None:
        return None
    if isinstance(data, tuple):
        return {"sessions": [signature(session) for session in data]}
    return {
        "shape": list(data.shape),
        "dt": data.dt,
        "regions": None if data.regions is None else list(data.regions),
        "neuron_ids": None if data.neuron_ids is None else list(data.neuron_ids),
    }


def signature_of_record(record: Mapping[str, Any] | None) -> dict | None:
    """The `signature` part of a run folder's `data.json` entry."""
    if record is None:
        return None
    if "sessions" in record:
        return {"sessions": [signature_of_record(session) for session in record["sessions"]]}
    return {key: record.get(key) for key in ("shape", "dt", "regions", "neuron_ids")}


def conform(
    name: str,
    data: Trials | tuple,
    record: Mapping[str, Any] | None,
    heldin: Callable[[int], Any] | None = None,
):
    """`data` with its neurons in the fitted order, or ValueError naming `name` and the
    mismatch (neuron count, unit ids, bin size, region labels).

    `record` is a `signature` (or a `data.json` entry, which has the same keys); None
    (a record from before signatures were kept) accepts anything. Ids that match the fitted
    ones as a set are reordered, with a warning; other ids are refused. `heldin(num_fitted)`
    gives the indices of the fitted neurons that may also come alone (the held-in neurons
    of a model fitted with held-out ones), or None.
    """
    if record is None:
        return data
    if isinstance(data, list):
        data = tuple(data)
    if "sessions" in record:
        sessions = data if isinstance(data, tuple) else (data,)
        if len(sessions) != len(record["sessions"]):
            raise ValueError(
                f"`{name}`: {len(sessions)} sessions, the model was fitted on "
                f"{len(record['sessions'])}"
            )
        return tuple(
            conform(f"{name}[{s}]", session, session_record, heldin)
            for s, (session, session_record) in enumerate(
                zip(sessions, record["sessions"], strict=True)
            )
        )
    if isinstance(data, tuple):
        raise ValueError(f"`{name}`: the model was fitted on one session, got {len(data)}")

    fitted_neurons = record["shape"][-1]
    subset = None if heldin is None else heldin(fitted_neurons)
    if subset is not None and data.num_neurons == len(subset) != fitted_neurons:
        record = _restricted(record, np.asarray(subset))
        fitted_neurons = len(subset)
    fitted_ids = record.get("neuron_ids")
    if fitted_ids is not None and data.neuron_ids is not None:
        data = _reorder_by_id(name, data, [_plain(i) for i in fitted_ids])
    elif data.num_neurons != fitted_neurons:
        alone = "" if subset is None else f" (or its {len(subset)} held-in neurons alone)"
        raise ValueError(
            f"`{name}`: {data.num_neurons} neurons, the model was fitted on {fitted_neurons}{alone}"
        )
    fitted_dt = record.get("dt")
    if fitted_dt is not None and not math.isclose(data.dt, fitted_dt, rel_tol=1e-6):
        raise ValueError(
            f"`{name}`: bin size dt={data.dt:g} s, the model was fitted with dt={fitted_dt:g} s "
            "(rebin the spikes to the fitted bin size)"
        )
    fitted_regions = record.get("regions")
    if fitted_regions is not None and data.regions is not None:
        given = [_plain(r) for r in data.regions]
        if given != [_plain(r) for r in fitted_regions]:
            raise ValueError(
                f"`{name}`: region labels {_summary(given)} differ from the fitted "
                f"{_summary(fitted_regions)}"
            )
    return data


def _restricted(record: Mapping[str, Any], index: np.ndarray) -> dict:
    """`record` of the fitted neurons at `index` only."""

    def pick(labels):
        return None if labels is None else [labels[i] for i in index]

    return {
        **record,
        "shape": [*record["shape"][:-1], len(index)],
        "regions": pick(record.get("regions")),
        "neuron_ids": pick(record.get("neuron_ids")),
    }


def _plain(value):
    """A JSON-read id (`3`, `"M1"`) and a NumPy one compare equal."""
    return value.item() if isinstance(value, np.generic) else value


def _summary(labels) -> str:
    counts = dict.fromkeys(labels, 0)
    for label in labels:
        counts[label] += 1
    return "{" + ", ".join(f"{label!r}: {count}" for label, count in counts.items()) + "}"


def _reorder_by_id(name: str, data: Trials, fitted_ids: list) -> Trials:
    given = [_plain(i) for i in data.neuron_ids]
    if given == fitted_ids:
        return data
    if sorted(map(repr, given)) != sorted(map(repr, fitted_ids)):
        missing = [i for i in fitted_ids if i not in set(given)]
        unknown = [i for i in given if i not in set(fitted_ids)]
        raise ValueError(
            f"`{name}`: its neuron_ids are not the {len(fitted_ids)} units the model was "
            f"fitted on ({len(missing)} missing, e.g. {missing[:3]}; {len(unknown)} unknown, "
            f"e.g. {unknown[:3]})"
        )
    position = {neuron_id: index for index, neuron_id in enumerate(given)}
    warnings.warn(
        f"`{name}`: neurons reordered by neuron_ids to the order the model was fitted on",
        stacklevel=4,
    )
    return data.select_neurons(np.array([position[i] for i in fitted_ids]))
