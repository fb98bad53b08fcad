"""The run folder: `config.json`, `data.json`, `metrics.jsonl` and `checkpoints/`.

`config.json` records the config with its class path (nested dataclasses and tuples
included) so `load_run` can rebuild it, the population (seeds, grid, PBT settings), and a
hash of all of it; `data.json` records the shapes, labels and a fingerprint of the training
and validation trials; `metrics.jsonl` holds one JSON line per chunk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = [
    "MetricsLog",
    "RunDir",
    "config_from_json",
    "config_to_json",
    "describe_trials",
    "digest",
]


def config_to_json(value: Any, where: str = "config") -> Any:
    """A JSON-ready form of a config: dataclasses carry their class path, tuples are tagged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {
            f.name: config_to_json(getattr(value, f.name), f"{where}.{f.name}")
            for f in dataclasses.fields(value)
        }
        return {"__class__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(value, tuple):
        return {"__tuple__": [config_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [config_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where}: only dicts with string keys can be saved in config.json")
        return {"__dict__": {k: config_to_json(v, f"{where}.{k}") for k, v in value.items()}}
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(
        f"{where}: a {type(value).__name__} cannot be saved in config.json; configs hold "
        "numbers, strings, bools, None, tuples, dicts and nested dataclasses"
    )


def _import_class(path: str) -> type:
    module_name, _, qualname = path.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def config_from_json(value: Any) -> Any:
    """Inverse of `config_to_json`."""
    if isinstance(value, list):
        return [config_from_json(v) for v in value]
    if isinstance(value, dict):
        if "__class__" in value:
            cls = _import_class(value["__class__"])
            return cls(**{k: config_from_json(v) for k, v in value["fields"].items()})
        if "__tuple__" in value:
            return tuple(config_from_json(v) for v in value["__tuple__"])
        return {k: config_from_json(v) for k, v in value["__dict__"].items()}
    return value


def digest(record: Any) -> str:
    """SHA-256 of a JSON-ready record (canonical key order)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def describe_trials(trials) -> dict | None:
    """Shapes, labels and a fingerprint of `Trials` (what `data.json` holds)."""
    if trials is None:
        return None
    fingerprint = hashlib.sha256()
    for leaf in jax.tree.leaves(trials):
        array = np.ascontiguousarray(np.asarray(leaf))
        fingerprint.update(str((array.shape, array.dtype.str)).encode())
        fingerprint.update(array.tobytes())
    return {
        "shape": list(trials.shape),
        "dt": trials.dt,
        "continuous": trials.continuous,
        "behavior_dims": None if trials.behavior is None else int(trials.behavior.shape[-1]),
        "has_conditions": trials.conditions is not None,
        "condition_names": None if trials.condition_names is None else list(trials.condition_names),
        "regions": None if trials.regions is None else list(trials.regions),
        "neuron_ids": None if trials.neuron_ids is None else list(trials.neuron_ids),
        "dtypes": {
            "spikes": np.asarray(trials.spikes).dtype.str,
            "times": np.asarray(trials.times).dtype.str,
        },
        "fingerprint": fingerprint.hexdigest(),
    }


class MetricsLog:
    """One JSON line per chunk, in memory and (with a run folder) in `metrics.jsonl`."""

    def __init__(self, path: str | None = None, lines: list[dict] | None = None):
        self.path = path
        self.lines = list(lines or [])

    def append(self, line: dict) -> None:
        self.lines.append(line)
        if self.path is not None and jax.process_index() == 0:
            with open(self.path, "a") as file:
                file.write(json.dumps(line) + "\n")

    @staticmethod
    def read(path: str, up_to_step: int) -> list[dict]:
        """The lines of `path` up to `up_to_step` (lines cut short by a kill are skipped)."""
        lines = []
        if os.path.exists(path):
            with open(path) as file:
                for text in file:
                    try:
                        line = json.loads(text)
                    except json.JSONDecodeError:
                        continue
                    if line["step"] <= up_to_step:
                        lines.append(line)
        return lines

    @classmethod
    def resume(cls, path: str, up_to_step: int) -> MetricsLog:
        """The log of a run restored at `up_to_step`: later lines (written after the
        checkpoint by a run that was then interrupted) are dropped from the file too."""
        lines = cls.read(path, up_to_step)
        if jax.process_index() == 0:
            with open(path, "w") as file:
                file.writelines(json.dumps(line) + "\n" for line in lines)
        return cls(path, lines)


def member_history(lines: list[dict], index: int) -> dict[str, np.ndarray]:
    """Member `index`'s series from `metrics.jsonl` lines: one array per logged name (per-member
    values, knobs by their path, shared values such as `step`); `None` (not finite) -> NaN."""
    columns: dict[str, list] = {}
    for line in lines:
        for name, value in line.items():
            if name == "knobs":
                for path, values in value.items():
                    columns.setdefault(path, []).append(values[index])
            elif isinstance(value, list):
                columns.setdefault(name, []).append(
                    np.nan if value[index] is None else value[index]
                )
            else:
                columns.setdefault(name, []).append(value)
    return {name: np.asarray(values) for name, values in columns.items()}


def member_histories(path: str | os.PathLike) -> list[dict[str, np.ndarray]]:
    """Every member's `member_history` from the `metrics.jsonl` at `path`."""
    lines = MetricsLog.read(os.fspath(path), up_to_step=np.inf)
    members = max(
        (len(v) for line in lines for v in line.values() if isinstance(v, list)), default=0
    )
    return [member_history(lines, index) for index in range(members)]


class RunDir:
    """A run folder: writes `config.json` and `data.json` on creation and checks them on
    resume (a different config, population or data raises `ValueError`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))
        self.config_path = os.path.join(self.path, "config.json")
        self.data_path = os.path.join(self.path, "data.json")
        self.metrics_path = os.path.join(self.path, "metrics.jsonl")
        self.checkpoint_dir = os.path.join(self.path, "checkpoints")

    def exists(self) -> bool:
        return os.path.exists(self.config_path)

    def read(self) -> tuple[dict, dict]:
        """(config record, data record)."""
        if not self.exists():
            raise ValueError(f"run_dir: {self.path} holds no config.json (not a latentjax run)")
        with open(self.config_path) as file:
            config_record = json.load(file)
        with open(self.data_path) as file:
            data_record = json.load(file)
        return config_record, data_record

    def open(self, config_record: dict, data_record: dict) -> bool:
        """Create the folder, or check that an existing one matches. True when resuming."""
        if self.exists():
            saved_config, saved_data = self.read()
            if saved_config["hash"] != config_record["hash"]:
                raise ValueError(
                    f"out: {self.path} holds a run with a different config or population "
                    f"(hash {saved_config['hash'][:12]} != {config_record['hash'][:12]}); "
                    "use another folder to start a new run"
                )
            for split in ("train", "valid"):
                saved, new = saved_data.get(split), data_record.get(split)
                if (saved and saved["fingerprint"]) != (new and new["fingerprint"]):
                    raise ValueError(
                        f"out: {self.path} was fitted on different `{split}` trials; "
                        "use another folder to start a new run"
                    )
            return True
        if jax.process_index() == 0:
            os.makedirs(self.path, exist_ok=True)
            for path, record in ((self.data_path, data_record), (self.config_path, config_record)):
                temporary = path + ".tmp"
                with open(temporary, "w") as file:
                    json.dump(record, file, indent=1)
                os.replace(temporary, path)
        return False
