"""The run folder: `config.json`, `data.json`, `metrics.jsonl`, `population.json`,
`checkpoints/` and `lock`.

`config.json` records the config with its class path (nested dataclasses and tuples
included) so `load_run` can rebuild it, the population (seeds, grid, PBT settings), and a
hash of all of it; `data.json` records the shapes, labels and a fingerprint of the training
and validation trials; `metrics.jsonl` holds one JSON line per chunk: a run resumed from its
last checkpoint (or restarted with none) first drops the lines logged after it, so the file
holds exactly one line per step logged, whatever killed the run before. `population.json`
records how the members ran (`grouping.Grouping`, chosen anew by each start). `lock` names the
process training in the folder; while it runs (holding an advisory lock on that file, which
the system releases when the process ends, however it ends) another is refused.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import importlib
import json
import os
import socket
import weakref
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
    """One JSON line per chunk, in memory and (with a run folder) in `metrics.jsonl`.

    The file holds the lines of this log: the first `append` replaces whatever an earlier,
    interrupted run left there with `lines` (none for a run started from step 0)."""

    def __init__(self, path: str | None = None, lines: list[dict] | None = None):
        self.path = path
        self.lines = list(lines or [])
        self._written = False  # whether the file holds exactly `lines`

    def append(self, line: dict) -> None:
        self.lines.append(line)
        if self.path is None or jax.process_index() != 0:
            return
        if not self._written:
            self._rewrite()
            return
        with open(self.path, "a") as file:
            file.write(json.dumps(line) + "\n")

    def _rewrite(self) -> None:
        """Replace the file by `lines` (atomically: a kill leaves the old or the new file)."""
        temporary = self.path + ".tmp"
        with open(temporary, "w") as file:
            file.writelines(json.dumps(line) + "\n" for line in self.lines)
        os.replace(temporary, self.path)
        self._written = True

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
        log = cls(path, cls.read(path, up_to_step))
        if jax.process_index() == 0:
            log._rewrite()
        return log


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


class _Lock:
    """An exclusive advisory lock on `path`, held while this object lives (or until the
    process ends); the file records the holder."""

    def __init__(self, path: str, folder: str):
        self.file = open(path, "a+")  # held open: the lock lives with it
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "an unknown process"
            self.file.close()
            raise ValueError(
                f"out: {folder} is in use by another run ({holder}); wait for it to end, "
                "or use another folder"
            ) from None
        since = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.file.truncate(0)
        self.file.write(f"process {os.getpid()} on {socket.gethostname()} since {since}\n")
        self.file.flush()

    def __del__(self):
        self.file.close()  # releases the lock


# The locks this process holds, by folder: a second `RunDir` here shares the first one's.
_LOCKS: weakref.WeakValueDictionary[str, _Lock] = weakref.WeakValueDictionary()


class RunDir:
    """A run folder: writes `config.json` and `data.json` on creation and checks them on
    resume (a different config, population or data raises `ValueError`); `open` takes the
    folder's lock (another process training there raises `ValueError`) until `close`, the
    end of this object or of the process."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))
        self.config_path = os.path.join(self.path, "config.json")
        self.data_path = os.path.join(self.path, "data.json")
        self.metrics_path = os.path.join(self.path, "metrics.jsonl")
        self.checkpoint_dir = os.path.join(self.path, "checkpoints")
        self.lock_path = os.path.join(self.path, "lock")
        self.population_path = os.path.join(self.path, "population.json")
        self._lock: _Lock | None = None

    def lock(self) -> None:
        """Take the folder's lock (created with the folder), or raise `ValueError` naming
        the process that holds it."""
        if self._lock is not None or jax.process_index() != 0:
            return
        self._lock = _LOCKS.get(self.path)
        if self._lock is None:
            os.makedirs(self.path, exist_ok=True)
            self._lock = _LOCKS[self.path] = _Lock(self.lock_path, self.path)

    def close(self) -> None:
        """Let go of the lock (released once no `RunDir` of this process holds it)."""
        self._lock = None

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
        """Lock the folder, then create it or check that an existing one matches. True when
        resuming."""
        self.lock()
        try:
            return self._open(config_record, data_record)
        except BaseException:
            self.close()
            raise

    def _open(self, config_record: dict, data_record: dict) -> bool:
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
            _write_json(self.data_path, data_record)
            _write_json(self.config_path, config_record)
        return False

    def write_population(self, record: dict) -> None:
        """Write `population.json`: how the members of this (re)start run."""
        if jax.process_index() == 0:
            _write_json(self.population_path, record)

    def read_population(self) -> dict | None:
        """`population.json`, or None (a run written before it existed)."""
        if not os.path.exists(self.population_path):
            return None
        with open(self.population_path) as file:
            return json.load(file)


def _write_json(path: str, record: dict) -> None:
    """Write `record` to `path` atomically (a kill leaves the old or the new file)."""
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(record, file, indent=1)
    os.replace(temporary, path)
