"""Every family on real data: NLB MC_Maze_Small (test split), co-bps over seeded splits.

Data: ../shared/data/mc_maze_small_test (DANDI:000140; Churchland et al. 2010, 2012; Pei et
al. 2021, CC-BY-4.0), `lj.io.load_nwb(path, bin_size=0.005, align="move_onset_time",
window=(-0.25, 0.45))`: 100 trials x 140 bins x 107 neurons. For each seed, trials are split
80/20 and 20% of the neurons held out (scripts/_lfads_eval.py); every model sees only the
held-in neurons of the test trials. Smoothing picks its kernel and GLM penalty by the held-out
likelihood on a validation part of the training trials (as nlb_tools' baseline search) and
predicts held-out neurons with its own GLM; LFADS predicts them itself (`n_heldout`); GPFA,
LDS, PLDS, seqvae and node are read out by a Poisson GLM from their latents. Writes
benchmarks/mc_maze_small.md and the README's `mc-maze-small` section (both rewritten after
every seed, so an interrupted run leaves the seeds it finished).

    python scripts/mc_maze_small.py            # 5 seeds, over an hour on 2 busy shared cores
    python scripts/mc_maze_small.py --quick    # tiny sizes, 2 seeds, prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import pathlib
import time

import jax
import numpy as np
from _lfads_eval import glm_co_bps, split
from _report import BENCHMARKS, machine, write_section

import latentjax as lj
from latentjax.models import gpfa, lds, lfads, node, plds, seqvae, smoothing
from latentjax.train import TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/mc_maze_small_test"
FAMILIES = ("smoothing", "gpfa", "lds", "plds", "lfads", "seqvae", "node")
KERNELS = (0.02, 0.03, 0.05, 0.08)  # seconds
ALPHAS = (0.01, 0.1, 1.0, 10.0)  # GLM ridge; 0.01 (nlb_tools' default) overfits 64 trials


def settings(quick: bool) -> dict:
    """Per family, in the order they run: (config, steps, label). Sizes fit ~70 min on 2
    shared cores; gradient families stop early on validation."""

    def adam(lr, steps, chunk):
        return TrainConfig(learning_rate=lr, batch_size=32, steps=steps, grad_clip=200.0,
                           chunk_size=chunk, patience=3)  # fmt: skip

    if quick:
        return {
            "smoothing": (smoothing.Config(), 10, "kernel and alpha by validation"),
            "lds": (lds.Config(latent_dim=2, transform="sqrt"), 3, "2 latents, 3 EM"),
            "plds": (plds.Config(latent_dim=2), 2, "2 latents, 2 EM"),
            "seqvae": (seqvae.Config(encoder_dim=8, generator_dim=8, initial_dim=4,
                                     latent_dim=4, kl_ramp_steps=5, train=adam(3e-3, 10, 5)),
                       10, "width 8, 4 latents"),
            "lfads": (lfads.Config.preset("tiny", train=adam(4e-3, 10, 5)), 10, "tiny preset"),
            "node": (node.Config(latent_dim=2, hidden_dim=8, encoder_dim=8, time_scale=10.0,
                                 kl_ramp_steps=2, train=adam(3e-3, 4, 2)), 4, "width 8"),
            "gpfa": (gpfa.Config(latent_dim=2), 2, "2 latents, 2 EM iterations"),
        }  # fmt: skip
    ramps = dict(kl_ramp_steps=300, l2_ramp_steps=300)
    return {
        "smoothing": (smoothing.Config(), 20,
                      f"kernel s.d. x GLM alpha chosen from {_grid(KERNELS)}"),
        "lds": (lds.Config(latent_dim=8, transform="sqrt"), 50,
                "Gaussian on square-root counts, 8 latents, 50 EM iterations"),
        "plds": (plds.Config(latent_dim=8), 20, "Poisson, 8 latents, 20 EM iterations"),
        "seqvae": (seqvae.Config(latent_dim=8, kl_ramp_steps=200, train=adam(3e-3, 400, 100)),
                   400, "GRUs of 64, 8 latents, KL ramp 200"),
        "lfads": (lfads.Config.preset("nlb_mc_maze", **ramps, train=adam(4e-3, 400, 100)), 400,
                  "`nlb_mc_maze` preset, KL and L2 ramps 300 steps"),
        "node": (node.Config(latent_dim=8, hidden_dim=32, encoder_dim=32, time_scale=10.0,
                             kl_ramp_steps=50, train=adam(3e-3, 200, 50)), 200,
                 "width 32, 8 latents, time_scale 10, tsit5, KL ramp 50"),
        "gpfa": (gpfa.Config(latent_dim=8), 100, "8 latents, 100 EM iterations"),
    }  # fmt: skip


def _label(config, steps: int, label: str) -> str:
    train = config.train
    if train.patience is None:
        return label
    return (f"{label}, at most {steps} steps of batch {train.batch_size}, lr "
            f"{train.learning_rate:g}, validation every {train.chunk_size}, patience "
            f"{train.patience}")  # fmt: skip


def _grid(kernels) -> str:
    return (", ".join(f"{1000 * x:.0f}" for x in kernels) + " ms x alpha "
            + ", ".join(f"{a:g}" for a in ALPHAS))  # fmt: skip


def _heldin(trials: lj.Trials, n_heldout: int) -> lj.Trials:
    return trials.select_neurons(slice(0, trials.num_neurons - n_heldout))


def run_family(name: str, config, steps: int, s, inner, valid, seed: int, kernels) -> dict:
    """One family on one split: {co_bps, seconds, note}; `inner`/`valid` split `s.train`."""
    n_out = s.n_heldout
    train_out = np.asarray(s.train.spikes)[..., -n_out:]
    test_out = np.asarray(s.test_heldout.spikes)
    start = time.perf_counter()
    note = ""
    if name == "smoothing":
        config = dataclasses.replace(
            config, heldout_neurons=tuple(range(s.train.num_neurons - n_out, s.train.num_neurons))
        )
        grid = {"kernel_sd": list(kernels), "alpha": list(ALPHAS)}
        grid = lj.sweep(config, inner, valid=valid, grid=grid, steps=steps, progress=False)
        best = lj.best(grid)
        chosen, alpha = best.config.kernel_sd, float(np.asarray(best.history["alpha"]).ravel()[-1])
        config = dataclasses.replace(config, kernel_sd=chosen, alpha=alpha)
        result = lj.fit(config, s.train, steps=steps, progress=False)
        rates = np.asarray(lj.infer(result, s.test_heldin).heldout_rates)
        seconds = time.perf_counter() - start
        return dict(co_bps=lj.metrics.co_bps(rates, test_out), seconds=seconds,
                    note=f"kernel {1000 * chosen:.0f} ms, alpha {alpha:g}")  # fmt: skip
    if name == "lfads":
        config = dataclasses.replace(config, n_heldout=n_out)
        result = lj.fit(config, inner, valid=valid, seed=seed, steps=steps, progress=False)
        seconds = time.perf_counter() - start
        rates = np.asarray(lj.infer(result, s.test_heldin, seed=seed, n_samples=20).rates)
        note = _stopped(result)
        return dict(co_bps=lj.metrics.co_bps(rates[..., -n_out:], test_out), seconds=seconds,
                    note=note)  # fmt: skip
    heldin = _heldin(s.train, n_out)
    if name in ("seqvae", "node"):
        result = lj.fit(config, _heldin(inner, n_out), valid=_heldin(valid, n_out), seed=seed,
                        steps=steps, progress=False)  # fmt: skip
        note = _stopped(result)
    else:
        result = lj.fit(config, heldin, seed=seed, steps=steps, progress=False)
    seconds = time.perf_counter() - start
    latents = [np.asarray(lj.infer(result, t).latents) for t in (heldin, s.test_heldin)]
    co = glm_co_bps(latents[0], train_out, latents[1], test_out)
    return dict(co_bps=co, seconds=seconds, note=note)


def _stopped(result) -> str:
    """`best step b of n` from the fit's history (validation every chunk)."""
    history = result.history
    valid = np.asarray(history.get("valid_loss", []), float)
    steps = np.asarray(history.get("valid_step", history.get("step", [])))
    if valid.size and steps.size == valid.size and np.isfinite(valid).any():
        last = int(np.asarray(history["step"])[-1]) if "step" in history else int(steps[-1])
        return f"best step {int(steps[np.nanargmin(valid)])} of {last}"
    return ""


