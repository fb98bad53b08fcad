"""Fixed points of trained seqvae and LFADS generators on the 3-bit flip-flop (issue #21).

Each model (inferred inputs: `seqvae.input_dim = 3`, `lfads.co_dim = 3`) is fit to
`lj.datasets.flip_flop` spikes, then `lj.geometry.fixed_points(result, posterior)` searches
its generator's zero-input map from the states it visits on held-out trials. A linear map
from the model's latents to the true bits (least squares on the held-out trials) places each
stable fixed point in bit space; the task is recovered when there are 8 attractors, one at
each of the 8 memory states (sign patterns). Writes `benchmarks/fixed_points.md`.

    python scripts/fixed_points_flip_flop.py             # both models, 3 seeds (~15 min on 2 cores)
    python scripts/fixed_points_flip_flop.py --quick     # a smoke run
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _report import BENCHMARKS, machine, write_section

import latentjax as lj
from latentjax.models import lfads, seqvae
from latentjax.train import TrainConfig

TEST_TRIALS = 50


def _config(model: str, steps: int):
    train = TrainConfig(learning_rate=3e-3, batch_size=32, steps=steps, grad_clip=10.0)
    if model == "seqvae":
        return seqvae.Config(
            encoder_dim=32, initial_dim=8, input_dim=3, generator_dim=32, latent_dim=3, train=train
        )
    return lfads.Config(
        ic_enc_dim=32, ci_enc_dim=32, con_dim=32, co_dim=3, ic_dim=8, gen_dim=32, fac_dim=3,
        train=train,
    )  # fmt: skip


def run(model: str, seed: int, trials: int, steps: int) -> dict:
    data = lj.datasets.flip_flop(seed=seed, num_trials=trials + TEST_TRIALS)
    train, test = data.trials[:trials], data.trials[trials:]
    bits, rates = data.truth["latents"][trials:], data.truth["rates"][trials:]
    start = time.perf_counter()
    result = lj.fit(_config(model, steps), train, seed=seed, progress=False)
    fit_seconds = time.perf_counter() - start
    post = lj.infer(result, test)
    found = lj.geometry.fixed_points(result, post, max_starts=256, unique_tolerance=0.05)
    latents = np.asarray(post.latents).reshape(-1, 3)
    design = np.c_[latents, np.ones(len(latents))]
    to_bits = np.linalg.lstsq(design, bits.reshape(-1, 3), rcond=None)[0]
    attractors = np.c_[found.latents[found.stable], np.ones(int(found.stable.sum()))] @ to_bits
    corners = {tuple(np.sign(point).astype(int)) for point in attractors}
    return dict(
        rate_r2=lj.metrics.rate_r2(rates, np.asarray(post.rates)),
        bits_r2=1
        - np.sum((design @ to_bits - bits.reshape(-1, 3)) ** 2)
        / np.sum((bits.reshape(-1, 3) - bits.reshape(-1, 3).mean(0)) ** 2),
        attractors=int(found.stable.sum()),
        other=int((~found.stable).sum()),
        corners=len(corners),
        distance=float(np.max(np.abs(np.abs(attractors) - 1))) if len(attractors) else np.nan,
        fit_seconds=fit_seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--models", nargs="+", choices=("seqvae", "lfads"),
                        default=["seqvae", "lfads"])  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials, args.steps = [0], 40, 20

    rows = [
        "| model | seed | held-out rate R² | latents -> bits R² | attractors | other fixed "
        "points | memory states with an attractor (of 8) | max deviation from ±1 | fit s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in args.models:
        for seed in args.seeds:
            r = run(model, seed, args.trials, args.steps)
            rows.append(
                f"| {model} | {seed} | {r['rate_r2']:.3f} | {r['bits_r2']:.3f} | "
                f"{r['attractors']} | {r['other']} | {r['corners']} | {r['distance']:.2f} | "
                f"{r['fit_seconds']:.0f} |"
            )
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "## 3-bit flip-flop: fixed points of trained generators" + (" (quick)" * args.quick),
            "",
            f"- machine: {machine()}",
            f"- {args.trials} training trials and {TEST_TRIALS} held-out trials of 100 bins, "
            f"40 neurons; {args.steps} steps (batch 32, learning rate 3e-3); generators of 32 "
            "GRU units, 3 latents, 3 inferred inputs; fixed points from 256 visited states",
            "",
            *rows,
        ]
    )
    print(text)
    if not args.no_write:
        write_section(BENCHMARKS / "fixed_points.md", "flip_flop", text, "Fixed points")


if __name__ == "__main__":
    main()
