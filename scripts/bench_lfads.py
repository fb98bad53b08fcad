"""Benchmark: LFADS training steps per second at the AutoLFADS MC_Maze sizes, on this machine.

Sizes (shared/TARGETS.md): 137 held-in and 182 total neurons, 140 encoded bins and 180
reconstructed bins (40 forward bins), `Config.preset("nlb_mc_maze")` (ic_enc 100, ci_enc 80,
con 80, co 4, ic 100, gen 100, fac 40, coordinated dropout 0.3, AR(1) input prior), Poisson
counts. One training step is the engine's compiled gradient step (loss, gradient, clipping,
AdamW). Reported: seconds per step at batch 32 and 128, the model's matmul FLOP/s (counted from
the sizes: 3x the forward matmuls) as a fraction of the machine's f32 matmul ceiling (a big
`jnp.dot`, measured here), and the throughput of vmapped populations of 1, 4 and 16 members
(batch 32). The reference PyTorch LFADS figures (0.78 s/step at batch 32, 1.61 s/step at batch
128 on a 2-core CPU) are quoted from TARGETS.md, not rerun. Prints a markdown table and writes
its section of benchmarks/lfads.md.

python scripts/bench_lfads.py # full benchmark python scripts/bench_lfads.py --quick # tiny
sizes, to check the script runs
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from _report import BENCHMARKS, machine, seconds_per_step, write_section

import latentjax as lj
from latentjax.models import lfads
from latentjax.train.gradient import FamilyGradientFitter

REFERENCE_S_PER_STEP = {32: 0.78, 128: 1.61}


def matmul_ceiling_gflops(size: int, repeats: int = 5) -> float:
    a = jnp.ones((size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        dot(a, a).block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def make_trials(num_trials, bins, neurons, seed=0):
    rates = np.random.default_rng(seed).gamma(2.0, 0.1, (num_trials, bins, neurons))
    return lj.Trials(np.random.default_rng(seed + 1).poisson(rates), dt=0.005)


def time_steps(step, state, trials, repeats):
    keys = jax.random.split(jax.random.key(0), repeats + 2)
    # compile (twice: the first output may differ in weak types)
    return seconds_per_step(step, state, trials, keys, warmup=2)


def training_gflop(config, neurons: int, bins: int, batch: int) -> float:
    """Matmul GFLOP of one training step: 3x the forward pass (forward plus backward)."""
    c = config
    enc_bins, heldin = bins - c.forward_bins, neurons - c.n_heldout

    def gru(inputs, hidden, steps):
        return steps * 2 * (inputs * 3 * hidden + hidden * 3 * hidden)

    forward = 2 * gru(heldin, c.ic_enc_dim, enc_bins) + 2 * gru(heldin, c.ci_enc_dim, enc_bins)
    forward += 2 * (2 * c.ic_enc_dim * 2 * c.ic_dim + c.ic_dim * c.gen_dim)
    if c.co_dim:
        forward += gru(2 * c.ci_enc_dim + c.fac_dim, c.con_dim, bins)
        forward += bins * 2 * c.con_dim * 2 * c.co_dim
    forward += gru(c.co_dim, c.gen_dim, bins) + bins * 2 * (c.gen_dim * c.fac_dim)
    forward += bins * 2 * c.fac_dim * neurons
    return 3 * forward * batch / 1e9


def measure(config, trials, batch, repeats):
    """Seconds per training step of one member."""
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=batch))
    fitter = FamilyGradientFitter(lfads.loss)(config)
    params = lfads.init(jax.random.key(0), config, trials)
    return time_steps(jax.jit(fitter.step), fitter.init(params, trials), trials, repeats)


def measure_population(config, trials, members, repeats):
    fitter = FamilyGradientFitter(lfads.loss)(config)
    keys = jax.random.split(jax.random.key(0), members)
    params = jax.vmap(lambda key: lfads.init(key, config, trials))(keys)
    state = jax.vmap(fitter.init, in_axes=(0, None))(params, trials)
    batched = jax.vmap(fitter.step, in_axes=(0, None, 0))

    @jax.jit
    def step(state, trials, key):
        return batched(state, trials, jax.random.split(key, members))

    return time_steps(step, state, trials, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--out", default=str(BENCHMARKS / "lfads.md"))
    parser.add_argument("--note", default="", help="a line added to the file (e.g. the load)")
    args = parser.parse_args()

    if args.quick:
        config = lfads.Config.preset("tiny", forward_bins=4, n_heldout=3, cd_rate=0.3)
        heldin, total, enc_bins, bins, batches, members, repeats = 10, 13, 16, 20, (4, 8), (1, 2), 2
        matmul_size = 512
    else:
        config = lfads.Config.preset("nlb_mc_maze", forward_bins=40, n_heldout=45)
        heldin, total, enc_bins, bins = 137, 182, 140, 180
        batches, members, repeats, matmul_size = (32, 128), (1, 4, 16), 5, 2048
    del heldin, enc_bins  # implied by `total - n_heldout` and `bins - forward_bins`
    ceiling = matmul_ceiling_gflops(matmul_size)
    rows = [
        "| what | batch | s/step | steps/s | GFLOP/step | fraction of matmul ceiling "
        "| reference PyTorch s/step | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for batch in batches:
        trials = make_trials(max(batch, 8), bins, total)
        seconds = measure(config, trials, batch, repeats)
        gflop = training_gflop(config, total, bins, batch)
        reference = REFERENCE_S_PER_STEP.get(batch)
        speedup = f"{reference / seconds:.1f}x" if reference and not args.quick else "-"
        rows.append(
            f"| training step | {batch} | {seconds:.3f} | {1 / seconds:.2f} | {gflop:.2f} | "
            f"{gflop / seconds / ceiling:.1%} | {reference or '-'} | {speedup} |"
        )
    population_batch = batches[0]
    trials = make_trials(max(population_batch, 8), bins, total)
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, batch_size=population_batch)
    )
    rows += [
        "",
        f"| population members (batch {population_batch}) | s per population step "
        "| member-steps/s | per-member gain over 1 |",
        "|---|---|---|---|",
    ]
    single = None
    for count in members:
        seconds = measure_population(config, trials, count, repeats)
        single = single or seconds
        rows.append(
            f"| {count} | {seconds:.3f} | {count / seconds:.2f} | {count * single / seconds:.2f}x |"
        )
    header = [
        "## Training speed (scripts/bench_lfads.py" + (" --quick)" if args.quick else ")"),
        "",
        f"Machine: {machine()}. f32 matmul ceiling {ceiling:.0f} GFLOP/s "
        f"({matmul_size}x{matmul_size} jnp.dot).",
        "Reference: the PyTorch LFADS figures of shared/TARGETS.md (2-core x86-64 CPU, "
        "ceiling about 203 GFLOP/s), quoted, not rerun here.",
    ]
    if args.note:
        header.append(f"Note: {args.note}")
    text = "\n".join([*header, "", *rows, ""])
    print(text)
    write_section(args.out, "speed-quick" if args.quick else "speed", text, "LFADS benchmarks")


if __name__ == "__main__":
    main()
