"""Neural ODE vs sequential VAE on Lorenz spikes with 70% of the bins dropped at random.

Both models see the same 30% of bins: the neural ODE as irregular observations (the kept bins
compacted with their `times`), the sequential VAE on the original bin grid with the dropped
bins masked. `--test` random trials are never used in training and `--valid` more are held
out for early stopping (the validation loss after every chunk, `TrainConfig(patience=...)`,
best parameters kept). Each model then predicts rates at every original bin of every trial;
the score is the rate R² against the true rates at the dropped bins only (never seen by
either model), of the test trials (out of sample), of the training trials and of all. Both
models refine each trial's state (the ODE's anchor, the VAE's initial state) by
`--refine-steps` MAP steps at inference (`lj.infer(..., refine_steps=...)`) and are also
scored on their encoder's means alone. With several `--seeds` each seed draws its own data
set, subsample, split and initialisation, and the table ends with each model's mean and
standard deviation over the seeds; `--fits DIR` keeps each fit (`DIR/seed<seed>/<model>.pkl`)
and reuses it when the script runs again.

    python scripts/node_lorenz.py            # full sizes (~15 min on 2 cores)
    python scripts/node_lorenz.py --seeds 0 1 2   # the recorded comparison (~1 h on 2 cores)
    python scripts/node_lorenz.py --quick    # a smoke run at tiny sizes
    python scripts/node_lorenz.py --models node --latent-dim 4 --no-write   # one tuning run
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import jax
import numpy as np
from _report import BENCHMARKS, machine, write_section

import latentjax as lj
import latentjax.models.node as node
import latentjax.models.seqvae as seqvae
from latentjax.train import TrainConfig

MODELS = ("node", "seqvae")
NAMES = {"node": "neural ODE (node)", "seqvae": "sequential VAE (seqvae)"}
AMORTISED = ", encoder's mean only"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--steps", type=int, default=15000)
    parser.add_argument("--trials", type=int, default=2400)
    parser.add_argument("--keep", type=float, default=0.3)
    parser.add_argument("--valid", type=int, default=400, help="trials for early stopping")
    parser.add_argument("--test", type=int, default=400, help="trials never used in training")
    parser.add_argument("--patience", type=int, default=20, help="validations (chunks)")
    parser.add_argument("--chunk", type=int, default=100, help="steps between validations")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--kl-scale", type=float, default=1.0)
    parser.add_argument("--anchor", choices=node.ANCHORS, default="middle", help="node anchor")
    parser.add_argument("--segments", type=int, default=1, help="node multiple shooting")
    parser.add_argument("--continuity-std", type=float, default=0.1, help="node, segments > 1")
    parser.add_argument("--seqvae-inputs", type=int, default=0, help="seqvae input_dim")
    parser.add_argument("--cd-rate", type=float, default=0.0, help="coordinated dropout (both)")
    parser.add_argument("--samples", type=int, default=1, help="node posterior samples")
    parser.add_argument("--importance", action="store_true", help="node: weight the samples")
    parser.add_argument("--refine-steps", type=int, default=50, help="MAP steps per trial")
    parser.add_argument("--refine-lr", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one run per seed (data set, subsample, split and fit)")  # fmt: skip
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--fits", help="folder caching each seed's fits (reused if present)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.trials, args.valid, args.test = 20, 16, 3, 3
        args.width, args.chunk = 16, 10
    return args


def _configs(args: argparse.Namespace, train: TrainConfig) -> dict:
    return {
        "node": node.Config(
            latent_dim=args.latent_dim,
            hidden_dim=args.width,
            encoder_dim=args.width,
            time_scale=args.time_scale,
            anchor=args.anchor,
            segments=args.segments,
            continuity_std=args.continuity_std,
            kl_scale=args.kl_scale,
            cd_rate=args.cd_rate,
            kl_ramp_steps=args.steps // 4,
            train=train,
        ),
        "seqvae": seqvae.Config(
            encoder_dim=args.width,
            generator_dim=args.width,
            initial_dim=16,
            latent_dim=8,
            input_dim=args.seqvae_inputs,
            cd_rate=args.cd_rate,
            kl_ramp_steps=args.steps // 4,
            train=train,
        ),
    }


def _run_seed(args: argparse.Namespace, seed: int) -> tuple[list, dict]:
    """Fit and score the models on the data set, subsample and split drawn with `seed`.

    Returns the table rows (model, seed, scores, steps, loss, seconds) and the configs."""
    data = lj.datasets.lorenz(seed=seed, num_trials=args.trials, num_bins=100,
                              num_neurons=30)  # fmt: skip
    sparse, index = lj.datasets.subsample(data.trials, args.keep, seed=seed,
                                          return_index=True)  # fmt: skip
    kept = np.zeros(data.trials.mask.shape, bool)
    rows = np.repeat(np.arange(args.trials)[:, None], index.shape[1], 1)
    kept[rows[index >= 0], index[index >= 0]] = True
    dropped = ~kept
    bins = np.arange(kept.shape[1])
    first_kept, last_kept = kept.argmax(1), kept.shape[1] - 1 - kept[:, ::-1].argmax(1)
    inside = (bins >= first_kept[:, None]) & (bins <= last_kept[:, None])
    observed = {"node": sparse, "seqvae": data.trials.replace(mask=kept)}
    refinement = {"refine_steps": args.refine_steps, "refine_lr": args.refine_lr}
    amortised = {"node": {"times": data.trials.times}, "seqvae": {}}
    refined = {model: {**options, **refinement} for model, options in amortised.items()}
    infer_options = {"node": {**refined["node"], "num_samples": args.samples,
                              "importance": args.importance},
                     "seqvae": refined["seqvae"]}  # fmt: skip

    order = np.random.default_rng(seed).permutation(args.trials)
    test_idx = np.sort(order[: args.test])
    valid_idx = np.sort(order[args.test : args.test + args.valid])
    train_idx = np.sort(order[args.test + args.valid :])
    train = TrainConfig(learning_rate=args.lr, batch_size=min(32, len(train_idx)),
                        steps=args.steps, grad_clip=10.0, chunk_size=min(args.chunk, args.steps),
                        schedule="cosine", final_lr_fraction=0.1,
                        patience=args.patience)  # fmt: skip
    configs = _configs(args, train)

    def scores(post) -> dict:
        parts = {"dropped": dropped, "kept": kept, "between": dropped & inside,
                 "outside": dropped & ~inside}  # fmt: skip
        r2 = {part: lj.metrics.rate_r2(data.truth["rates"], post.rates, mask=mask)
              for part, mask in parts.items()}  # fmt: skip
        for split, idx in (("test", test_idx), ("train", train_idx)):
            r2[split] = lj.metrics.rate_r2(
                data.truth["rates"][idx], post.rates[idx], mask=dropped[idx]
            )
        r2["latent"] = lj.metrics.latent_r2(data.truth["latents"], post.latents).mean
        return r2

    results = []
    for model in args.models:
        cache = None if args.fits is None else Path(args.fits) / f"seed{seed}" / f"{model}.pkl"
        if cache is not None and cache.exists():
            fitted, seconds = pickle.loads(cache.read_bytes())
        else:
            started = time.perf_counter()
            fitted = lj.fit(configs[model], observed[model][train_idx],
                            valid=observed[model][valid_idx], seed=seed,
                            progress=False)  # fmt: skip
            seconds = time.perf_counter() - started
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_bytes(pickle.dumps((jax.device_get(fitted), seconds)))
        history = fitted.history
        best = int(np.nanargmin(history["valid_loss"]))
        curve = ", ".join(
            f"{s}: {v:.4f}" for s, v in zip(history["step"], history["valid_loss"], strict=True)
        )
        print(f"{NAMES[model]}, seed {seed}, validation loss by step: {curve}", flush=True)
        readouts = [(NAMES[model], infer_options[model])]
        if model == "node" and args.samples > 1 and args.refine_steps:
            readouts.append((f"{NAMES[model]}, refined anchor only", refined[model]))
        if args.refine_steps or (model == "node" and args.samples > 1):
            readouts.append((f"{NAMES[model]}{AMORTISED}", amortised[model]))
        for name, options in readouts:
            r2 = scores(lj.infer(fitted, observed[model], **options))
            results.append((name, seed, r2["test"], r2["train"], r2["dropped"], r2["outside"],
                            r2["kept"], r2["latent"], int(history["step"][best]),
                            int(history["step"][-1]), float(history["valid_loss"][best]),
                            seconds))  # fmt: skip
            print(f"{name}, seed {seed}: rate R² dropped {r2['dropped']:.3f} (test trials "
                  f"{r2['test']:.3f}, training trials {r2['train']:.3f}; between the first "
                  f"and last kept bin "
                  f"{r2['between']:.3f}, outside {r2['outside']:.3f}), kept {r2['kept']:.3f}, "
                  f"latent {r2['latent']:.3f}, best step {history['step'][best]}, "
                  f"{seconds:.0f} s", flush=True)  # fmt: skip
    return results, configs


def _command_options() -> list[str]:
    """This run's command-line options, less `--fits` (a cache folder) and `--no-write`."""
    options, skip = [], False
    for word in sys.argv[1:]:
        if skip or word == "--no-write":
            skip = False
            continue
        skip = word == "--fits"
        options += [] if skip else [word]
    return options


