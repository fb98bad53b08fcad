"""Edge and delay recovery of `lj.multiregion.coupled_lds` (by data size and
errors-in-variables handling) and `lj.multiregion.hlds` (at the dataset's defaults, per seed)
from spike counts; writes the tables to benchmarks/multiregion.md.

`lj.datasets.multiregion` (3 regions, edges 0 -> 1 with delay 2 and 1 -> 2 with delay 1,
coupling strength 0.5, Poisson spikes at 5-20 Hz in 10 ms bins), seeds 0-4, NUTS with the
default warm-up and draws. A seed counts when the reported edges (inclusion > 0.5) are exactly
the true ones, and the delays of the true edges are right.

    python scripts/multiregion_recovery.py [--quick] [--family coupled_lds|hlds]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _report import BENCHMARKS, machine, write_section

import latentjax as lj
from latentjax.multiregion import coupled_lds, hlds

VARIANTS = {
    "corrected (default: factor analysis, own lag 1, noise correction)": {},
    "uncorrected (PCA, own lags 1-6, no correction)": dict(
        projection="pca", own_lags=6, noise_correction=False
    ),
}
SIZES = ((20, 100), (60, 100), (60, 200))
REPORT = BENCHMARKS / "multiregion.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one size, two seeds, no file")
    parser.add_argument("--family", choices=("coupled_lds", "hlds"), default="coupled_lds")
    args = parser.parse_args()
    if args.family == "hlds":
        hlds_recovery(range(2) if args.quick else range(5), write=not args.quick)
        return
    sizes, seeds = (SIZES[:1], range(2)) if args.quick else (SIZES, range(5))
    rows = []
    for neurons, trials in sizes:
        for name, changes in VARIANTS.items():
            edges_found = delays_found = both = divergences = 0
            start = time.perf_counter()
            for seed in seeds:
                data = lj.datasets.multiregion(
                    seed=seed, neurons_per_region=neurons, num_trials=trials
                )
                result = lj.fit(coupled_lds.Config(**changes), data.trials, progress=False)
                posterior = lj.infer(result, data.trials)
                true_edges = data.truth["coupling"] > 0
                edges_ok = np.array_equal(posterior.edges, true_edges)
                delays_ok = np.array_equal(
                    posterior.delays[true_edges], data.truth["delays"][true_edges]
                )
                edges_found += edges_ok
                delays_found += delays_ok
                both += edges_ok and delays_ok
                divergences += int(posterior.divergences.sum())
            seconds = (time.perf_counter() - start) / len(seeds)
            rows.append(
                f"| {neurons} | {trials} | {name} | {edges_found}/{len(seeds)} | "
                f"{delays_found}/{len(seeds)} | {both}/{len(seeds)} | {divergences} | "
                f"{seconds:.0f} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| neurons per region | trials | variant | exact edges | true delays | both | "
            "divergences (all seeds) | seconds per fit |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    text = (
        "## coupled_lds: edges and delays from spike counts\n\n"
        f"`python scripts/multiregion_recovery.py`. {__doc__.split(chr(10) + chr(10))[1]}\n\n"
        f"{table}\n\nMachine: {machine()}.\n"
    )
    print(text)
    if not args.quick:
        write_section(REPORT, "coupled_lds_recovery", text, "Multi-region benchmarks")


def hlds_recovery(seeds, *, write: bool) -> None:
    """`hlds` with its default Config at the dataset's defaults (20 neurons per region, 100
    trials): per seed, the edges found, their delays, the inclusion probabilities of the true
    edges and the largest of the others, and the seconds of `lj.fit`."""
    rows = []
    for seed in seeds:
        data = lj.datasets.multiregion(seed=seed)
        start = time.perf_counter()
        result = lj.fit(hlds.Config(), data.trials, progress=False)
        seconds = time.perf_counter() - start
        posterior = lj.infer(result, data.trials)
        true_edges = data.truth["coupling"] > 0
        edges_ok = np.array_equal(posterior.edges, true_edges)
        delays_ok = np.array_equal(posterior.delays, data.truth["delays"])
        found = ", ".join(
            f"{s}->{r} (d={posterior.delays[s, r]})" for s, r in np.argwhere(posterior.edges)
        )
        inclusion = np.asarray(posterior.inclusion)
        off = ~np.eye(len(inclusion), dtype=bool) & ~true_edges
        rows.append(
            f"| {seed} | {found} | {'yes' if edges_ok else 'no'} | "
            f"{'yes' if edges_ok and delays_ok else 'no'} | "
            f"{', '.join(f'{p:.2f}' for p in inclusion[true_edges])} | "
            f"{inclusion[off].max():.2f} | {int(result.history['tests_accepted'][-1])} | "
            f"{seconds:.0f} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| seed | edges found (delay) | exact edges | exact edges and delays | "
            "inclusion of the true edges | largest other inclusion | delay states excluded by the "
            "search | seconds per fit |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    text = (
        "## hlds: edges and delays from spike counts at the dataset's defaults\n\n"
        "`python scripts/multiregion_recovery.py --family hlds`: `lj.datasets.multiregion` at "
        "its defaults (3 regions, 20 neurons each, 100 trials x 100 bins, edges 0 -> 1 with "
        "delay 2 and 1 -> 2 with delay 1, Poisson spikes at 5-20 Hz in 10 ms bins), "
        "`lj.multiregion.hlds.Config()` (variational EM, 80 iterations with the edge-pruning "
        "search), seconds of `lj.fit` including compilation. coupled_lds on the same data and "
        "seeds: the first row of the table above.\n\n"
        f"{table}\n\nMachine: {machine()}.\n"
    )
    print(text)
    if write:
        write_section(REPORT, "hlds_recovery", text, "Multi-region benchmarks")


if __name__ == "__main__":
    main()
