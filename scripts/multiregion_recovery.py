"""Edge and delay recovery of `lj.multiregion.coupled_lds` (by data size and
errors-in-variables handling) and `lj.multiregion.hlds` (at the dataset's defaults, per seed;
and on the feedback-loop and modulation settings of tests/test_hlds.py), and the
across-region delays of `lj.multiregion.dlag` on the same data and seeds, from spike counts;
writes the tables to benchmarks/multiregion.md.

`lj.datasets.multiregion` (3 regions, edges 0 -> 1 with delay 2 and 1 -> 2 with delay 1,
coupling strength 0.5, Poisson spikes at 5-20 Hz in 10 ms bins), seeds 0-4, NUTS with the
default warm-up and draws. A seed counts when the reported edges (inclusion > 0.5) are exactly
the true ones, and the delays of the true edges are right.

    python scripts/multiregion_recovery.py [--quick]
        [--family coupled_lds|hlds|hlds-feedback|hlds-feedback-60|
                  hlds-feedback-60-variational|hlds-feedback-evidence|hlds-modulation|dlag]
        [--neurons 20|60]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from _report import BENCHMARKS, machine, write_section
from scipy.linalg import subspace_angles

import latentjax as lj
from latentjax.multiregion import coupled_lds, dlag, hlds

VARIANTS = {
    "corrected (default: factor analysis, own lag 1, noise correction)": {},
    "uncorrected (PCA, own lags 1-6, no correction)": dict(
        projection="pca", own_lags=6, noise_correction=False
    ),
}
SIZES = ((20, 100), (60, 100), (60, 200))
# dlag's defaults (one across and one within latent per region, 200 EM iterations, delays up to
# 0.1 s = 10 bins) but a GP noise variance of 0.1 instead of 1e-3: with 1e-3 the posterior ties
# every region's copy of the across latent to the current delays and EM leaves the delays
# where the lagged-correlation initialisation put them (see `dlag_recovery`)
DLAG_CHANGES = dict(across_dim=1, within_dim=1, gp_noise_variance=0.1)
REPORT = BENCHMARKS / "multiregion.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one size, two seeds, no file")
    parser.add_argument(
        "--family",
        choices=("coupled_lds", "hlds", "hlds-feedback", "hlds-feedback-60",
                 "hlds-feedback-60-variational", "hlds-feedback-evidence", "hlds-modulation",
                 "dlag"),  # fmt: skip
        default="coupled_lds",
    )
    parser.add_argument(
        "--neurons", type=int, choices=sorted(FEEDBACK_PAIRS), default=20,
        help="neurons per region of hlds-feedback-evidence",
    )  # fmt: skip
    args = parser.parse_args()
    if args.family == "hlds":
        hlds_recovery(range(2) if args.quick else range(5), write=not args.quick)
        return
    if args.family == "hlds-feedback-evidence":
        feedback_evidence(args.neurons, range(1) if args.quick else range(5), write=not args.quick)
        return
    if args.family in ("hlds-feedback", "hlds-feedback-60", "hlds-feedback-60-variational",
                       "hlds-modulation"):  # fmt: skip
        setting = args.family.removeprefix("hlds-")
        hlds_setting(setting, range(2) if args.quick else range(5), write=not args.quick)
        return
    if args.family == "dlag":
        dlag_recovery(range(2) if args.quick else range(5), write=not args.quick)
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
    rows, config = [], hlds.Config()
    for seed in seeds:
        data = lj.datasets.multiregion(seed=seed)
        start = time.perf_counter()
        result = lj.fit(config, data.trials, progress=False)
        seconds = time.perf_counter() - start
        posterior = lj.infer(result, data.trials)
        true_edges = data.truth["coupling"] > 0
        edges_ok = np.array_equal(posterior.edges, true_edges)
        delays_ok = np.array_equal(posterior.delays, data.truth["delays"])
        found = edge_list(posterior)
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
            "inclusion of the true edges | largest other inclusion | tests kept by the search | "
            "seconds per fit |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    text = (
        "## hlds: edges and delays from spike counts at the dataset's defaults\n\n"
        "`python scripts/multiregion_recovery.py --family hlds`: `lj.datasets.multiregion` at "
        "its defaults (3 regions, 20 neurons each, 100 trials x 100 bins, edges 0 -> 1 with "
        "delay 2 and 1 -> 2 with delay 1, Poisson spikes at 5-20 Hz in 10 ms bins), "
        f"`lj.multiregion.hlds.Config()` (variational EM, {config.train.steps} iterations, the "
        f"structure search from iteration {config.search_start}, {config.search_iters} "
        "iterations per test), seconds of `lj.fit` including compilation. coupled_lds on the "
        "same data and seeds: the first row of the table above.\n\n"
        f"{table}\n\nMachine: {machine()}.\n"
    )
    print(text)
    if write:
        write_section(REPORT, "hlds_recovery", text, "Multi-region benchmarks")


FEEDBACK = dict(edges=((0, 1), (1, 0)), delays=(1, 3), global_latent_dim=1)
"""The feedback loop with a global latent (`lj.datasets.multiregion` options)."""

SETTINGS = {
    "feedback": (
        "a feedback loop with a global latent: `lj.datasets.multiregion(seed, edges=((0, 1), "
        "(1, 0)), delays=(1, 3), global_latent_dim=1)` (20 neurons per region, 100 trials), "
        "`hlds.Config(global_latent_dim=1)`",
        FEEDBACK,
        dict(global_latent_dim=1),
    ),
    "feedback-60": (
        "the feedback loop with 60 neurons per region: `lj.datasets.multiregion(seed, "
        "edges=((0, 1), (1, 0)), delays=(1, 3), global_latent_dim=1, neurons_per_region=60)` "
        "(100 trials), `hlds.Config(global_latent_dim=1)`",
        dict(FEEDBACK, neurons_per_region=60),
        dict(global_latent_dim=1),
    ),
    "feedback-60-variational": (
        "the feedback loop with 60 neurons per region, variational E-step: "
        "`lj.datasets.multiregion(seed, edges=((0, 1), (1, 0)), delays=(1, 3), "
        "global_latent_dim=1, neurons_per_region=60)` (100 trials), "
        "`hlds.Config(global_latent_dim=1, approximation='variational')`",
        dict(FEEDBACK, neurons_per_region=60),
        dict(global_latent_dim=1, approximation="variational"),
    ),
    "modulation": (
        "modulation: `lj.datasets.multiregion(seed, condition_edges=(((0, 1), (1, 2)), "
        "((1, 2),)), num_trials=200)` (0 -> 1 in condition 0 only, 1 -> 2 in both), "
        "`hlds.Config(num_conditions=2)`",
        dict(condition_edges=(((0, 1), (1, 2)), ((1, 2),)), num_trials=200),
        dict(num_conditions=2),
    ),
}


def hlds_setting(name: str, seeds, *, write: bool) -> None:
    """`hlds` on the feedback-loop or the modulation setting of tests/test_hlds.py's slow
    tests: per seed, the (per-condition) edges and delays found against the truth."""
    description, data_options, config_options = SETTINGS[name]
    config, rows = hlds.Config(**config_options), []
    for seed in seeds:
        data = lj.datasets.multiregion(seed=seed, **data_options)
        start = time.perf_counter()
        result = lj.fit(config, data.trials, progress=False)
        seconds = time.perf_counter() - start
        post = lj.infer(result, data.trials)
        truth = data.truth
        if name == "modulation":
            found = "; ".join(
                f"c{c}: {s}->{r} (d={post.delays[s, r]})"
                for c, s, r in np.argwhere(post.condition_edges)
            )
            edges_ok = np.array_equal(post.condition_edges, truth["condition_coupling"] > 0)
            extra = ", ".join(f"{p:.2f}" for p in post.condition_inclusion[:, 0, 1])
        else:  # a feedback setting
            found = edge_list(post)
            edges_ok = np.array_equal(post.edges, truth["coupling"] > 0)
            loadings = truth["params"]["readout"][truth["latent_slices"]["global"]].T
            angles = subspace_angles(np.asarray(post.global_loadings), np.asarray(loadings))
            extra = f"{np.degrees(angles.max()):.1f}"
        delays_ok = edges_ok and np.array_equal(post.delays, truth["delays"])
        rows.append(
            f"| {seed} | {found} | {'yes' if edges_ok else 'no'} | "
            f"{'yes' if delays_ok else 'no'} | {extra} | {seconds:.0f} |"
        )
        print(rows[-1], flush=True)
    extra_name = (
        "0 -> 1 inclusion (condition 0, 1)"
        if name == "modulation"
        else "global loadings' largest subspace angle (degrees)"
    )
    table = "\n".join(
        [
            f"| seed | edges found (delay) | exact edges | exact edges and delays | {extra_name} | "
            "seconds per fit |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    text = (
        f"## hlds: {name}\n\n`python scripts/multiregion_recovery.py --family hlds-{name}`: "
        f"{description}; seconds of `lj.fit` including compilation.\n\n"
        f"{table}\n\nMachine: {machine()}.\n"
    )
    print(text)
    if write:
        write_section(REPORT, f"hlds_{name}", text, "Multi-region benchmarks")


FEEDBACK_PAIRS = {20: ((1, 3), (1, 2), (1, 1)), 60: ((1, 3), (1, 2))}
"""Neurons per region -> the (0 -> 1, 1 -> 0) delays compared by `feedback_evidence`, the
truth first: the search's usual answers at 20 neurons are (1, 1) and at 60 (1, 2)."""