def _table(results: list, seeds: list[int]) -> list[str]:
    """Markdown rows: one per model and seed, then (several seeds) each model's mean ± sd."""
    table = [
        "| model | seed | rate R² at dropped bins of test trials | ... of training trials | "
        "... of all trials | ... of all trials, outside the kept span | rate R² at kept bins | "
        "latent R² (all bins) | best step | last step | best valid loss | fit seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    table += [f"| {n} | {s} | {a:.3f} | {b:.3f} | {c:.3f} | {d:.3f} | {e:.3f} | {f:.3f} | {g} "
              f"| {h} | {i:.4f} | {j:.0f} |"
              for n, s, a, b, c, d, e, f, g, h, i, j in results]  # fmt: skip
    if len(seeds) > 1:
        for name in dict.fromkeys(row[0] for row in results):
            scores = np.array([row[2:8] for row in results if row[0] == name])
            cells = " | ".join(f"{m:.3f} ± {sd:.3f}" for m, sd in
                               zip(scores.mean(0), scores.std(0, ddof=1), strict=True))  # fmt: skip
            table.append(f"| **{name}, mean ± sd** | {len(scores)} seeds | {cells} | | | | |")
    return table


def _paired_differences(results: list) -> list[str]:
    """The neural ODE's test- and training-trial scores minus the sequential VAE's, seed by
    seed, for each read-out both models have (main, encoder's mean only)."""
    by_name = {}
    for row in results:
        by_name.setdefault(row[0], []).append(row)
    lines = []
    for readout, suffix in (("main read-outs", ""), ("encoder's means", AMORTISED)):
        ode, vae = by_name.get(NAMES["node"] + suffix), by_name.get(NAMES["seqvae"] + suffix)
        if ode is None or vae is None:
            continue
        difference = np.array([r[2:4] for r in ode]) - np.array([r[2:4] for r in vae])
        seeds = ", ".join(f"seed {r[1]}: {d[0]:+.3f} / {d[1]:+.3f}"
                          for r, d in zip(ode, difference, strict=True))  # fmt: skip
        mean = difference.mean(0)
        lines.append(f"Neural ODE minus sequential VAE ({readout}), rate R² at dropped bins of "
                     f"test / training trials, paired by seed: {seeds}; mean {mean[0]:+.3f} / "
                     f"{mean[1]:+.3f}.")  # fmt: skip
    return lines


