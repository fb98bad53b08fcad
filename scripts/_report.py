"""Shared by the benchmark scripts: the machine description and marked sections of a
benchmarks/*.md file (each script rewrites only its own sections)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "diffrax", "numpyro", "scikit-learn")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        if names:
            return names[0].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(packages: tuple[str, ...] = PACKAGES) -> str:
    """CPU model, cores, load average, Python and package versions and the date, one line."""
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in packages)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    busy = "; other processes were running, timings are noisy" if os.getloadavg()[0] > 1.5 else ""
    return (
        f"{cpu_model()}, {os.cpu_count()} cores (load average {load}{busy}); "
        f"Python {platform.python_version()}, {versions}; "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"
    )


def write_section(path: str | os.PathLike, name: str, text: str, title: str) -> None:
    """Replace (or append) the section `name` of the markdown file `path` with `text`; a new
    file starts with the heading `title`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else f"# {title}\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: section, old) if pattern.search(old) else f"{old}\n{section}\n"
    path.write_text(new)


def seconds_per_step(step, state, trials, keys, warmup: int) -> float:
    """Mean seconds of `state, _ = step(state, trials, key)` over `keys[warmup:]`, after
    `warmup` calls that compile it (`step` jitted; the result waited for, not printed)."""
    import jax

    for key in keys[:warmup]:
        state, _ = step(state, trials, key)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for key in keys[warmup:]:
        state, _ = step(state, trials, key)
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / (len(keys) - warmup)
