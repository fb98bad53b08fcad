"""Benchmark: LFADS at the AutoLFADS MC_Maze sizes, side by side with lfads-torch, on this machine.

Sizes (shared/TARGETS.md): 137 held-in and 182 total neurons, 140 encoded bins and 180
reconstructed bins (40 forward bins), `Config.preset("nlb_mc_maze")` (ic_enc 100, ci_enc 80,
con 80, co 4, ic 100, gen 100, fac 40, coordinated dropout 0.3, AR(1) input prior), Poisson
counts. Timed, as medians after warm-up calls:

- training step at batch 32 and 128, as `lj.fit` runs it (the engine's compiled chunks of
  steps: loss, gradient, clipping, AdamW, finiteness checks; per step from the difference
  between two step counts, each the second identical run, so compilation and set-up cancel),
  against lfads-torch's `LFADS` module (zero grad, `training_step`, backward, clipping,
  AdamW; no Lightning `Trainer` around it, which favours the peer); a lone jitted step
  called from Python is also shown (its outputs are allocated afresh on every call);
- forward pass (one posterior sample) and posterior means over 20 samples, batch 128:
  `lfads.posterior` against lfads-torch's `predict_step` in eval mode without gradients, as its
  `run_posterior_sampling` calls it;
- populations of 1, 4, 8 and 16 members at batch 32 through `lj.sweep` (seeds), per
  member-step as above: `population_mode="vmapped"` (one vmapped program) and "auto" (what
  the engine picks, `latentjax.train.grouping`), against one `lj.fit` (members one by one);
- with `--profile`: where the time of one training step (batch 32) and of one population step
  (8 members) goes, from a `jax.profiler` trace grouped by kind of XLA operation.

The side-by-side rows run in `--rounds` rounds (the peer, then latentjax, in turn), because
the shared machine's speed drifts by tens of percent between minutes: each row gives the
median seconds and the median of the rounds' speed-ups with their range.

lfads-torch is not a dependency: `--peer DIR` points at a local checkout of its source
(https://github.com/arsedler9/lfads-torch, fetched by the user, never copied into this repo),
run with the installed torch and pytorch-lightning (`scripts/_lfads_torch_peer.py`).

    python scripts/bench_lfads.py --peer ../lfads-torch --profile   # full run, ~30 minutes
    python scripts/bench_lfads.py --quick --out /tmp/lfads.md         # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _report import BENCHMARKS, PACKAGES, machine, seconds_per_step, write_section

import latentjax as lj
from latentjax.models import lfads
from latentjax.train import grouping
from latentjax.train.gradient import FamilyGradientFitter


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


def sizes(quick: bool):
    """The LFADS config, total neurons, bins and batch sizes timed."""
    if quick:
        config = lfads.Config.preset("tiny", forward_bins=4, n_heldout=3, cd_rate=0.3)
        total, bins, batches = 13, 20, (4, 8)
    else:
        config = lfads.Config.preset("nlb_mc_maze", forward_bins=40, n_heldout=45)
        total, bins, batches = 182, 180, (32, 128)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=1000))
    return config, total, bins, batches


def with_batch(config, batch: int):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=batch))


def single_step(config, trials):
    """The jitted training step of one member and its initial state."""
    fitter = FamilyGradientFitter(lfads.loss)(config)
    params = lfads.init(jax.random.key(0), config, trials)
    return jax.jit(fitter.step), fitter.init(params, trials)


def population_step(config, trials, members: int, vmapped: bool):
    """The jitted step of a population, vmapped or unbatched one member after another."""
    fitter = FamilyGradientFitter(lfads.loss)(config)
    keys = jax.random.split(jax.random.key(0), members)
    params = jax.vmap(lambda key: lfads.init(key, config, trials))(keys)
    state = jax.vmap(fitter.init, in_axes=(0, None))(params, trials)

    def each(state, trials, keys):
        if vmapped:
            return jax.vmap(fitter.step, in_axes=(0, None, 0))(state, trials, keys)
        return jax.lax.map(lambda args: fitter.step(args[0], trials, args[1]), (state, keys))

    @jax.jit
    def step(state, trials, key):
        return each(state, trials, jax.random.split(key, members))

    return step, state


def engine_seconds(config, trials, members: int, mode: str, steps=(3, 9)) -> float:
    """Seconds per member-step of `lj.fit` (one member) or `lj.sweep` (seeds), chunks of
    `steps[0]` steps: the difference between `steps[1]` and `steps[0]` steps, each timed on
    a second identical run."""
    train = dataclasses.replace(config.train, chunk_size=steps[0], population_mode=mode)
    config = dataclasses.replace(config, train=train)

    def seconds(count):
        def call():
            if members == 1:
                return lj.fit(config, trials, steps=count, progress=False)
            return lj.sweep(config, trials, seeds=tuple(range(members)), steps=count,
                            progress=False)  # fmt: skip

        call()
        start = time.perf_counter()
        call()
        return time.perf_counter() - start

    return (seconds(steps[1]) - seconds(steps[0])) / (steps[1] - steps[0]) / members


def time_step(step, state, trials, repeats: int) -> float:
    keys = jax.random.split(jax.random.key(1), repeats + 2)
    return seconds_per_step(step, state, trials, keys, warmup=2)


def median_seconds(call, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def posterior_seconds(config, trials, samples: int, repeats: int) -> float:
    params = lfads.init(jax.random.key(0), config, trials)

    def call():
        post = lfads.posterior(params, trials, config, jax.random.key(1), n_samples=samples)
        jax.block_until_ready(post.rates)

    return median_seconds(call, repeats)


# ----------------------------------------------------------------------------- profile

_MOVEMENT = ("copy", "transpose", "concatenate", "broadcast", "dynamic-update-slice",
             "dynamic-slice", "slice", "pad", "reverse", "bitcast")  # fmt: skip


_WRAPPERS = ("while", "conditional", "call")


def _category(kind: str, hlo_line: str) -> str:
    if "lgamma" in hlo_line:
        return "log-factorial of the counts (lgamma)"
    if re.search(r"= u32\[", hlo_line):
        return "random numbers (threefry)"
    if kind.startswith(("ynn_fusion", "dot")):
        return "matrix products (YNNPACK/dot, with fused reductions)"
    if kind.startswith("wrapped_") or all(part in _MOVEMENT for part in kind.split("_")[:-1]) \
            or kind in _MOVEMENT:  # fmt: skip
        return "data movement (copies, transposes, broadcasts, stacking scan outputs)"
    return "elementwise (gates, activations, losses)"


def profile(step, state, trials, bins: int, calls: int = 3) -> tuple[float, list[str]]:
    """Seconds per call and table rows: the XLA operations of `calls` traced calls, grouped by
    category and by whether they run inside a loop over time (executed `>= bins / 2` times)."""
    keys = jax.random.split(jax.random.key(2), calls + 2)
    for key in keys[:2]:
        jax.block_until_ready(step(state, trials, key))
    hlo = step.lower(state, trials, keys[0]).compile().as_text()
    lines = {}
    for line in hlo.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        if match:
            lines[match.group(1)] = line
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        jax.block_until_ready(step(state, trials, keys[0]))  # the first traced call is slower
        start = time.perf_counter()
        with jax.profiler.TraceAnnotation("measured calls"):
            for key in keys[2:]:
                jax.block_until_ready(step(state, trials, key))
        seconds = (time.perf_counter() - start) / calls
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as file:
            events = json.load(file)
    events = events["traceEvents"] if isinstance(events, dict) else events
    (window,) = [e for e in events if e.get("name") == "measured calls" and e.get("ph") == "X"]
    begin, end = window["ts"], window["ts"] + window["dur"]
    total, count = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event["name"] in lines and begin <= event["ts"] <= end:
            total[event["name"]] += event.get("dur", 0) / 1e6 / calls
            count[event["name"]] += 1
    by_category = collections.Counter()
    for name, seconds_in_op in total.items():
        kind = re.sub(r"\.\d+$", "", name)
        if kind in _WRAPPERS:  # a loop's or branch's own event spans the operations within
            continue
        where = "in loops" if count[name] / calls >= bins / 2 else "outside loops"
        by_category[(_category(kind, lines[name]), where)] += seconds_in_op
    measured = sum(by_category.values())
    rows = [
        f"| {category} | {where} | {1e3 * s:.1f} | {s / measured:.0%} |"
        for (category, where), s in by_category.most_common()
    ]
    return seconds, rows


# ----------------------------------------------------------------------------- main


def median(values) -> float | None:
    return float(np.median(values)) if values else None


def ratios(peer: list[float] | None, ours: list[float]) -> str:
    """The median of the rounds' speed-ups, with their range when there are several."""
    if not peer:
        return "-"
    each = [p / o for p, o in zip(peer, ours, strict=True)]
    spread = f" ({min(each):.2f}-{max(each):.2f})" if len(each) > 1 else ""
    return f"{np.median(each):.2f}x{spread}"


