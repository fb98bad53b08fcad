"""Contrastive embeddings: `lj.models.contrastive` side by side with the `cebra` package.

Data: the head-direction recording in ../shared/data/peyrache_hd (Peyrache et al. 2015, Nat
Neurosci; mouse anterodorsal thalamus, wake, 19 neurons, 10 ms bins): the first 80% of the
wake bins train, the last 20% are held out. Behaviour: (cos, sin) of the head angle.

Same settings for both: output dimension 3 on the sphere (cosine distance), 32 hidden units,
a receptive field of 10 bins (cebra's "offset10-model"; latentjax `window=10`), batch of 512
references (and 512 negatives), InfoNCE at temperature 1, the "delta" conditional (positive:
the bin whose behaviour is nearest to the reference's plus N(0, 0.1^2) noise), time offset
10, Adam(W) with the same learning rate and no weight decay, the same number of steps; seeds
0, 1, 2. Differences that remain: cebra's model has 3 residual hidden layers (latentjax's
`conv` encoder 1); cebra searches the nearest behaviour over all training bins, latentjax over
`num_candidates` bins drawn per step; latentjax cuts the recording into trials of 500 bins
(no window crosses a cut), cebra reads it as one stream.

Scores on the held-out bins: median |error| of the head angle decoded by k-NN (k = 32,
Euclidean metric: the cosine order on the sphere; circular mean; `lj.geometry.knn_decode`) from
the training embedding; consistency across the 3 seeds (`lj.metrics.consistency`, affine R²
averaged over ordered pairs); Betti numbers (`lj.geometry.betti`) of the held-out embedding at
non-overlapping windows (every 10th bin). Time per step: latentjax's whole training step
(sampling, loss, gradient, AdamW update) under `jax.jit`, timed over repeated calls after
compilation; cebra's `fit` (its documented path, `device="cpu"`): the wall time of a fit less
that of a fit of a tenth of the steps, over the difference in steps. Both on the CPU.

    python scripts/bench_cebra.py [--steps 2000] [--seeds 0 1 2] [--bins 50000]

On a shared 2-core CPU cebra's "delta" steps took seconds each on the whole recording (its
nearest-behaviour search spans every training bin), so the committed table uses `--bins`.

Needs `pip install cebra` (the `bench` extra).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cebra
import jax
import numpy as np
import scipy.io
import torch
from _report import BENCHMARKS, PACKAGES, machine, seconds_per_step, write_section

import latentjax as lj
from latentjax.models import contrastive
from latentjax.train.gradient import FamilyGradientFitter

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "peyrache_hd" / "dataHD.mat"
BINS_PER_TRIAL = 500


def load(path: Path, bins: int | None = None):
    """(train counts [bins, 19], train angle [bins], test counts, test angle) of the first
    `bins` wake bins (None: all)."""
    data = scipy.io.loadmat(path)
    counts, angle = data["Qrun"][:bins].astype(np.float32), data["angRun"][:bins, 1]
    usable = counts.shape[0] // BINS_PER_TRIAL * BINS_PER_TRIAL
    split = int(0.8 * usable) // BINS_PER_TRIAL * BINS_PER_TRIAL
    return counts[:split], angle[:split], counts[split:usable], angle[split:usable]


def as_trials(counts, angle) -> lj.Trials:
    shape = (-1, BINS_PER_TRIAL)
    behavior = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    return lj.Trials(
        counts.reshape(*shape, counts.shape[-1]), dt=0.01, behavior=behavior.reshape(*shape, 2)
    )


def scores(train_z, test_z, train_angle, test_angle) -> dict:
    predicted = lj.geometry.knn_decode(train_z, train_angle, test_z, n_neighbors=32, circular=True)
    error = np.degrees(np.median(np.abs(np.angle(np.exp(1j * (predicted - test_angle))))))
    return {"error": float(error), "betti": lj.geometry.betti(test_z[::10], seed=0)}


def latentjax_step_seconds(config, trials, repeats: int = 100) -> float:
    """Seconds per training step: the engine's gradient Fitter step under `jax.jit`."""
    fitter = FamilyGradientFitter(contrastive.loss)(config)
    trials = jax.device_put(trials)  # on the device once, as inside `lj.fit`
    params = contrastive.init(jax.random.PRNGKey(0), config, trials)
    state = fitter.init(params, trials)
    step = jax.jit(fitter.step)
    keys = jax.random.split(jax.random.PRNGKey(1), repeats + 1)
    return seconds_per_step(step, state, trials, keys, warmup=1)