def main() -> None:
    args = _arguments()
    results = []
    for seed in args.seeds:
        rows, configs = _run_seed(args, seed)
        results += rows
    table = _table(results, args.seeds)
    train = configs["node"].train
    node_config = configs["node"]
    command = " ".join(["python scripts/node_lorenz.py", *_command_options()])
    body = "\n".join(
        [
            "## Lorenz with 70% of bins dropped: neural ODE vs sequential VAE",
            "",
            f"`{command}`: for each seed ({', '.join(map(str, args.seeds))}), "
            f"`lj.datasets.lorenz` ({args.trials} trials x 100 bins x 30 neurons), "
            f"`lj.datasets.subsample(keep={args.keep})`, the split and the initialisation drawn "
            f"from that seed: {args.test} random test trials never used in training, "
            f"{args.valid} held out for early stopping (validation loss every "
            f"{train.chunk_size} steps, patience {args.patience}, best parameters kept), the "
            f"rest ({args.trials - args.test - args.valid}) trained for at most "
            f"{args.steps} AdamW steps (lr {args.lr}, cosine decay to 10%, batch "
            f"{train.batch_size}). Neural ODE: latent_dim {node_config.latent_dim}, width "
            f"{node_config.hidden_dim}, time_scale {node_config.time_scale}, kl_scale "
            f"{node_config.kl_scale}, anchor {node_config.anchor!r}, segments "
            f"{node_config.segments} (continuity_std {node_config.continuity_std}), cd_rate "
            f"{node_config.cd_rate}, {args.refine_steps} anchor-refinement steps (lr "
            f"{args.refine_lr}) at inference, then {args.samples} posterior sample(s)"
            f"{' weighted by importance (Laplace proposal)' if args.importance else ''}. "
            "Sequential "
            f"VAE: input_dim {configs['seqvae'].input_dim}, cd_rate "
            f"{configs['seqvae'].cd_rate}, the same refinement of its initial state at "
            "inference. Each model is also scored on its encoder's means alone. Both "
            "read out by `lj.infer` at every original bin of every trial. The neural ODE sees "
            "the kept bins as irregular observations, the sequential VAE the same bins on the "
            "original grid with the dropped bins masked. Rate R² against the true rates "
            "(`lj.metrics.rate_r2`), per neuron, averaged, at the dropped bins (never seen) of "
            "the test trials (out of sample: new trials of the same system), of the training "
            "trials (filling in the data the model was fitted to), of all trials, and of all "
            "trials before the first or after the last kept bin (extrapolation).",
            "",
            *table,
            "",
            *[part for line in _paired_differences(results) for part in (line, "")],
            machine(),
        ]
    )
    print(body)
    if not args.no_write:
        write_section(
            BENCHMARKS / "node.md",
            "lorenz" + ("_quick" if args.quick else ""),
            body,
            "Latent neural ODE benchmarks",
        )


if __name__ == "__main__":
    main()
