"""Neural ODE vs sequential VAE vs LFADS on Lorenz spikes observed at irregular continuous times.

The Lorenz latents of `lj.datasets.lorenz` are integrated on a fine clock (2 ms) and read at
continuous times by linear interpolation. Each trial gets its own frame times, a Poisson
process (exponential gaps, mean `--gap` seconds) over the first `--observed` seconds of a
`--span`-second trial: no grid, no two trials alike. Each frame is a Poisson count per neuron
with mean rate(t) x `--window` (the exposure). The neural ODE sees the frames at their exact
times (`Trials.times`). The binned models see them on a regular grid of each width in
`--bins-ms`: a frame goes to the bin holding its time, a bin with several frames keeps the
one nearest its centre (a sum would change the count's scale with the number of frames),
empty bins are masked; for each seed the width whose rate R² on the validation trials is best
is kept (the test trials never choose). All models are scored on the test trials at a dense
query clock (every 5 ms, never a frame time): rate R² of the true per-frame rates inside each
trial's observed span (first to last frame) and after its last frame (forecast to the end of
the trial); the binned models' rates are interpolated linearly from bin centres.

    python scripts/node_irregular.py            # 3 seeds (~40 min on 2 shared cores)
    python scripts/node_irregular.py --quick    # tiny sizes, 1 seed, no table written
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import jax
import numpy as np
from _report import BENCHMARKS, machine, write_section

import latentjax as lj
import latentjax.models.node as node
import latentjax.models.seqvae as seqvae
from latentjax.models import lfads
from latentjax.train import TrainConfig

FINE = 0.002  # seconds per step of the simulation clock
QUERY = 0.005  # seconds between query times
NAMES = {"node": "neural ODE (node)", "seqvae": "sequential VAE (seqvae)", "lfads": "LFADS"}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", choices=list(NAMES), default=list(NAMES))
    parser.add_argument("--trials", type=int, default=800)
    parser.add_argument("--valid", type=int, default=150)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--neurons", type=int, default=30)
    parser.add_argument("--span", type=float, default=1.2, help="seconds per trial")
    parser.add_argument("--observed", type=float, default=1.0, help="seconds with frames")
    parser.add_argument("--gap", type=float, default=0.03, help="mean seconds between frames")
    parser.add_argument("--window", type=float, default=0.02, help="seconds per frame count")
    parser.add_argument("--bins-ms", type=float, nargs="+", default=[10.0, 30.0])
    parser.add_argument("--seqvae-bins-ms", type=float, nargs="+", help="default: --bins-ms")
    parser.add_argument("--lfads-bins-ms", type=float, nargs="+", help="default: --bins-ms")
    parser.add_argument("--note", default="", help="a sentence added to the table text")
    parser.add_argument("--section", default="irregular", help="section of benchmarks/node.md")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--refine-steps", type=int, default=50)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials, args.valid, args.test = [0], 40, 8, 8
        args.steps, args.chunk = 30, 10
    return args


def simulate(args: argparse.Namespace, seed: int) -> dict:
    """Frames at irregular times and the true rates at the query clock."""
    fine_bins = int(round(args.span / FINE)) + 1
    data = lj.datasets.lorenz(seed=seed, num_trials=args.trials, num_bins=fine_bins,
                              num_neurons=args.neurons, dt=FINE,
                              ode_time_per_bin=0.025 * FINE / 0.01, substeps=2)  # fmt: skip
    latents = np.asarray(data.truth["latents"], np.float64)
    readout = np.asarray(data.truth["params"]["readout"], np.float64)
    # the bias is log counts per fine step: counts per frame = exp(...) / FINE * window
    bias = np.asarray(data.truth["params"]["bias"], np.float64) + np.log(args.window / FINE)

    def rates_at(times):  # times [trials, k] -> expected counts per frame [trials, k, neurons]
        position = np.clip(times / FINE, 0, fine_bins - 1 - 1e-9)
        low = np.floor(position).astype(int)
        frac = (position - low)[..., None]
        rows = np.arange(times.shape[0])[:, None]
        z = latents[rows, low] * (1 - frac) + latents[rows, low + 1] * frac
        return np.exp(z @ readout + bias)

    rng = np.random.default_rng([seed, 21])
    draws = int(args.observed / args.gap * 2 + 20)
    times = np.cumsum(rng.exponential(args.gap, size=(args.trials, draws)), axis=1)
    mask = times < args.observed
    assert not mask[:, -1].any(), "too few gap draws"
    width = -(-int(mask.sum(1).max()) // 8) * 8  # a multiple of 8: seeds share compiled shapes
    times, mask = times[:, :width], mask[:, :width]
    # padding after the last frame: masked, times kept increasing past the observed window
    times = np.where(mask, times, args.observed + 1e-3 * np.arange(1, width + 1))
    counts = rng.poisson(rates_at(times)).astype(np.float32) * mask[..., None]
    query = np.arange(QUERY / 2, args.span, QUERY)
    return {
        "times": times,
        "mask": mask,
        "counts": counts,
        "query": query,
        "true": rates_at(np.broadcast_to(query, (args.trials, len(query)))),
        "first": np.where(mask, times, np.inf).min(1),
        "last": np.where(mask, times, -np.inf).max(1),
    }


def binned(sim: dict, width: float, span: float) -> tuple[lj.Trials, float]:
    """Frames on a grid of `width` seconds (one frame per bin, nearest the centre) and the
    fraction of frames dropped."""
    num_bins = int(np.ceil(span / width - 1e-9))
    spikes = np.zeros((sim["counts"].shape[0], num_bins, sim["counts"].shape[2]), np.float32)
    mask = np.zeros(spikes.shape[:2], bool)
    for trial in range(spikes.shape[0]):
        t = sim["times"][trial, sim["mask"][trial]]
        index = np.minimum((t / width).astype(int), num_bins - 1)
        offset = np.abs(t - (index + 0.5) * width)
        for frame in np.lexsort((offset, index)):
            if not mask[trial, index[frame]]:
                mask[trial, index[frame]] = True
                spikes[trial, index[frame]] = sim["counts"][trial, frame]
    return lj.Trials(spikes, width, mask=mask), 1 - mask.sum() / sim["mask"].sum()


def to_query(rates: np.ndarray, width: float, query: np.ndarray) -> np.ndarray:
    """Bin rates `[trials, bins, neurons]` linearly interpolated from bin centres to `query`
    (held constant beyond the first and last centre)."""
    centres = (np.arange(rates.shape[1]) + 0.5) * width
    position = np.clip(np.interp(query, centres, np.arange(len(centres))), 0, len(centres) - 1)
    low = np.minimum(np.floor(position).astype(int), len(centres) - 2)
    frac = (position - low)[None, :, None]
    return rates[:, low] * (1 - frac) + rates[:, low + 1] * frac


def _configs(args: argparse.Namespace) -> dict:
    train = TrainConfig(learning_rate=args.lr, batch_size=32, steps=args.steps, grad_clip=10.0,
                        chunk_size=min(args.chunk, args.steps), schedule="cosine",
                        final_lr_fraction=0.1, patience=args.patience)  # fmt: skip
    width = 16 if args.quick else 64
    preset = "tiny" if args.quick else "lorenz"
    lfads_config = lfads.Config.preset(preset)
    lfads_train = dataclasses.replace(train, learning_rate=lfads_config.train.learning_rate,
                                      grad_clip=lfads_config.train.grad_clip)  # fmt: skip
    return {
        "node": node.Config(
            latent_dim=8,
            hidden_dim=width,
            encoder_dim=width,
            time_scale=10.0,
            anchor="middle",
            kl_ramp_steps=args.steps // 4,
            train=train,
        ),  # fmt: skip
        "seqvae": seqvae.Config(
            encoder_dim=width,
            generator_dim=width,
            initial_dim=16,
            latent_dim=8,
            kl_ramp_steps=args.steps // 4,
            train=train,
        ),  # fmt: skip
        "lfads": dataclasses.replace(lfads_config, train=lfads_train),
    }


def _fit(config, train: lj.Trials, valid: lj.Trials, seed: int) -> tuple:
    started = time.perf_counter()
    fitted = lj.fit(config, train, valid=valid, seed=seed, progress=False)
    seconds = time.perf_counter() - started
    history = fitted.history
    best = int(np.nanargmin(history["valid_loss"]))
    return fitted, seconds, int(history["step"][best]), int(history["step"][-1])


def _scores(sim: dict, idx: np.ndarray, rates: np.ndarray) -> dict:
    query = sim["query"][None, :]
    inside = (query >= sim["first"][idx, None]) & (query <= sim["last"][idx, None])
    after = query > sim["last"][idx, None]
    true = sim["true"][idx]
    return {part: lj.metrics.rate_r2(true, rates, mask=mask)
            for part, mask in (("inside", inside), ("after", after))}  # fmt: skip


def _run_seed(args: argparse.Namespace, seed: int, widths: dict) -> list[dict]:
    """Fit and score every model on the data of `seed`; the binned models try each width
    in `widths[model]` (a list) and the first seed's choice is kept there for later seeds."""
    sim = simulate(args, seed)
    order = np.random.default_rng(seed).permutation(args.trials)
    test_idx = np.sort(order[: args.test])
    valid_idx = np.sort(order[args.test : args.test + args.valid])
    train_idx = np.sort(order[args.test + args.valid :])
    configs = _configs(args)
    refine = {"refine_steps": args.refine_steps, "refine_lr": 0.05}
    rows = []

    if "node" in args.models:
        frames = lj.Trials(sim["counts"], args.window, times=sim["times"], mask=sim["mask"])
        fitted, seconds, best, last = _fit(configs["node"], frames[train_idx],
                                           frames[valid_idx], seed)  # fmt: skip
        query = np.broadcast_to(sim["query"], (len(test_idx), len(sim["query"])))
        post = lj.infer(fitted, frames[test_idx], times=query, **refine)
        rows.append({"model": NAMES["node"], "seed": seed, "bin": "exact times", "chosen": True,
                     "dropped": 0.0, "valid": np.nan,
                     **_scores(sim, test_idx, np.asarray(post.rates)), "best": best,
                     "last": last, "seconds": seconds})  # fmt: skip
        print(rows[-1], flush=True)

    for model in [m for m in ("seqvae", "lfads") if m in args.models]:
        candidates = []
        for width_ms in widths[model]:
            width = width_ms / 1000
            trials, dropped = binned(sim, width, args.span)
            fitted, seconds, best, last = _fit(configs[model], trials[train_idx],
                                               trials[valid_idx], seed)  # fmt: skip
            options = refine if model == "seqvae" else {}
            rates = {split: to_query(np.asarray(lj.infer(fitted, trials[idx], **options).rates),
                                     width, sim["query"])
                     for split, idx in (("valid", valid_idx), ("test", test_idx))}  # fmt: skip
            valid_r2 = _scores(sim, valid_idx, rates["valid"])["inside"]
            candidates.append({"model": NAMES[model], "seed": seed, "bin": f"{width_ms:g} ms",
                               "chosen": False, "dropped": dropped, "valid": valid_r2,
                               **_scores(sim, test_idx, rates["test"]), "best": best,
                               "last": last, "seconds": seconds})  # fmt: skip
            print(candidates[-1], flush=True)
        chosen = max(candidates, key=lambda row: row["valid"])
        chosen["chosen"] = True
        widths[model] = [float(chosen["bin"].split()[0])]
        rows += candidates
    return rows


