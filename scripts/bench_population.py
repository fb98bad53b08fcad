"""Benchmark: a population in one vmapped program, in groups, or its members one by one.

Two workloads, populations of seeds trained through `lj.sweep` (`TrainConfig.population_mode`
"vmapped", "sequential" and "auto", `latentjax.train.grouping`) and the same members fitted
one after another by `lj.fit`:

- `rnn`: a small RNN latent model with a Poisson read-out (1, 4, 16, 64 members);
- `lfads`: LFADS `nlb_mc_maze` at batch 32 on synthetic Lorenz spikes of MC_Maze's shape
  (100 trials x 140 bins x 182 neurons; 1, 4, 8 members; a few steps: each takes seconds).

Each timing is the wall clock of a second identical run (the first compiles), including
initialisation, per member-step. Writes the workload's section of benchmarks/population.md
with the machine, load, package versions and date.

    python scripts/bench_population.py                    # rnn
    python scripts/bench_population.py --workload lfads   # LFADS nlb_mc_maze, minutes
    python scripts/bench_population.py --quick --workload lfads --out /tmp/p.md  # seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from _report import BENCHMARKS, machine, write_section

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


def timed(fn) -> tuple[float, object]:
    """(seconds of a second call of `fn`, its result); the first call compiles."""
    fn()
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def with_train(config, **changes):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def workload(name: str, quick: bool):
    """(config, trials, population sizes, description) of a workload."""
    if name == "rnn":
        trials = make_trials(*((16, 20, 10) if quick else (64, 50, 30)))
        steps = 20 if quick else 200
        config = with_train(Config(), steps=steps, chunk_size=steps // 4)
        text = (
            f"RNN latent model ({config.num_units} units, Poisson read-out), minibatches of "
            f"{config.train.batch_size}"
        )
        return config, trials, (1, 4) if quick else (1, 4, 16, 64), text
    shape = dict(num_trials=16, num_bins=20, num_neurons=10) if quick else {}
    shape = shape or dict(num_trials=100, num_bins=140, num_neurons=182)
    trials = lj.datasets.lorenz(seed=0, **shape).trials
    preset = "tiny" if quick else "nlb_mc_maze"
    steps = 4 if quick else 5
    config = lj.models.lfads.Config.preset(preset)
    config = with_train(config, steps=steps, chunk_size=steps, batch_size=32)
    return config, trials, (1, 4) if quick else (1, 4, 8), f"LFADS `{preset}`, batch 32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("rnn", "lfads"), default="rnn")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--note", default="", help="a remark for the results file")
    parser.add_argument("--out", default=str(BENCHMARKS / "population.md"))
    args = parser.parse_args()

    config, trials, sizes, description = workload(args.workload, args.quick)
    steps = config.train.steps
    rows = []
    for size in sizes:
        seeds = tuple(range(size))
        seconds, modes = {}, {}
        for mode in ("vmapped", "sequential", "auto") if size > 1 else ("vmapped",):
            member_config = with_train(config, population_mode=mode)
            seconds[mode], population = timed(
                lambda c=member_config, s=seeds: lj.sweep(c, trials, seeds=s, progress=False)
            )
            history = population[0].history
            modes[mode] = f"{history['population_mode']} ({history['group_size']})"
        seconds["one by one"], _ = timed(
            lambda s=seeds: [lj.fit(config, trials, seed=seed, progress=False) for seed in s]
        )
        rows.append((size, seconds, modes.get("auto", "")))
        print(size, seconds, modes, file=sys.stderr, flush=True)

    lines = [
        "| members | vmapped | sequential | auto | one by one | auto chose |"
        " vmapped / one by one | auto / one by one |",
        "|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for size, seconds, chosen in rows:
        per = {k: 1e3 * v / (steps * size) for k, v in seconds.items()}
        cells = [f"{per[m]:.2f}" if m in per else "" for m in ("vmapped", "sequential", "auto")]
        apart = seconds["one by one"]
        speedups = [
            f"{apart / seconds[m]:.2f}x" if m in seconds else "" for m in ("vmapped", "auto")
        ]
        lines.append(
            f"| {size} | {' | '.join(cells)} | {per['one by one']:.2f} | {chosen} | "
            f"{' | '.join(speedups)} |"
        )
    table = "\n".join(lines)
    print(table)

    command = f"python scripts/bench_population.py --workload {args.workload}"
    header = [
        f"## {description}",
        "",
        f"- Machine: {machine(('jax', 'jaxlib', 'optax', 'orbax-checkpoint', 'latentjax'))}; "
        f"JAX devices: {jax.devices()}",
        f"- Workload: {trials.num_trials} trials x {trials.num_bins} bins x "
        f"{trials.num_neurons} neurons, Adam, {steps} steps in chunks of "
        f"{config.train.chunk_size}. Milliseconds per member-step: wall clock of a second "
        "identical run (the first compiles), initialisation included, over steps x members; "
        "`auto chose`: the mode and group size `grouping.choose` picked.",
        f"- Command: `{command}{' --quick' if args.quick else ''}`",
    ]
    if args.note:
        header.append(f"- Note: {args.note}")
    write_section(
        args.out,
        args.workload + ("-quick" if args.quick else ""),
        "\n".join(header) + "\n\n" + table,
        "Population training: vmapped, in groups, or members one after another",
    )


if __name__ == "__main__":
    main()
