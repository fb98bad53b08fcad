"""Changing frozen config dataclasses from text: TOML files and `key=value` overrides.

What the command line uses for `--config file.toml` and `--set train.learning_rate=3e-3`.
Values are parsed as TOML (`3e-3`, `true`, `[1, 2]`, `"text"`); a bare word is a string.
Nested dataclasses are addressed by dotted keys or TOML tables. Unknown fields raise
`ValueError` naming them: a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from typing import Any

__all__ = ["load_toml", "make_config", "parse_assignments", "update_config"]


def parse_value(text: str) -> Any:
    """A TOML scalar or array (`3e-3`, `true`, `[1, 2]`); anything else is kept as a string."""
    if text.strip().lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignments(assignments) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> `{"a.b": 1, "c": "x"}`."""
    parsed = {}
    for assignment in assignments or ():
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set: expected key=value, got {assignment!r}")
        parsed[key.strip()] = parse_value(text.strip())
    return parsed


def load_toml(path) -> dict[str, Any]:
    """The tables of a TOML config file as nested dicts."""
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError as err:
        raise ValueError(f"--config: no such file {path}") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"--config: {path} is not valid TOML ({err})") from err


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _coerce(value: Any, current: Any, path: str, annotation: str = "") -> Any:
    """`value` for the field `path` whose current value is `current`: of the same kind
    (a bool only from true/false, an int field never from a float), or raise ValueError.
    A field that is None now takes any value; the config's own checks judge it. A string
    field whose annotation also allows an int (`str | int`) takes an int."""

    def wrong(expected: str) -> ValueError:
        return ValueError(f"config: `{path}` expects {expected}, got {value!r}")

    if dataclasses.is_dataclass(current):
        raise wrong(f"a table of {type(current).__name__} fields (e.g. --set {path}.<field>=...)")
    if isinstance(current, bool) or isinstance(value, bool):
        if not isinstance(value, bool) or not isinstance(current, (bool, type(None))):
            raise wrong("true or false" if isinstance(current, bool) else type(current).__name__)
        return value
    if isinstance(current, int) and not isinstance(value, int):
        raise wrong("an int")
    if isinstance(current, float):
        if not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if isinstance(current, str) and not isinstance(value, str):
        if isinstance(value, int) and "int" in [part.strip() for part in annotation.split("|")]:
            return value
        raise wrong("a string")
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong("a list")
        return tuple(value)
    return value


def update_config(config: Any, changes: Mapping[str, Any], _prefix: str = "") -> Any:
    """A copy of `config` with `changes` applied (dotted keys or nested dicts).

    Examples:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     rate: float = 1.0
        >>> update_config(C(), {"rate": 2}).rate
        2.0
    """
    grouped: dict[str, dict[str, Any]] = {}
    for path, value in _flatten(changes).items():
        head, _, rest = path.partition(".")
        grouped.setdefault(head, {})[rest] = value
    annotations = {f.name: str(f.type) for f in dataclasses.fields(config)}
    names = set(annotations)
    updates = {}
    for head, values in grouped.items():
        if head not in names:
            raise ValueError(
                f"config: {type(config).__name__} has no field `{_prefix}{head}`; fields are "
                f"{sorted(names)}"
            )
        current = getattr(config, head)
        if "" in values:
            updates[head] = _coerce(
                values.pop(""), current, _prefix + head, annotations[head]
            )
        if values:
            if not dataclasses.is_dataclass(current):
                raise ValueError(f"config: `{_prefix}{head}` has no sub-fields {sorted(values)}")
            updates[head] = update_config(current, values, f"{_prefix}{head}.")
    return dataclasses.replace(config, **updates)


def make_config(config_type: type, changes: Mapping[str, Any]) -> Any:
    """`config_type(...)` from its defaults and `changes`; required fields must be in `changes`.

    Examples:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     latent_dim: int
        ...     rate: float = 1.0
        >>> make_config(C, {"latent_dim": 3, "rate": 2}).rate
        2.0
    """
    flat = _flatten(changes)
    required = [
        f.name
        for f in dataclasses.fields(config_type)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in flat]
    if missing:
        raise ValueError(
            f"config: {config_type.__name__} needs "
            + ", ".join(f"`{name}`" for name in missing)
            + " (e.g. --set "
            + " --set ".join(f"{name}=..." for name in missing)
            + ")"
        )
    config = config_type(**{name: flat.pop(name) for name in required})
    return update_config(config, flat)
