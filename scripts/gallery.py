"""The documentation gallery: every figure in `docs/gallery/` and the page `docs/gallery.md`,
made from built-in data in one run.

    python scripts/gallery.py              # about 5 minutes on 2 CPU cores

- `latentjax demo` (Lorenz through 30 Poisson neurons; LDS and LFADS): the latents of both
  against the truth, LFADS's raster with inferred rates, latent trajectories, training curves;
- persistent homology of the built-in ring and torus point clouds (barcodes);
- the communication graph that `coupled_lds` infers on `lj.datasets.multiregion`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine  # noqa: E402

import latentjax as lj  # noqa: E402
from latentjax.demo import run_demo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "docs" / "gallery"


def demo_figures(entries: list) -> None:
    """The figures of `latentjax demo`: its comparison figures and the LFADS run's report."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "demo"
        started = time.perf_counter()
        print(run_demo(out, progress=False))
        seconds = time.perf_counter() - started
        copies = {
            "figures/true_vs_inferred_lfads.png": (
                "true_vs_inferred_lfads.png",
                "True (black) and LFADS-inferred Lorenz latents (best affine map).",
            ),
            "figures/true_vs_inferred_lds.png": (
                "true_vs_inferred_lds.png",
                "The Gaussian LDS baseline on the same trials.",
            ),
            "lfads/figures/raster.png": (
                "raster_lfads.png",
                "Spikes of one trial with LFADS's inferred rates.",
            ),
            "lfads/figures/latent_trajectories.png": (
                "latent_trajectories_lfads.png",
                "The Lorenz attractor in LFADS's latents.",
            ),
            "lfads/figures/training_curves.png": (
                "training_curves_lfads.png",
                "LFADS training and validation loss.",
            ),
        }
        for source, (name, caption) in copies.items():
            shutil.copy(out / source, GALLERY / name)
            entries.append((name, f"{caption} From `latentjax demo` ({seconds:.0f} s)."))


def topology(entries: list) -> None:
    for name in ("ring", "torus"):
        dataset = getattr(lj.datasets, name)(seed=0)
        latents = np.asarray(dataset.truth["latents"])
        points = latents.reshape(-1, latents.shape[-1])
        points = points[lj.geometry.greedy_landmarks(points, 300)]
        diagrams = lj.geometry.persistence(points, maxdim=2 if name == "torus" else 1)
        betti = lj.geometry.betti(points, maxdim=2 if name == "torus" else 1)
        figure = lj.plot.plot_barcode(diagrams, title=f"{name}: Betti numbers {betti}").figure
        figure.savefig(GALLERY / f"barcode_{name}.png", dpi=100)
        entries.append(
            (
                f"barcode_{name}.png",
                f"Persistence barcode of the built-in {name} (300 landmarks); "
                f"`lj.geometry.betti` gives {betti}.",
            )
        )


def communication(entries: list) -> None:
    data = lj.datasets.multiregion(seed=0, neurons_per_region=60, num_trials=200)
    result = lj.fit(lj.multiregion.coupled_lds.Config(), data.trials, progress=False)
    posterior = lj.infer(result, data.trials)
    figure = lj.plot.communication_graph(posterior)
    figure.savefig(GALLERY / "communication_graph.png", dpi=100)
    entries.append(
        (
            "communication_graph.png",
            "Edges, credible intervals and delays inferred by `coupled_lds` on "
            "`lj.datasets.multiregion(neurons_per_region=60, num_trials=200)` "
            "(true edges 0 -> 1 with delay 2, 1 -> 2 with delay 1).",
        )
    )


def main() -> None:
    GALLERY.mkdir(parents=True, exist_ok=True)
    entries: list = []
    started = time.perf_counter()
    for make in (demo_figures, topology, communication):
        make(entries)
        print(f"{make.__name__}: done at {time.perf_counter() - started:.0f} s", flush=True)
    lines = [
        "# Gallery",
        "",
        "Every figure here is made from built-in data by `python scripts/gallery.py`, which",
        "also writes this page.",
        "",
        f"Made on {machine()}.",
    ]
    for name, caption in entries:
        lines += ["", f"![{Path(name).stem}](gallery/{name})", "", f"*{caption}*"]
    (ROOT / "docs" / "gallery.md").write_text("\n".join(lines) + "\n")
    seconds = time.perf_counter() - started
    print(f"wrote docs/gallery.md and {len(entries)} figures in {seconds:.0f} s")


if __name__ == "__main__":
    main()
