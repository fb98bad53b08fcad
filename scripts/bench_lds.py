"""Benchmark the Gaussian LDS kernels and EM against dynamax and pykalman.

Prints markdown tables and writes them to `benchmarks/lds.md`:

1. Kalman filter and RTS smoother, one trial (N=182 neurons, K=16 latents, T=1000 bins):
   ours (information form, sequential and parallel) against dynamax's `lgssm_filter` /
   `lgssm_smoother` with the full R matrix and with diagonal R, on the same data, with the
   max abs difference of the results.
2. Smoother of 100 trials sharing parameters (vmapped), us per trial-step.
3. EM iteration: ours against pykalman (T=1000, 50 neurons, 5 latents, 20 trials), and ours at
   100 trials x 140 bins x 182 neurons x 16 latents through `lj.fit` (compile counted once).
4. Sequential against parallel (associative-scan) filtering, and smoothing with the
   log-likelihood, for T from 1e3 to 1e5.

Usage: `python scripts/bench_lds.py [--quick]` (`--quick`: small sizes, no file written
unless `--out` is given).
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import os
import platform
import time
from importlib.metadata import version

import jax
import jax.numpy as jnp
import numpy as np
from _report import cpu_model

import latentjax as lj
from latentjax.models import lds


def best_time(function, *args, repeats=5, max_seconds=3.0):
    """Best wall time of one call, after a warm-up call that compiles; stops early once
    `max_seconds` have been spent (slow peers are timed once)."""
    jax.block_until_ready(function(*args))
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start_all < max_seconds):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def random_params(rng, num_latents, num_neurons):
    dynamics = rng.normal(size=(num_latents, num_latents))
    dynamics *= 0.95 / np.max(np.abs(np.linalg.eigvals(dynamics)))
    return lds.params_from_arrays(
        initial_mean=np.zeros(num_latents),
        initial_cov=np.eye(num_latents),
        dynamics=dynamics,
        dynamics_cov=0.1 * np.eye(num_latents),
        emissions=rng.normal(size=(num_neurons, num_latents)) / np.sqrt(num_latents),
        emissions_cov=rng.uniform(0.5, 1.5, num_neurons),
        emissions_bias=rng.normal(size=num_neurons),
    )


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def bench_single_trial(num_neurons, num_latents, num_bins):
    from dynamax.linear_gaussian_ssm.inference import lgssm_filter, lgssm_smoother

    rng = np.random.default_rng(0)
    params = random_params(rng, num_latents, num_neurons)
    _, y = lds.sample(params, num_bins, key=jax.random.PRNGKey(0))
    y = jnp.asarray(y)
    full_r = params._replace(
        emissions=params.emissions._replace(cov=jnp.diag(params.emissions.cov))
    )
    ours = {
        "filter": {
            p: jax.jit(lambda y, p=p: lds.filter(params, y, parallel=p, missing_entries=False))
            for p in (False, True)
        },
        "smoother": {
            p: jax.jit(lambda y, p=p: lds.smoother(params, y, parallel=p, missing_entries=False))
            for p in (False, True)
        },
    }
    peers = {
        "filter": (
            jax.jit(lambda y: lgssm_filter(full_r, y)),
            jax.jit(lambda y: lgssm_filter(params, y)),
        ),
        "smoother": (
            jax.jit(lambda y: lgssm_smoother(full_r, y)),
            jax.jit(lambda y: lgssm_smoother(params, y)),
        ),
    }
    rows = []
    for kind in ("filter", "smoother"):
        peer_full, peer_diag = peers[kind]
        reference = peer_full(y)
        ref_means = reference.filtered_means if kind == "filter" else reference.smoothed_means
        t_full = best_time(peer_full, y)
        t_diag = best_time(peer_diag, y)
        rows.append(
            [f"{kind}: dynamax, full R", f"{1e6 * t_full / num_bins:.1f}", "1.0x",
             f"{t_diag / t_full:.1f}x", "-"]
        )  # fmt: skip
        rows.append(
            [
                f"{kind}: dynamax, diagonal R",
                f"{1e6 * t_diag / num_bins:.1f}",
                f"{t_full / t_diag:.1f}x",
                "1.0x",
                "-",
            ]
        )
        for parallel in (False, True):
            function = ours[kind][parallel]
            result = function(y)
            diff_means = float(jnp.max(jnp.abs(result.means - ref_means)))
            loglik = float(reference.marginal_loglik)
            diff_ll = abs(float(result.log_likelihood) - loglik)
            t = best_time(function, y)
            name = f"{kind}: latentjax, {'parallel' if parallel else 'sequential'}"
            rows.append(
                [
                    name,
                    f"{1e6 * t / num_bins:.1f}",
                    f"{t_full / t:.1f}x",
                    f"{t_diag / t:.1f}x",
                    f"means {diff_means:.1e}, loglik {diff_ll:.1e} (of {abs(loglik):.0f})",
                ]
            )
    return table(
        ["what", "us / step", "speed-up vs dynamax full R", "vs dynamax diagonal R",
         "max abs diff vs dynamax"],
        rows,
    )


def bench_many_trials(num_trials, num_neurons, num_latents, num_bins):
    from dynamax.linear_gaussian_ssm.inference import lgssm_smoother

    rng = np.random.default_rng(1)
    params = random_params(rng, num_latents, num_neurons)
    keys = jax.random.split(jax.random.PRNGKey(1), num_trials)
    _, y = jax.vmap(lambda k: lds.sample(params, num_bins, key=k))(keys)
    full_r = params._replace(
        emissions=params.emissions._replace(cov=jnp.diag(params.emissions.cov))
    )
    ours = jax.jit(jax.vmap(lambda y: lds.smoother(params, y, missing_entries=False).means))
    peer_full = jax.jit(jax.vmap(lambda y: lgssm_smoother(full_r, y).smoothed_means))
    peer_diag = jax.jit(jax.vmap(lambda y: lgssm_smoother(params, y).smoothed_means))
    diff = float(jnp.max(jnp.abs(ours(y) - peer_full(y))))
    steps = num_trials * num_bins
    rows = []
    for name, function in (
        ("dynamax, full R", peer_full),
        ("dynamax, diagonal R", peer_diag),
        ("latentjax", ours),
    ):
        rows.append([name, f"{1e6 * best_time(function, y, repeats=3) / steps:.2f}"])
    rows[-1].append(f"max abs diff of means {diff:.1e}")
    rows[0].append("")
    rows[1].append("")
    return table(["smoother, vmapped", "us / trial-step", "check"], rows)


def bench_em_vs_pykalman(num_trials, num_bins, num_neurons, num_latents, pykalman_iters):
    from pykalman import KalmanFilter

    data = lj.datasets.lds(
        seed=0,
        num_trials=num_trials,
        num_bins=num_bins,
        num_latents=num_latents,
        num_neurons=num_neurons,
    )
    config = lds.Config(latent_dim=num_latents)
    params = lds.init(jax.random.PRNGKey(0), config, data.trials)
    em = lds.fitter(config)
    step = jax.jit(lambda state, trials: em.step(state, trials, None))
    state = em.init(params, data.trials)
    trials = jax.tree.map(jnp.asarray, data.trials)
    ours = best_time(lambda s: step(s, trials), state, repeats=5)

    # pykalman fits one sequence: the trials concatenated (same number of filter steps)
    observations = np.asarray(data.trials.spikes, dtype=np.float64).reshape(-1, num_neurons)
    kf = KalmanFilter(
        transition_matrices=np.asarray(params.dynamics.weights, np.float64),
        observation_matrices=np.asarray(params.emissions.weights, np.float64),
        transition_covariance=np.asarray(params.dynamics.cov, np.float64),
        observation_covariance=np.diag(np.asarray(params.emissions.cov, np.float64)),
        transition_offsets=np.asarray(params.dynamics.bias, np.float64),
        observation_offsets=np.asarray(params.emissions.bias, np.float64),
        initial_state_mean=np.asarray(params.initial.mean, np.float64),
        initial_state_covariance=np.asarray(params.initial.cov, np.float64),
        em_vars=[
            "transition_matrices",
            "observation_matrices",
            "transition_covariance",
            "observation_covariance",
            "transition_offsets",
            "observation_offsets",
            "initial_state_mean",
            "initial_state_covariance",
        ],
    )
    start = time.perf_counter()
    kf.em(observations, n_iter=pykalman_iters)
    peer = (time.perf_counter() - start) / pykalman_iters
    rows = [
        ["pykalman (trials concatenated)", f"{peer:.3f}", "1x"],
        ["latentjax (vmapped over trials)", f"{ours:.4f}", f"{peer / ours:.0f}x"],
    ]
    size = f"{num_trials} trials x {num_bins} bins x {num_neurons} neurons, {num_latents} latents"
    return f"EM, {size}\n\n" + table(["EM", "s / iteration", "speed-up"], rows)


def bench_em_large(num_trials, num_bins, num_neurons, num_latents, num_iters):
    rng = np.random.default_rng(2)
    params = random_params(rng, num_latents, num_neurons)
    keys = jax.random.split(jax.random.PRNGKey(2), num_trials)
    _, y = jax.vmap(lambda k: lds.sample(params, num_bins, key=k))(keys)
    trials = lj.Trials(np.asarray(y), dt=0.005, continuous=True)
    config = lds.Config(
        latent_dim=num_latents, train=lj.train.TrainConfig(steps=num_iters, chunk_size=num_iters)
    )
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        lj.fit(config, trials, progress=False)
        timings.append(time.perf_counter() - start)
    first, second = timings
    rows = [
        ["first lj.fit (compile + run)", f"{first:.2f}"],
        ["second lj.fit, same shapes (no recompile)", f"{second:.2f}"],
        [f"per EM iteration (second fit / {num_iters})", f"{second / num_iters:.4f}"],
    ]
    size = f"{num_trials} trials x {num_bins} bins x {num_neurons} neurons, {num_latents} latents"
    return f"EM through lj.fit, {size}, {num_iters} iterations\n\n" + table(["", "seconds"], rows)


def bench_parallel(lengths, num_neurons, num_latents):
    """Sequential against parallel filter (means) and smoother (means and log-likelihood:
    the call that hung before issue #27) for long single trials."""
    rng = np.random.default_rng(3)
    params = random_params(rng, num_latents, num_neurons)

    def call(kind, parallel):
        run = lds.filter if kind == "filter" else lds.smoother

        def outputs(y):
            result = run(params, y, parallel=parallel, missing_entries=False)
            return (result.means,) if kind == "filter" else (result.means, result.log_likelihood)

        return jax.jit(outputs)

    rows = []
    for num_bins in lengths:
        _, y = lds.sample(params, num_bins, key=jax.random.PRNGKey(num_bins))
        for kind, name in (("filter", "filter"), ("smoother", "smoother + log-likelihood")):
            sequential, parallel = call(kind, False), call(kind, True)
            want, got = sequential(y), parallel(y)
            diff = float(jnp.max(jnp.abs(want[0] - got[0])))
            check = f"means {diff:.1e}"
            if kind == "smoother":
                check += (
                    f", loglik {abs(float(want[1] - got[1])):.1e} (of {abs(float(want[1])):.0f})"
                )
            t_seq = best_time(sequential, y, repeats=2)
            t_par = best_time(parallel, y, repeats=2)
            rows.append(
                [
                    f"{num_bins:.0e}",
                    name,
                    f"{1e3 * t_seq:.1f}",
                    f"{1e3 * t_par:.1f}",
                    f"{t_seq / t_par:.2f}",
                    check,
                ]
            )
    return table(["T", "call", "sequential ms", "parallel ms", "seq / par", "max abs diff"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--out", default=None, help="markdown file (default benchmarks/lds.md)")
    args = parser.parse_args()
    quick = args.quick
    out = args.out or (None if quick else os.path.join("benchmarks", "lds.md"))

    faulthandler.dump_traceback_later(1800, exit=True)  # a stuck run reports where it hangs
    n, k = (40, 4) if quick else (182, 16)
    t = 200 if quick else 1000
    b, tb = (10, 50) if quick else (100, 140)
    benchmarks = [
        (f"Filter and smoother, one trial: N={n}, K={k}, T={t}", bench_single_trial, (n, k, t)),
        (
            f"Smoother, {b} trials sharing parameters: N={n}, K={k}, T={tb}",
            bench_many_trials,
            (b, n, k, tb),
        ),
        (
            "EM against pykalman",
            bench_em_vs_pykalman,
            (4, 100, 10, 2, 2) if quick else (20, 1000, 50, 5, 1),
        ),
        ("EM at scale", bench_em_large, (10, 50, 40, 4, 10) if quick else (100, 140, 182, 16, 50)),
        (
            "Sequential against parallel filtering and smoothing",
            bench_parallel,
            ((1000, 3000) if quick else (1000, 10000, 100000), n, k),
        ),
    ]
    sections = []
    for title, function, sizes in benchmarks:
        sections.append((title, function(*sizes)))
        print(f"## {title}\n\n{sections[-1][1]}\n", flush=True)

    load = os.getloadavg()
    header = [
        "# Gaussian LDS benchmark",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()}",
        f"- devices: {jax.devices()}",
        "- versions: "
        + ", ".join(
            f"{p} {version(p)}"
            for p in ("jax", "jaxlib", "dynamax", "pykalman", "numpy", "latentjax")
        ),
        f"- load average at the end (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}"
        " (other processes shared the CPU when this is above the core count)",
        f"- mode: {'quick (small sizes)' if quick else 'full'}; float32; best of repeated calls"
        " after a compiling warm-up call",
        "",
        "",
    ]
    text = "\n".join(header) + "\n".join(f"## {title}\n\n{body}\n" for title, body in sections)
    if out:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
