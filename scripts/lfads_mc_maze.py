"""LFADS on real data: NLB MC_Maze_Small (test split), co-bps against smoothing, GPFA, LDS.

Data: ../shared/data/mc_maze_small_test (DANDI:000140; Churchland et al. 2010, 2012; Pei et
al. 2021, CC-BY-4.0), `lj.io.load_nwb(path, bin_size=0.005, align="move_onset_time",
window=(-0.25, 0.45))`: 100 trials x 140 bins x 107 neurons. 20% of the neurons are held out
and trials split 80/20, both with the seed (scripts/_lfads_eval.py). LFADS uses
`Config.preset("nlb_mc_maze")` (AutoLFADS sizes, coordinated dropout 0.3, AR(1) prior)
through `lj.fit`; baselines read held-out neurons through a Poisson GLM. Writes its section of
benchmarks/lfads.md.

    python scripts/lfads_mc_maze.py                # preset, 3000 steps
    python scripts/lfads_mc_maze.py --quick        # tiny network, 200 steps
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from _lfads_eval import BASELINES, baselines, fit_lfads, split
from _report import BENCHMARKS, machine, write_section

import latentjax as lj
from latentjax.models import lfads
from latentjax.train import TrainConfig

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared/data/mc_maze_small_test"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", default=str(BENCHMARKS / "lfads.md"))
    parser.add_argument("--note", default="")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES))
    args = parser.parse_args()

    path = next(DATA.glob("*.nwb"))
    trials = lj.io.load_nwb(path, bin_size=0.005, align="move_onset_time", window=(-0.25, 0.45))
    s = split(trials, seed=args.seed)
    config = lfads.Config.preset("tiny" if args.quick else "nlb_mc_maze")
    config = dataclasses.replace(
        config,
        train=TrainConfig(
            learning_rate=4e-3, batch_size=32, steps=args.steps, grad_clip=200.0, chunk_size=100
        ),
    )
    _, seconds, co = fit_lfads(config, s, seed=args.seed, steps=args.steps)
    rows = [dict(model="LFADS", co_bps=co, seconds=seconds)]
    print(rows[-1], flush=True)
    for row in baselines(s, latent_dim=8 if args.quick else 20, kernel_sd_bins=10.0,
                         seed=args.seed, names=args.baselines):  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    table = ["| model | co-bps (held-out neurons) | fit seconds |", "|---|---|---|"]
    table += [f"| {r['model']} | {r['co_bps']:.3f} | {r['seconds']:.0f} |" for r in rows]
    text = "\n".join(
        [
            f"## MC_Maze_Small test split (scripts/lfads_mc_maze.py{' --quick' * args.quick})",
            "",
            f"Data: {trials!r}, from {path.name} (DANDI:000140; Churchland et al. 2010, 2012; "
            f"Pei et al. 2021). Seed {args.seed}: 80/20 trials ({s.train.num_trials}/"
            f"{s.test_heldin.num_trials}), {s.n_heldout} held-out neurons. LFADS: "
            f"{'tiny' if args.quick else 'nlb_mc_maze'} preset, {args.steps} steps, batch 32, "
            "lr 4e-3, no hyperparameter search. Smoothing: 50 ms s.d. Gaussian kernel.",
            f"Machine: {machine()}.",
            *([f"Note: {args.note}"] if args.note else []),
            "",
            *table,
        ]
    )
    print(text)
    write_section(args.out, "mc-maze-quick" if args.quick else "mc-maze", text, "LFADS benchmarks")


if __name__ == "__main__":
    main()