def feedback_evidence(neurons: int, seeds, *, write: bool, steps: int = 100) -> None:
    """Whether the feedback loop's delays are in the data at all: per seed, EM with the
    structure fixed at each pair of delays (no search; the variational lower bound on log
    p(y), which EM raises monotonically, so the fits are comparable)."""
    config = hlds.Config(global_latent_dim=1, approximation="variational", search_start=steps)
    fitter = hlds.fitter(dataclasses.replace(config, train=lj.train.TrainConfig(steps=steps)))
    step = jax.jit(fitter.step)
    pairs, rows = FEEDBACK_PAIRS[neurons], []
    for seed in seeds:
        data = lj.datasets.multiregion(seed=seed, neurons_per_region=neurons, **FEEDBACK)
        bounds, gains = [], []
        for forward, backward in pairs:
            params = hlds.init(jax.random.PRNGKey(0), config, data.trials)
            excluded = np.ones(params.excluded.shape, np.float32)
            excluded[0, 1, config.delays.index(forward)] = 0.0
            excluded[1, 0, config.delays.index(backward)] = 0.0
            state = fitter.init(params._replace(excluded=jnp.asarray(excluded)), data.trials)
            trace = []
            for _ in range(steps):
                state, info = step(state, data.trials, None)
                trace.append(float(info["log_likelihood"]))
            bounds.append(trace[-1])
            gains.append(trace[-1] - trace[-11])
        gaps = " | ".join(f"{bound - bounds[0]:+.1f}" for bound in bounds[1:])
        best = pairs[int(np.argmax(bounds))]
        rows.append(
            f"| {seed} | {data.truth['coupling'][0, 1]:.2f} | {bounds[0]:.1f} | {gaps} | "
            f"{'yes' if best == pairs[0] else 'no'} | {max(gains):.1f} |"
        )
        print(rows[-1], flush=True)
    others = " | ".join(f"({f}, {b}) minus truth" for f, b in pairs[1:])
    text = (
        f"## hlds: feedback at {neurons} neurons per region, evidence for the delays\n\n"
        f"`python scripts/multiregion_recovery.py --family hlds-feedback-evidence --neurons "
        f"{neurons}`: the feedback data (`lj.datasets.multiregion(seed, edges=((0, 1), (1, 0)), "
        f"delays=(1, 3), global_latent_dim=1, neurons_per_region={neurons})`; true delays "
        f"0 -> 1: 1, 1 -> 0: 3), EM for {steps} iterations with the edges fixed at each pair "
        "of delays and no search, `hlds.Config(global_latent_dim=1, "
        "approximation='variational')`; the variational lower bound on log p(y) (nats) at "
        "the end, and the largest gain of any of the seed's fits over its last 10 iterations "
        "(how far from converged the comparison is). The coupling column is each edge's "
        "strength (spectral norm of B) in the data: the dataset scales the loop's two edges "
        "from `coupling_strength=0.5` down until the whole system's spectral radius is below "
        "`max_radius` (0.98), to a third to a half of the chain's 0.5.\n\n"
        f"| seed | coupling of each edge | bound at the true (1, 3) | {others} | truth best | "
        f"largest gain over the last 10 iterations |\n|{'---|' * (len(pairs) + 4)}\n"
        + "\n".join(rows)
        + f"\n\nMachine: {machine()}.\n"
    )
    print(text)
    if write:
        write_section(
            REPORT, f"hlds_feedback_evidence_{neurons}", text, "Multi-region benchmarks"
        )


