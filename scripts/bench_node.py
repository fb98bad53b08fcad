"""Neural ODE training-step time against the sequential VAE, and adjoint memory.

Times one compiled gradient step (loss + gradient, batch of irregular Lorenz trials) of the
latent neural ODE (direct backpropagation through Tsit5, and the backsolve adjoint) and of
the sequential VAE on the same bins (on the bin grid with a mask), and reads the compiled
programs' temporary memory from XLA's `memory_analysis()`.

    python scripts/bench_node.py --quick
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from _report import BENCHMARKS, machine, write_section

import latentjax as lj
import latentjax.models.node as node
import latentjax.models.seqvae as seqvae


def _compiled_step(family, config, batch):
    params = family.init(jax.random.PRNGKey(0), config, batch)
    batch = jax.tree.map(jnp.asarray, batch)

    def value(p, b, k):
        return family.loss(p, b, k, config, 1000)[0]

    compiled = jax.jit(jax.value_and_grad(value)).lower(params, batch, jax.random.PRNGKey(1))
    return compiled.compile(), params, batch


def _time(compiled, params, batch, repeats: int) -> float:
    jax.block_until_ready(compiled(params, batch, jax.random.PRNGKey(0)))
    started = time.perf_counter()
    for i in range(repeats):
        jax.block_until_ready(compiled(params, batch, jax.random.PRNGKey(i)))
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    trials, bins, width, repeats = (8, 40, 16, 3) if args.quick else (32, 100, 64, 10)
    data = lj.datasets.lorenz(seed=0, num_trials=trials, num_bins=bins, num_neurons=30)
    sparse, index = lj.datasets.subsample(data.trials, 0.3, seed=0, return_index=True)
    kept = jnp.zeros(data.trials.mask.shape, bool)
    rows = jnp.repeat(jnp.arange(trials)[:, None], index.shape[1], 1)
    kept = kept.at[rows[index >= 0], index[index >= 0]].set(True)
    on_grid = data.trials.replace(mask=kept)

    cases = {
        "node, direct backprop (RecursiveCheckpointAdjoint)": (
            node,
            node.Config(hidden_dim=width, encoder_dim=width, time_scale=10.0),
            sparse,
        ),
        "node, adjoint (BacksolveAdjoint)": (
            node,
            node.Config(
                hidden_dim=width, encoder_dim=width, time_scale=10.0, adjoint="backsolve"
            ),  # fmt: skip
            sparse,
        ),
        "seqvae on the masked bin grid": (
            seqvae,
            seqvae.Config(encoder_dim=width, generator_dim=width),
            on_grid,
        ),
    }
    lines = [
        "| model | step (ms) | compiled temp memory (MiB) | compile (s) |",
        "|---|---|---|---|",
    ]
    for name, (family, config, batch) in cases.items():
        started = time.perf_counter()
        compiled, params, batch = _compiled_step(family, config, batch)
        compile_seconds = time.perf_counter() - started
        step = _time(compiled, params, batch, repeats)
        memory = compiled.memory_analysis()
        temp = getattr(memory, "temp_size_in_bytes", float("nan")) / 2**20
        lines.append(f"| {name} | {1e3 * step:.1f} | {temp:.2f} | {compile_seconds:.1f} |")
        print(lines[-1], flush=True)
    body = "\n".join(
        [
            "## Training step and memory",
            "",
            f"`python scripts/bench_node.py{' --quick' if args.quick else ''}`: one loss + "
            f"gradient step on {trials} Lorenz trials ({bins} bins, 30 neurons, 30% of bins "
            f"kept), hidden width {width}, mean of {repeats} steps after a warm-up. Memory: "
            "XLA's temporary buffers of the compiled step (`memory_analysis()`).",
            "",
            *lines,
            "",
            machine(),
        ]
    )
    print(body)
    write_section(
        BENCHMARKS / "node.md",
        "bench" + ("_quick" if args.quick else ""),
        body,
        "Latent neural ODE benchmarks",
    )


if __name__ == "__main__":
    main()
