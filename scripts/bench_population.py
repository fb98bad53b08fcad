"""Benchmark: a population trained as one vmapped program vs the same members one by one.

For populations of 1, 4, 16 and 64 members (seeds of a small RNN latent model with a Poisson
read-out, trained by Adam through `lj.sweep` / `lj.fit`), time the wall clock per training
step of the whole population, after a warm-up run that compiles. Prints a markdown table and
writes it to benchmarks/population.md with the machine, package versions and date.

    python scripts/bench_population.py           # full benchmark
    python scripts/bench_population.py --quick   # small sizes, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from _report import machine

import latentjax as lj
from latentjax.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Config:
    """A vanilla RNN from a learned per-trial initial state (encoded from the first bins)."""

    num_units: int = 32
    encode_bins: int = 5
    train: TrainConfig = TrainConfig(learning_rate=1e-2, steps=200, chunk_size=50, batch_size=16)


def init(key, config, trials):
    keys = jax.random.split(key, 4)
    units, neurons = config.num_units, trials.num_neurons
    return {
        "encoder": jax.random.normal(keys[0], (config.encode_bins * neurons, units)) * 0.1,
        "recurrent": jax.random.normal(keys[1], (units, units)) / np.sqrt(units),
        "readout": jax.random.normal(keys[2], (units, neurons)) * 0.1,
        "bias": jnp.zeros(neurons),
    }


def _log_rates(params, spikes, config):
    state = jnp.tanh(spikes[: config.encode_bins].reshape(-1) @ params["encoder"])

    def advance(state, _):
        state = jnp.tanh(state @ params["recurrent"])
        return state, state @ params["readout"] + params["bias"]

    _, log_rates = jax.lax.scan(advance, state, None, length=spikes.shape[0])
    return log_rates


def loss(params, batch, key, config, step):
    log_rates = jax.vmap(_log_rates, in_axes=(None, 0, None))(params, batch.spikes, config)
    nll = jnp.mean(jnp.exp(log_rates) - batch.spikes * log_rates)
    return nll, {}


validation_loss = loss


def posterior(params, trials, config, key):
    log_rates = jax.vmap(_log_rates, in_axes=(None, 0, None))(params, trials.spikes, config)
    return lj.Posterior(latents=log_rates, rates=jnp.exp(log_rates))


lj.family.register("bench_population", sys.modules[__name__])


def make_trials(num_trials, num_bins, num_neurons, seed=0):
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (num_trials, 1, 1))
    time_axis = np.arange(num_bins)[None, :, None] * 0.2
    preferred = np.linspace(0, 2 * np.pi, num_neurons)[None, None, :]
    rates = np.exp(0.5 + np.cos(time_axis + phase - preferred))
    return lj.Trials(rng.poisson(rates), dt=0.01)


def timed(fn) -> float:
    fn()  # compile and warm up
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--note", default="", help="a remark for the results file")
    parser.add_argument("--out", default="benchmarks/population.md")
    args = parser.parse_args()

    sizes = (1, 4) if args.quick else (1, 4, 16, 64)
    steps = 20 if args.quick else 200
    trials = make_trials(*((16, 20, 10) if args.quick else (64, 50, 30)))
    config = Config()
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, steps=steps, chunk_size=steps // 4)
    )

    rows = []
    for size in sizes:
        seeds = tuple(range(size))
        population = timed(lambda s=seeds: lj.sweep(config, trials, seeds=s, progress=False))
        one_by_one = timed(
            lambda s=seeds: [lj.fit(config, trials, seed=seed, progress=False) for seed in s]
        )
        rows.append((size, population / steps, one_by_one / steps))
        print(f"{size} members: {population:.2f} s vs {one_by_one:.2f} s", file=sys.stderr)

    lines = [
        "| members | population: ms per step | one by one: ms per step | speed-up |"
        " population: ms per member-step |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size, together, apart in rows:
        lines.append(
            f"| {size} | {1e3 * together:.2f} | {1e3 * apart:.2f} | {apart / together:.1f}x "
            f"| {1e3 * together / size:.3f} |"
        )
    table = "\n".join(lines)
    print(table)

    batch = config.train.batch_size
    header = [
        "# Population training: one vmapped program vs members fit one after another",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine(('jax', 'jaxlib', 'optax', 'orbax-checkpoint', 'latentjax'))}; "
        f"JAX devices: {jax.devices()}",
        f"- Workload: RNN latent model ({config.num_units} units, Poisson read-out), "
        f"{trials.num_trials} trials x {trials.num_bins} bins x {trials.num_neurons} neurons, "
        f"minibatches of {batch}, Adam; {steps} steps in chunks of {config.train.chunk_size}; "
        "wall clock of a second identical run (the first compiles), including initialisation.",
        f"- Command: `python scripts/bench_population.py{' --quick' if args.quick else ''}`",
    ]
    if args.note:
        header.append(f"- Note: {args.note}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as file:
        file.write("\n".join(header) + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
