"""Recurrent SLDS on NASCAR: latentjax side by side with ssm (Linderman lab, Laplace-EM).

Both fit the same simulated trials (`lj.datasets.nascar`, Gaussian: 10 neurons; Poisson:
30 neurons, exp link) with K=4 states, D=2 latents, recurrent transitions and the same number
of EM iterations; each starts from its own initialisation (ours: PCA + Kalman smoother,
k-means and an AR-HMM with restarts; ssm: its `initialize`, an AR-HMM on the inverted
emissions, with the same number of restarts). Reported: state accuracy of the most likely
path against the true states after the best relabelling (all trials, in sample), latent R²
of the best affine map (`lj.metrics.latent_r2`), seconds per EM iteration (ours: the
compiled step, best of repeats, compile excluded; ssm: its fit loop divided by the
iterations) and the total wall time of each fit (ours: including compilation).

Usage: `python scripts/bench_ssm.py [--quick] [--num-trials N] [--iters I] [--out FILE]`
(`--quick`: 20 trials and 10 iterations, no file written unless `--out` is given; otherwise
`benchmarks/switching.md`). ssm's Laplace-EM takes seconds per iteration on 2 cores: the
default sizes (50 trials, 50 iterations) take about an hour. Needs `ssm` installed
from a checkout of github.com/lindermanlab/ssm (`pip install --no-build-isolation .`, with
Cython, autograd and numba); without it only our rows are printed, with the reason.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time

import jax
import numpy as np
from _report import BENCHMARKS, machine, write_section
from scipy.optimize import linear_sum_assignment

import latentjax as lj
from latentjax.models import slds

NUM_STATES, LATENT_DIM = 4, 2


def accuracy(found, truth):
    size = int(max(np.max(found), np.max(truth))) + 1
    confusion = np.zeros((size, size))
    np.add.at(confusion, (np.ravel(found), np.ravel(truth)), 1)
    rows, columns = linear_sum_assignment(-confusion)
    return confusion[rows, columns].sum() / np.size(truth)


def run_ours(data, num_iters, restarts):
    config = slds.Config(
        num_states=NUM_STATES, latent_dim=LATENT_DIM, init_restarts=restarts,
        train=lj.train.TrainConfig(steps=num_iters, chunk_size=num_iters),
    )  # fmt: skip
    start = time.perf_counter()
    result = lj.fit(config, data.trials, progress=False)
    posterior = lj.infer(result, data.trials)
    jax.block_until_ready(posterior.latents)
    total = time.perf_counter() - start
    # one EM iteration, compiled, best of 5
    em = slds.fitter(config)
    state = jax.jit(em.init)(result.params, data.trials)
    step = jax.jit(em.step)
    jax.block_until_ready(step(state, data.trials, None))
    times = []
    for _ in range(5):
        begin = time.perf_counter()
        jax.block_until_ready(step(state, data.trials, None))
        times.append(time.perf_counter() - begin)
    return dict(
        accuracy=accuracy(np.asarray(posterior.most_likely), data.truth["states"]),
        r2=lj.metrics.latent_r2(data.truth["latents"], posterior.latents).mean,
        per_iter=min(times),
        total=total,
    )


def run_ssm(data, observations, num_iters, restarts):
    import ssm

    ys = [np.asarray(y, np.float64) for y in data.trials.spikes]
    ys = [y.astype(int) for y in ys] if observations == "poisson" else ys
    num_neurons = data.trials.num_neurons
    emissions = "poisson_orthog" if observations == "poisson" else "gaussian_orthog"
    kwargs = dict(link="log") if observations == "poisson" else {}
    np.random.seed(0)  # noqa: NPY002 (ssm draws from the global NumPy generator)
    model = ssm.SLDS(
        num_neurons, NUM_STATES, LATENT_DIM, transitions="recurrent",
        dynamics="gaussian", emissions=emissions, single_subspace=True, emission_kwargs=kwargs,
    )  # fmt: skip
    start = time.perf_counter()
    model.initialize(ys, verbose=0, num_init_restarts=restarts)
    initialised = time.perf_counter()
    _, posterior = model.fit(
        ys, method="laplace_em", variational_posterior="structured_meanfield",
        initialize=False, num_iters=num_iters, verbose=0,
    )  # fmt: skip
    fitted = time.perf_counter()
    means = [posterior.mean_continuous_states[i] for i in range(len(ys))]
    states = np.stack([model.most_likely_states(x, y) for x, y in zip(means, ys, strict=True)])
    return dict(
        accuracy=accuracy(states, data.truth["states"]),
        r2=lj.metrics.latent_r2(data.truth["latents"], np.stack(means)).mean,
        per_iter=(fitted - initialised) / num_iters,
        total=time.perf_counter() - start,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--num-trials", type=int, default=None, help="default 50 (quick: 20)")
    parser.add_argument("--iters", type=int, default=None, help="default 50 (quick: 10)")
    args = parser.parse_args()
    num_trials, num_iters = (20, 10) if args.quick else (50, 50)
    num_trials = args.num_trials or num_trials
    num_iters = args.iters or num_iters
    restarts = 4
    try:
        import ssm  # noqa: F401

        ssm_note = f"ssm {importlib.metadata.version('ssm')} (lindermanlab/ssm master, local build)"
    except ImportError as error:
        ssm_note = f"ssm not installed ({error}); only latentjax was run"
    rows = []
    for observations in ("gaussian", "poisson"):
        data = lj.datasets.nascar(seed=0, num_trials=num_trials, observations=observations)
        label = f"{observations}, {data.trials.num_neurons} neurons"
        found = {"latentjax": run_ours(data, num_iters, restarts)}
        if "not installed" not in ssm_note:
            found["ssm"] = run_ssm(data, observations, num_iters, restarts)
        for tool, numbers in found.items():
            rows.append(
                f"| {label} | {tool} | {numbers['accuracy']:.3f} | {numbers['r2']:.3f} | "
                f"{numbers['per_iter']:.3f} | {numbers['total']:.1f} |"
            )
            print(rows[-1], flush=True)
    header = (
        "| NASCAR observations | tool | state accuracy | latent R² | s / EM iteration | "
        "total s (init + fit + inference) |\n|---|---|---|---|---|---|"
    )
    text = (
        f"rSLDS, K={NUM_STATES}, D={LATENT_DIM}, {num_trials} trials x 100 bins, "
        f"{num_iters} Laplace-EM iterations each, {restarts} AR-HMM initialisation restarts "
        f"(`python scripts/bench_ssm.py {' '.join(sys.argv[1:])}`).\n\n"
        f"- machine: {machine(('jax', 'jaxlib', 'numpy', 'autograd', 'numba'))}\n"
        f"- {ssm_note}\n\n{header}\n" + "\n".join(rows)
    )
    print(text)
    out = args.out or (None if args.quick else BENCHMARKS / "switching.md")
    if out:
        write_section(out, "bench-ssm", text, "Switching dynamics: rSLDS against ssm")


if __name__ == "__main__":
    main()
