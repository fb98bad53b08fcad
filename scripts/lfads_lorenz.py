"""LFADS on `lj.datasets.lorenz` (defaults): latent R², rate R², co-bps against LDS and PLDS.

For each seed: the dataset of that seed, a seeded 80/20 trial split, 20% of neurons held out
(see scripts/_lfads_eval.py); LFADS (`Config.preset("lorenz")`) trains through `lj.fit` on the
training trials; on the test trials it reports the latent R² (best affine map from factors to
the true Lorenz state, `lj.metrics.latent_r2`), the rate R² of all neurons and the held-out
co-bps, next to spike smoothing, GPFA, LDS and PLDS baselines with a Poisson GLM read-out,
and the training time. Writes its section of benchmarks/lfads.md.

    python scripts/lfads_lorenz.py                 # 3 seeds, preset sizes
    python scripts/lfads_lorenz.py --quick         # small data and network, a few minutes
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from _lfads_eval import BASELINES, baselines, fit_lfads, split
from _report import BENCHMARKS, machine, write_section

import latentjax as lj
from latentjax.models import lfads
from latentjax.train import TrainConfig


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--out", default=str(BENCHMARKS / "lfads.md"))
    parser.add_argument("--note", default="")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES))
    args = parser.parse_args()

    sizes, config = {}, lfads.Config.preset("lorenz")
    if args.quick:
        sizes = dict(num_trials=48, num_bins=40)
        config = lfads.Config.preset("tiny", kl_ramp_steps=100, l2_ramp_steps=100)
        config = dataclasses.replace(
            config, train=TrainConfig(learning_rate=5e-3, batch_size=32, grad_clip=200.0)
        )
    steps = args.steps or config.train.steps
    rows = []
    for seed in args.seeds:
        data = lj.datasets.lorenz(seed=seed, **sizes)
        s = split(data.trials, seed=seed)
        post, seconds, co = fit_lfads(config, s, seed=seed, steps=steps)
        true_latents = np.asarray(data.truth["latents"])[s.test_index]
        true_rates = np.asarray(data.truth["rates"])[s.test_index][..., s.neuron_order]
        latent_r2 = lj.metrics.latent_r2(true_latents, np.asarray(post.latents)).mean
        rate_r2 = lj.metrics.rate_r2(true_rates, np.asarray(post.rates))
        row = dict(seed=seed, model="LFADS", co_bps=co, seconds=seconds)
        rows.append({**row, "latent_r2": latent_r2, "rate_r2": rate_r2})
        print(rows[-1], flush=True)
        for baseline in baselines(s, latent_dim=3 if args.quick else 8, kernel_sd_bins=2.0,
                                  seed=seed, names=args.baselines):  # fmt: skip
            rows.append({"seed": seed, **baseline})
            print(rows[-1], flush=True)

    def fmt(value):
        return "-" if value is None else f"{value:.3f}"

    table = [
        "| seed | model | co-bps (held-out neurons) | latent R² | rate R² | fit seconds |",
        "|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['seed']} | {r['model']} | {fmt(r['co_bps'])} | {fmt(r.get('latent_r2'))} | "
        f"{fmt(r.get('rate_r2'))} | {r['seconds']:.0f} |"
        for r in rows
    ]
    data_line = "lj.datasets.lorenz(" + ", ".join(f"{k}={v}" for k, v in sizes.items()) + ")"
    text = "\n".join(
        [
            f"## Lorenz (scripts/lfads_lorenz.py{' --quick' if args.quick else ''})",
            "",
            f"Data: {data_line} per seed; 80/20 trials and 20% held-out neurons, seeded by the "
            f"seed. LFADS: {'tiny' if args.quick else 'lorenz'} preset (dropout "
            f"{config.dropout}, coordinated dropout {config.cd_rate}), {steps} steps, batch "
            f"{config.train.batch_size}, lr {config.train.learning_rate}; posterior means over "
            "20 samples. Baselines: latents (or smoothed spikes, 2-bin s.d.) to held-out "
            "neurons by a Poisson GLM.",
            f"Machine: {machine()}.",
            *([f"Note: {args.note}"] if args.note else []),
            "",
            *table,
        ]
    )
    print(text)
    write_section(args.out, "lorenz-quick" if args.quick else "lorenz", text, "LFADS benchmarks")


if __name__ == "__main__":
    main()