def dlag_recovery(seeds, *, write: bool) -> None:
    """`dlag` (`DLAG_CHANGES`) at the dataset's defaults: per seed, the delays of regions 1 and
    2 relative to region 0 of every across latent, at initialisation and fitted, the lags they
    imply between the regions of each true edge, and the seconds of `lj.fit`. DLAG has no
    directed coupling, so a seed counts when some across latent has every true edge's target
    lagging its source by the true delay (lags rounded to whole bins)."""
    rows = []
    for seed in seeds:
        data = lj.datasets.multiregion(seed=seed)
        config = dlag.Config(**DLAG_CHANGES)
        # the initial delays (lagged correlations) do not depend on the key
        initial = np.asarray(dlag.init(jax.random.PRNGKey(0), config, data.trials).delays)
        initial = initial / data.trials.dt
        start = time.perf_counter()
        result = lj.fit(config, data.trials, progress=False)
        seconds = time.perf_counter() - start
        posterior = lj.infer(result, data.trials)
        delays = np.asarray(posterior.delays_bins)  # [R, A], row 0 = 0
        true_edges = np.argwhere(data.truth["coupling"] > 0)
        true_lags = [int(data.truth["delays"][s, r]) for s, r in true_edges]
        lags = np.stack([delays[r] - delays[s] for s, r in true_edges])  # [edges, A]
        recovered = np.any(np.all(np.rint(lags) == np.asarray(true_lags)[:, None], axis=0))

        log_likelihood = np.asarray(result.history["log_likelihood"])
        rows.append(
            f"| {seed} | {per_latent(initial[1:])} | {per_latent(delays[1:])} | "
            f"{per_latent(lags)} | {'yes' if recovered else 'no'} | "
            f"n/a (no directed edges) | "
            f"{', '.join(f'{1e3 * t:.0f}' for t in np.asarray(posterior.timescales))} | "
            f"{(log_likelihood[-1] - log_likelihood[-2]):.0f} | {seconds:.0f} |"
        )
        print(rows[-1], flush=True)
    edge_names = ", ".join(f"{s} -> {r}" for s, r in np.argwhere(data.truth["coupling"] > 0))
    table = "\n".join(
        [
            "| seed | initial delays of regions 1, 2 (bins) | fitted delays of regions 1, 2 "
            f"(bins) | implied lags of {edge_names} (bins) | true pairwise lags recovered | "
            "exact edges | across timescale (ms) | log-likelihood gain over the last 10 "
            "iterations | seconds per fit |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    changes = ", ".join(f"{k}={v}" for k, v in DLAG_CHANGES.items())
    text = (
        "## dlag: across-region delays from spike counts at the dataset's defaults\n\n"
        "`python scripts/multiregion_recovery.py --family dlag`: the data and seeds of the "
        "hlds table above (`lj.datasets.multiregion` at its defaults: 3 regions, 20 neurons "
        "each, 100 trials x 100 bins, edges 0 -> 1 with delay 2 and 1 -> 2 with delay 1). DLAG "
        "has no directed coupling: it fits across-region latents, each seen by every region "
        "with its own delay relative to region 0 (`delays_bins`; > 0 where the region lags "
        "region 0), plus within-region latents, so there are no edges to compare. A seed "
        'counts as "true pairwise lags recovered" when one across latent has region 1 '
        "lagging region 0 by the true 2 bins and region 2 lagging region 1 by the true 1 bin "
        "(each lag, a difference of fitted delays, rounded to the nearest bin), i.e. fitted "
        "delays near (2, 3). Delays are listed per across latent, as (region 1, region 2) "
        "relative to region 0; the initial delays are `dlag.init`'s (peak of the lagged "
        "correlations between the regions' projections), where EM starts.\n\n"
        f"Config: `lj.multiregion.dlag.Config({changes})`, "
        "otherwise the defaults: 200 EM iterations, delays bounded by 0.1 s (10 bins), square "
        "root of the counts. The GP noise variance is raised from the default 1e-3 because with "
        "1e-3 the posterior ties every region's copy of the across latent to the current "
        "delays and EM hardly moves them, so the table would show the initialisation; with "
        "0.1 EM moves them (compare the initial and fitted columns); the log-likelihood "
        "column is its gain over the last 10 of the 200 iterations. One across latent, as in "
        "the default: region 0's latent reaches region 1 (2 bins later) and through it region "
        "2 (3 bins later), one signal seen by all three regions, and each further latent makes "
        "an iteration several times slower (the E-step is cubic in (across_dim + within_dim) x "
        "regions x bins). Seconds of `lj.fit` including "
        "compilation (timings on the shared 2-core machine vary several-fold with the other "
        "jobs' load).\n\n"
        f"{table}\n\nMachine: {machine()}.\n"
    )
    print(text)
    if write:
        write_section(REPORT, "dlag_recovery", text, "Multi-region benchmarks")


def edge_list(posterior) -> str:
    """The posterior's edges with their delays, as `s->r (d=...)`."""
    edges = np.argwhere(posterior.edges)
    return ", ".join(f"{s}->{r} (d={posterior.delays[s, r]})" for s, r in edges)


def per_latent(values) -> str:
    """`[rows, A]` values as one parenthesised tuple of rows per across latent."""
    values = np.asarray(values)
    return "; ".join("(" + ", ".join(f"{v:.1f}" for v in column) + ")" for column in values.T)


if __name__ == "__main__":
    main()