def _table(rows: list[dict], seeds: list[int]) -> list[str]:
    table = [
        "| model | seed | observations | frames dropped by binning | validation rate R² "
        "(inside, picks the bin) | test rate R² inside the observed span | test rate R² after "
        "the last frame (forecast) | best step | last step | fit seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " (chosen)" if r["chosen"] and r["bin"] != "exact times" else ""
        valid = "" if np.isnan(r["valid"]) else f"{r['valid']:.3f}"
        table.append(f"| {r['model']} | {r['seed']} | {r['bin']}{mark} | {r['dropped']:.0%} | "
                     f"{valid} | {r['inside']:.3f} | {r['after']:.3f} | {r['best']} | "
                     f"{r['last']} | {r['seconds']:.0f} |")  # fmt: skip
    if len(seeds) > 1:
        for name in NAMES.values():
            chosen = [r for r in rows if r["model"] == name and r["chosen"]]
            if not chosen:
                continue
            cells = []
            for key in ("inside", "after", "seconds"):
                values = np.array([r[key] for r in chosen])
                digits = 0 if key == "seconds" else 3
                cells.append(f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}")
            bins = ", ".join(r["bin"] for r in chosen)
            table.append(f"| **{name}, mean ± sd** | {len(chosen)} seeds | {bins} | | | "
                         f"{cells[0]} | {cells[1]} | | | {cells[2]} |")  # fmt: skip
    return table


def _paired(rows: list[dict]) -> list[str]:
    """Neural ODE minus each binned model (its chosen bin), seed by seed."""
    ode = {r["seed"]: r for r in rows if r["model"] == NAMES["node"]}
    lines = []
    for model in ("seqvae", "lfads"):
        other = {r["seed"]: r for r in rows if r["model"] == NAMES[model] and r["chosen"]}
        if not ode or not other:
            continue
        diffs = {s: (ode[s]["inside"] - other[s]["inside"], ode[s]["after"] - other[s]["after"])
                 for s in ode}  # fmt: skip
        seeds = ", ".join(f"seed {s}: {a:+.3f} / {b:+.3f}" for s, (a, b) in diffs.items())
        mean = np.mean(list(diffs.values()), axis=0)
        lines.append(f"Neural ODE minus {NAMES[model]} (chosen bin), test rate R² inside the "
                     f"observed span / after the last frame, paired by seed: {seeds}; mean "
                     f"{mean[0]:+.3f} / {mean[1]:+.3f}.")  # fmt: skip
    return lines


def _widths(args: argparse.Namespace, model: str) -> str:
    return ", ".join(f"{b:g}" for b in getattr(args, f"{model}_bins_ms") or args.bins_ms)


def _report(args: argparse.Namespace, rows: list[dict], seeds: list[int], minutes: float) -> str:
    """The markdown section for the seeds done so far."""
    configs = _configs(args)
    train = configs["node"].train
    lf = configs["lfads"]
    command = " ".join(["python scripts/node_irregular.py",
                        *[word for word in sys.argv[1:] if word != "--no-write"]])  # fmt: skip
    body = "\n".join([
        "## Lorenz at irregular continuous times: neural ODE vs sequential VAE vs LFADS",
        "",
        f"`{command}` ({minutes:.0f} min in all): for each seed "
        f"({', '.join(map(str, seeds))}) the Lorenz latents of `lj.datasets.lorenz` (that "
        f"seed, {args.trials} trials, "
        f"{args.neurons} neurons, baselines 5-20 Hz, the same 2.5 Lorenz time units per second) "
        f"integrated on a {FINE * 1000:g} ms clock and read at any time by linear interpolation. "
        f"Trials last {args.span} s; each has its own frame times, a Poisson process (mean gap "
        f"{args.gap * 1000:g} ms, about {args.observed / args.gap:.0f} frames) over the first "
        f"{args.observed} s only, so no two trials share a time and there is no grid. A frame "
        f"is a Poisson count per neuron with mean rate(t) x {args.window * 1000:g} ms. The "
        "neural ODE gets the frames at their exact times (`Trials.times`). The sequential VAE "
        f"and LFADS get them binned at each width in {_widths(args, 'seqvae')} ms (sequential "
        f"VAE) and {_widths(args, 'lfads')} ms (LFADS): each frame in the bin holding its "
        "time, a bin with several frames keeping the one nearest its centre (a sum would scale "
        "the count with the number of frames; the dropped fraction is in the table), empty bins"
        " masked (the sequential VAE's encoder sees the mask, LFADS's sees zeros there). On the"
        " first seed every width is fitted and the one with the best rate R² on the validation "
        "trials (against the true rates: a generous, oracle choice) is kept for the later seeds"
        " (time); test trials never "
        f"choose. Split per seed: {args.test} test trials, {args.valid} "
        "validation trials (early stopping: validation loss every "
        f"{train.chunk_size} steps, patience {args.patience}, best parameters kept), "
        f"{args.trials - args.test - args.valid} training trials, at most {args.steps} AdamW "
        f"steps (batch {train.batch_size}, cosine decay to 10%; lr {args.lr} for the ODE and "
        f"the sequential VAE, {lf.train.learning_rate} for LFADS, its preset's). Neural ODE: "
        f"latent_dim {configs['node'].latent_dim}, width {configs['node'].hidden_dim}, "
        f"time_scale {configs['node'].time_scale}, anchor 'middle', {args.refine_steps} "
        "anchor-refinement steps at inference. Sequential VAE: the sizes of the grid benchmark "
        f"above, {args.refine_steps} initial-state refinement steps at inference. LFADS: "
        f"`lfads.Config.preset({'tiny' if args.quick else 'lorenz'!r})` (gen_dim {lf.gen_dim}, "
        f"co_dim {lf.co_dim}, dropout {lf.dropout}, cd_rate {lf.cd_rate}), posterior mean of "
        f"20 samples. Score: rate R² (`lj.metrics.rate_r2`, true per-frame rates) of the test "
        f"trials at a {QUERY * 1000:g} ms query clock (never a frame time), inside each trial's "
        "observed span (first to last frame) and after its last frame (a forecast of about "
        f"{args.span - args.observed:.1f} s); the binned models' rates are interpolated "
        "linearly between bin centres (held flat before the first and after the last centre). "
        + args.note,
        "",
        *_table(rows, seeds),
        "",
        *[part for line in _paired(rows) for part in (line, "")],
        machine(),
    ])  # fmt: skip
    return body


def main() -> None:
    args = _arguments()
    # fits of later seeds reuse the first seed's compiled programs (same shapes)
    jax.config.update("jax_compilation_cache_dir", "/tmp/jax_cache_node_irregular")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    started = time.perf_counter()
    widths = {
        "seqvae": args.seqvae_bins_ms or args.bins_ms,
        "lfads": args.lfads_bins_ms or args.bins_ms,
    }
    rows, widths = [], {model: list(bins) for model, bins in widths.items()}
    for done, seed in enumerate(args.seeds, 1):
        rows += _run_seed(args, seed, widths)
        minutes = (time.perf_counter() - started) / 60
        body = _report(args, rows, args.seeds[:done], minutes)
        print(body, flush=True)
        # written after every seed, so an interrupted run leaves the seeds it finished
        if not args.no_write and not args.quick:
            write_section(BENCHMARKS / "node.md", args.section, body,
                          "Latent neural ODE benchmarks")  # fmt: skip


if __name__ == "__main__":
    main()