def run_peer(source: str, repeats: int, quick: bool) -> dict:
    """lfads-torch's timings, flattened: `train32`, `forward`, ..., and `versions`."""
    script = str(Path(__file__).with_name("_lfads_torch_peer.py"))
    command = [sys.executable, script, source, "--repeats", str(repeats)]
    command += ["--quick"] if quick else []
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    flat = {f"train{batch}": seconds for batch, seconds in result.pop("train").items()}
    return {**flat, **result}


def side_by_side_rows(batches):
    """(what, batch, our key, the peer's key) of each row of the side-by-side table."""
    rows = []
    for batch in batches:
        rows.append(("training step (lj.fit)", batch, f"fit{batch}", f"train{batch}"))
        rows.append(("training step, lone jitted call", batch, f"step{batch}", f"train{batch}"))
    rows.append(("forward, one posterior sample", batches[-1], "forward", "forward"))
    rows.append(("posterior means, 20 samples", batches[-1], "posterior", "posterior"))
    return rows


def our_side(config, total: int, bins: int, batches, repeats: int) -> dict[str, float]:
    """latentjax's seconds for each row of `side_by_side_rows`."""
    seconds = {}
    for batch in batches:
        trials = make_trials(batch, bins, total)
        config_b = with_batch(config, batch)
        seconds[f"fit{batch}"] = engine_seconds(config_b, trials, 1, "auto")
        seconds[f"step{batch}"] = time_step(*single_step(config_b, trials), trials, repeats)
    trials = make_trials(batches[-1], bins, total)
    seconds["forward"] = posterior_seconds(config, trials, 1, repeats)
    seconds["posterior"] = posterior_seconds(config, trials, 20, 2)
    return seconds