def run_latentjax(args, train, test, train_angle, test_angle):
    config = contrastive.Config(
        output_dim=3, hidden_dim=32, window=10, encoder="conv", distance="cosine",
        positives="delta", time_offset=10, delta=0.1, batch_points=512, num_candidates=4096,
        temperature=1.0,
        train=lj.train.TrainConfig(learning_rate=args.lr, steps=args.steps, chunk_size=500),
    )  # fmt: skip
    train_trials, test_trials = as_trials(train, train_angle), as_trials(test, test_angle)
    start = time.perf_counter()
    population = lj.sweep(config, train_trials, seeds=tuple(args.seeds), progress=False)
    fit_seconds = time.perf_counter() - start
    runs = []
    for member in population:
        train_z = lj.infer(member, train_trials).latents.reshape(-1, 3)
        test_z = lj.infer(member, test_trials).latents.reshape(-1, 3)
        runs.append({"test_z": test_z, **scores(train_z, test_z, train_angle, test_angle)})
    params = sum(x.size for x in jax.tree.leaves(population[0].params))
    step = latentjax_step_seconds(config, train_trials)
    return runs, {"step": step, "fit": fit_seconds, "params": params}


def cebra_model(args, steps: int):
    return cebra.CEBRA(
            model_architecture="offset10-model", device="cpu", distance="cosine",
            conditional="delta", delta=0.1, temperature=1.0, time_offsets=10,
            max_iterations=steps, batch_size=512, learning_rate=args.lr,
            output_dimension=3, num_hidden_units=32, verbose=False,
        )  # fmt: skip


def run_cebra(args, train, test, train_angle, test_angle):
    """Seeds one after the other; seconds per step from the first seed's fit less a fit of a
    tenth of the steps (cebra's set-up, e.g. of its behaviour index, is not a step)."""
    behaviour = np.stack([np.cos(train_angle), np.sin(train_angle)], axis=-1)
    short = max(args.steps // 10, 1)
    start = time.perf_counter()
    cebra_model(args, short).fit(train, behaviour)
    short_seconds = time.perf_counter() - start
    runs, seconds = [], []
    for seed in args.seeds:
        torch.manual_seed(seed)
        np.random.seed(seed)  # noqa: NPY002 (cebra draws its batches from NumPy's global state)
        model = cebra_model(args, args.steps)
        start = time.perf_counter()
        model.fit(train, behaviour)
        seconds.append(time.perf_counter() - start)
        train_z, test_z = model.transform(train), model.transform(test)
        runs.append({"test_z": test_z, **scores(train_z, test_z, train_angle, test_angle)})
    params = sum(p.numel() for p in model.model_.parameters())
    step = (seconds[0] - short_seconds) / (args.steps - short)
    return runs, {"step": step, "fit": sum(seconds), "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--bins", type=int, default=None, help="first wake bins used (all)")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    train, train_angle, test, test_angle = load(args.data, args.bins)

    rows = []
    for name, run in (("latentjax contrastive", run_latentjax), ("cebra", run_cebra)):
        print(f"{name}: fitting seeds {args.seeds}", flush=True)
        runs, timing = run(args, train, test, train_angle, test_angle)
        consistency = lj.metrics.consistency([r["test_z"] for r in runs])
        rows.append((name, runs, timing, consistency))

    header = (
        "| package | parameters | median held-out angle error (deg), per seed | Betti (b0, b1) "
        "per seed | consistency across seeds (mean affine R²) | seconds per step | fit seconds, "
        "all seeds |\n|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for name, runs, timing, consistency in rows:
        errors = ", ".join(f"{r['error']:.1f}" for r in runs)
        betti = ", ".join(str(r["betti"]) for r in runs)
        lines.append(
            f"| {name} | {timing['params']} | {errors} | {betti} | {consistency.mean:.3f} | "
            f"{timing['step'] * 1e3:.1f} ms | {timing['fit']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    text = (
        "## Head direction (Peyrache et al. 2015): latentjax vs cebra\n\n"
        f"`python scripts/bench_cebra.py --steps {args.steps} --seeds "
        f"{' '.join(map(str, args.seeds))} --lr {args.lr}"
        f"{'' if args.bins is None else f' --bins {args.bins}'}`: the first "
        f"{train.shape[0] + test.shape[0]} wake bins, {train.shape[0]} training bins, "
        f"{test.shape[0]} held-out bins, 19 neurons; settings and scores as in the script's "
        "docstring (behaviour 'delta' conditional, output dimension 3, cosine, temperature 1, "
        f"batch 512, time offset 10, {args.steps} steps, learning rate {args.lr}). latentjax "
        "trains its seeds as one vmapped `lj.sweep` population (its fit seconds include "
        "compilation); its seconds per step are one member's jitted step. cebra fits its seeds "
        "one after the other; its seconds per step are the first seed's fit wall time less that "
        "of a fit of a tenth of the steps, over the difference in steps (its set-up excluded; "
        f"torch threads: {torch.get_num_threads()}).\n\n"
        f"{table}\n\n"
        f"{machine((*PACKAGES, 'cebra', 'torch'))}"
    )
    write_section(BENCHMARKS / "embeddings.md", "cebra_hd", text, "Contrastive embeddings")
    print(f"wrote {BENCHMARKS / 'embeddings.md'}")


if __name__ == "__main__":
    main()
