"""Shared by the neural-ODE scripts: machine description and a section of benchmarks/node.md."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "benchmarks" / "node.md"
PACKAGES = ("jax", "diffrax", "equinox", "optax", "flax")


def machine() -> str:
    """CPU model, cores, package versions and date, as a markdown paragraph."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = names[0] if names else cpu
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in PACKAGES)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores (load average {load}: other processes were "
        f"running, so timings are noisy). Packages: {versions}. "
        f"Date: {datetime.date.today().isoformat()}."
    )


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section `name` of benchmarks/node.md with `body`."""
    REPORT.parent.mkdir(exist_ok=True)
    text = REPORT.read_text() if REPORT.exists() else "# Latent neural ODE benchmarks\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else f"{text}\n{section}\n"
    REPORT.write_text(text)