def fmt(seconds) -> str:
    return f"{seconds:.3f}" if seconds else "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--peer", default=None, help="a local checkout of lfads-torch's source")
    parser.add_argument("--profile", action="store_true", help="also profile one step")
    parser.add_argument("--rounds", type=int, default=3, help="side-by-side rounds")
    parser.add_argument("--out", default=str(BENCHMARKS / "lfads.md"))
    parser.add_argument("--note", default="", help="a line added to the file (e.g. the load)")
    args = parser.parse_args()

    config, total, bins, batches = sizes(args.quick)
    members, repeats, matmul_size = ((1, 2), 2, 512) if args.quick else ((1, 4, 8, 16), 5, 2048)
    ceiling = matmul_ceiling_gflops(matmul_size)
    profile_sections = []
    if args.profile:  # first, on a fresh process (after many large runs, buffers fault in slower)
        batch = batches[0]
        trials = make_trials(batch, bins, total)
        config_b = with_batch(config, batch)
        for label, (step_, state_) in (
            (f"one training step (lone jitted call), batch {batch}", single_step(config_b, trials)),
            (f"one population step, 8 members vmapped, batch {batch}",
             population_step(config_b, trials, 8 if not args.quick else 2, True)),
        ):  # fmt: skip
            seconds, profile_rows = profile(step_, state_, trials, bins)
            profile_sections += [
                f"{label}: {seconds:.3f} s per call while traced; time of the XLA operations "
                "(the two cores overlap, so the sum can exceed the wall clock):",
                "",
                "| category | where | ms per call | share |",
                "|---|---|---|---|",
                *profile_rows,
                "",
            ]

    ours, theirs = collections.defaultdict(list), collections.defaultdict(list)
    for _ in range(args.rounds):  # the peer, then ours, in turn: drifts in load hit both
        if args.peer:
            for key, seconds in run_peer(args.peer, repeats, args.quick).items():
                theirs[key].append(seconds)
        for key, seconds in our_side(config, total, bins, batches, repeats).items():
            ours[key].append(seconds)

    rows = [
        "| what | batch | latentjax s | lfads-torch s | speed-up | latentjax GFLOP/s "
        "(fraction of matmul ceiling) |",
        "|---|---|---|---|---|---|",
    ]
    for what, batch, key, peer_key in side_by_side_rows(batches):
        seconds = median(ours[key])
        gflops = "-"
        if key.startswith(("fit", "step")):
            rate = training_gflop(config, total, bins, batch) / seconds
            gflops = f"{rate:.0f} ({rate / ceiling:.0%})"
        rows.append(
            f"| {what} | {batch} | {fmt(seconds)} | {fmt(median(theirs.get(peer_key)))} "
            f"| {ratios(theirs.get(peer_key), ours[key])} | {gflops} |"
        )

    batch = batches[0]
    trials = make_trials(batch, bins, total)
    config_b = with_batch(config, batch)
    step, state = single_step(config_b, trials)
    flops = grouping.member_step_flops(
        FamilyGradientFitter(lfads.loss)(config_b).step, state, trials, jax.random.key(0)
    )
    population = collections.defaultdict(list)  # (members, mode) -> seconds per member-step
    for _ in range(args.rounds):  # each count's modes beside a fresh one-by-one time
        for count in members:
            population[count, "one"].append(engine_seconds(config_b, trials, 1, "auto"))
            for mode in ("vmapped", "auto") if count > 1 else ():
                population[count, mode].append(engine_seconds(config_b, trials, count, mode))
    population_rows = [
        f"| members (batch {batch}) | lj.sweep, vmapped: s per member-step | lj.sweep, auto: "
        "s per member-step | one by one (lj.fit): s per member-step | vmapped / one by one "
        "| auto / one by one | auto picks |",
        "|---|---|---|---|---|---|---|",
    ]
    for count in members:  # one member: lj.sweep runs lj.fit's program whatever the mode
        one = population[count, "one"]
        vmapped = population.get((count, "vmapped"), one)
        auto = population.get((count, "auto"), one)
        picked = grouping.choose("auto", count, jax.devices()[:1], lambda: flops)
        population_rows.append(
            f"| {count} | {median(vmapped):.3f} | {median(auto):.3f} | {median(one):.3f} "
            f"| {ratios(one, vmapped)} | {ratios(one, auto)} | {picked.mode} ({picked.reason}) |"
        )

    header = [
        "## Side by side (scripts/bench_lfads.py" + (" --quick)" if args.quick else ")"),
        "",
        f"Machine: {machine(PACKAGES)}. f32 matmul ceiling {ceiling:.0f} GFLOP/s "
        f"({matmul_size}x{matmul_size} jnp.dot). No GPU was available to this run.",
        "Peer: " + (f"lfads-torch from {args.peer} ({theirs['versions'][0]}), in a separate "
                    "process" if args.peer else "not run (no --peer)"),  # fmt: skip
        f"Rounds: {args.rounds} (the peer, then latentjax, in turn; for populations, each member "
        "count's modes beside a fresh one-by-one time); seconds are medians over the rounds, "
        "speed-ups the median of the rounds' ratios (their range in brackets).",
    ]
    if args.note:
        header.append(f"Note: {args.note}")
    sections = [*header, "", *rows, "", *population_rows, ""]
    if profile_sections:
        sections += ["", "### Profile (`--profile`)", "", *profile_sections]
    text = "\n".join(sections)
    print(text)
    write_section(args.out, "speed-quick" if args.quick else "speed", text, "LFADS benchmarks")


if __name__ == "__main__":
    main()