def _mean_sd(values) -> str:
    values = np.asarray(values, float)
    if np.isnan(values).all():
        return "failed"
    finite = int(np.isfinite(values).sum())
    text = f"{np.nanmean(values):.3f}"
    text += f" ± {np.nanstd(values, ddof=1):.3f}" if finite > 1 else ""
    return text + (
        f" ({finite} of {values.size} seeds; the others failed)" if finite < values.size else ""
    )


def tables(rows: list[dict], labels: dict) -> tuple[list[str], list[str]]:
    """(summary table, per-seed table) in markdown lines."""
    summary = ["| model | co-bps (mean ± s.d.) | fp-bps | fit seconds (mean ± s.d.) |",
               "|---|---|---|---|"]  # fmt: skip
    for family in [f for f in FAMILIES if any(r["family"] == f for r in rows)]:
        mine = [r for r in rows if r["family"] == family]
        seconds = np.array([r["seconds"] for r in mine])
        spread = f" ± {np.nanstd(seconds, ddof=1):.0f}" if len(mine) > 1 else ""
        summary.append(
            f"| {family} ({labels[family]}) | {_mean_sd([r['co_bps'] for r in mine])} | - | "
            f"{np.nanmean(seconds):.0f}{spread} |"
        )
    per_seed = ["| seed | model | co-bps | fit seconds | note |", "|---|---|---|---|---|"]
    rows = sorted(rows, key=lambda r: (r["seed"], FAMILIES.index(r["family"])))
    per_seed += [f"| {r['seed']} | {r['family']} | {r['co_bps']:.3f} | {r['seconds']:.0f} | "
                 f"{r['note']} |" for r in rows]  # fmt: skip
    return summary, per_seed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 seeds, no writing")
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    seeds = args.seeds if args.seeds is not None else ([0, 1] if args.quick else [0, 1, 2, 3, 4])
    write = not (args.quick or args.no_write)
    kernels = KERNELS[1:3] if args.quick else KERNELS
    # fits of the same shapes recompile for every seed; the persistent cache reuses them
    jax.config.update("jax_compilation_cache_dir", "/tmp/latentjax_mc_maze_small_cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

    path = next(DATA.glob("*.nwb"))
    trials = lj.io.load_nwb(path, bin_size=0.005, align="move_onset_time", window=(-0.25, 0.45))
    families = {k: v for k, v in settings(args.quick).items() if k in args.families}
    labels = {k: _label(*v) for k, v in families.items()}
    rows: list[dict] = []
    started = time.perf_counter()
    for seed in seeds:
        s = split(trials, seed=seed)
        inner, valid = lj.data.split(s.train, (0.8, 0.2), seed=seed)
        for family, (config, steps, _) in families.items():
            print(f"seed {seed}: {family}", flush=True)
            try:
                row = run_family(family, config, steps, s, inner, valid, seed, kernels)
            except Exception as err:  # a family failing is reported, not fatal
                print(f"{family} failed: {err!r}", flush=True)
                row = dict(co_bps=float("nan"), seconds=float("nan"), note=f"failed: {err!r}")
            rows.append(dict(seed=seed, family=family, **row))
            print(rows[-1], flush=True)
        report(rows, labels, args, trials, path, s, inner, valid, seeds, started, write)


def report(rows, labels, args, trials, path, s, inner, valid, seeds, started, write):
    """Print the tables and (unless quick) write benchmarks/mc_maze_small.md and the README."""
    done = sorted({r["seed"] for r in rows})
    summary, per_seed = tables(rows, labels)
    command = "python scripts/mc_maze_small.py" + " --quick" * args.quick
    unfinished = "" if done == sorted(seeds) else f" (of {len(seeds)} planned; run unfinished)"
    protocol = (
        f"Seeds {', '.join(map(str, done))}{unfinished}: for each, `lj.data.split` 80/20 of the "
        f"trials ({s.train.num_trials} train / {s.test_heldin.num_trials} test) and "
        f"{s.n_heldout} of {trials.num_neurons} neurons held out (`lj.data.heldout_neurons`), "
        "both drawn with the seed; our own split, not the NLB leaderboard's. Models see only "
        "the held-in neurons of the test trials; co-bps (`lj.metrics.co_bps`) scores the "
        "held-out neurons of the test trials. Spike smoothing (`lj.models.smoothing`) picks "
        "its kernel s.d. by the held-out neurons' likelihood on a validation part "
        f"({valid.num_trials} trials) of the training trials, its GLM fitted on the other "
        f"{inner.num_trials} (as nlb_tools' baseline search), then refits on all training "
        "trials. GPFA, LDS and PLDS (EM) are fitted to the held-in neurons of all training "
        f"trials. LFADS, seqvae and node are trained on the same {inner.num_trials} trials "
        "(LFADS on all their neurons, predicting the held-out ones itself through `n_heldout`; "
        "seqvae and node on the held-in ones), each keeping the parameters of its best "
        f"validation loss on the other {valid.num_trials} (validation every chunk of steps, "
        "early stop after `patience` chunks without improvement; sizes in the table). The "
        "latents (posterior means) of GPFA, LDS, PLDS, seqvae and node feed one Poisson GLM "
        "per held-out neuron (scikit-learn, alpha 1e-2, standardised latents) fitted on all "
        "training trials. "
        "Fit seconds: training (and the kernel search) only, wall clock."
    )
    fp = (
        "fp-bps is not defined on this file for any family: the test split's trials stop 450 ms "
        "after movement onset and the file holds no spikes after that (the NLB keeps the "
        "forward-prediction bins in its evaluation data, which is not shared here). LFADS "
        "(`forward_bins`) and node (`lj.infer(..., times=...)`) could forecast, LDS and PLDS "
        "through their fitted dynamics."
    )
    data = (
        f"Data: {trials!r}, from {path.name} (DANDI:000140; Churchland et al. 2010, 2012; Pei "
        "et al. 2021), aligned to movement onset, -250 to +450 ms, 5 ms bins."
    )
    elapsed = f"Whole run {(time.perf_counter() - started) / 60:.0f} minutes."
    text = "\n".join(
        [f"## MC_Maze_Small: every family, {len(done)} seeded splits (`{command}`)", "", data, "",
         protocol, "", fp, "", f"Machine: {machine()}. {elapsed}", "", *summary, "",
         "Per seed:", "", *per_seed]
    )  # fmt: skip
    print(text, flush=True)
    if not write:
        return
    write_section(BENCHMARKS / "mc_maze_small.md", "mc-maze-small", text, "MC_Maze_Small")
    readme = "\n".join(
        [f"- MC_Maze_Small test split, 5 ms bins, our own seeded splits (80/20 trials, "
         f"{s.n_heldout} of {trials.num_neurons} neurons held out; not comparable to the "
         f"leaderboard), co-bps mean ± s.d. over seeds {', '.join(map(str, done))}{unfinished} "
         f"and fit seconds on the 2-core CPU (`scripts/mc_maze_small.py`, "
         f"`benchmarks/mc_maze_small.md`, {datetime.date.today()}); fp-bps cannot be computed "
         "on this file (no spikes after each trial's window):",
         "", *("  " + line for line in summary)]
    )  # fmt: skip
    write_section(ROOT / "README.md", "mc-maze-small", readme, "latentjax")


if __name__ == "__main__":
    main()
