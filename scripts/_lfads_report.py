"""Shared by the LFADS scripts: machine description and sections of benchmarks/lfads.md."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import time


def machine() -> str:
    """CPU model, cores, package versions and the date, on one line."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    packages = ("jax", "jaxlib", "flax", "optax", "scikit-learn")
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)
    return (
        f"{cpu}, {os.cpu_count()} cores; {versions}; Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )


def write_section(path: str, name: str, text: str) -> None:
    """Replace (or append) the section `name` of the markdown file `path` with `text`."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = open(path).read() if os.path.exists(path) else "# LFADS benchmarks\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    new = pattern.sub(lambda _: block, old) if begin in old else old.rstrip() + "\n\n" + block
    with open(path, "w") as f:
        f.write(new)
