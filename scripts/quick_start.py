"""Time the README's quick start as a new user meets it: a fresh clone of this repository's
committed HEAD, a fresh virtual environment, `pip install .`, then `latentjax demo --out
demo_run`. Writes the times and the demo's own summary table to `benchmarks/quick_start.md`
and the README's "What the demo shows" numbers (between its `quick-start` markers).

    python scripts/quick_start.py              # ~10 min on 2 cores (install included)
    python scripts/quick_start.py --no-write   # print only

pip may reuse this machine's download cache; a machine without one adds the download time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import BENCHMARKS, machine, write_section

ROOT = Path(__file__).resolve().parent.parent


def _timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        clone = Path(folder) / "latentjax"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True)
        bin_dir = clone / ".venv" / "bin"
        install = _timed([str(bin_dir / "pip"), "install", "-q", "."], clone)
        demo = _timed([str(bin_dir / "latentjax"), "demo", "--out", "demo_run", "--no-progress"],
                      clone)  # fmt: skip
        summary = (clone / "demo_run" / "summary.md").read_text().strip()
    minutes = f"{demo / 60:.1f} minutes"
    text = "\n".join(
        [
            "## Quick start from a fresh clone",
            "",
            f"- machine: {machine()}",
            f"- commit {head}; `pip install .` into a new virtual environment: {install:.0f} s; "
            f"`latentjax demo --out demo_run`: {demo:.0f} s",
            "",
            summary,
        ]
    )
    readme = "\n".join(
        [
            f"`latentjax demo` ({minutes} on 2 CPU cores from a fresh clone, after a "
            f"{install / 60:.1f}-minute install; `scripts/quick_start.py`) fits the Gaussian LDS "
            "baseline and LFADS to the same simulated Lorenz trials (seed 0; 80% of trials "
            "train, bits/spike and rate R² over all trials, latent R² of the best affine map "
            "scored on trials it was not fit on):",
            "",
            *summary.splitlines()[2:],
        ]
    )
    print(text)
    if not args.no_write:
        write_section(BENCHMARKS / "quick_start.md", "quick-start", text, "Quick start")
        write_section(ROOT / "README.md", "quick-start", readme, "latentjax")


if __name__ == "__main__":
    main()
