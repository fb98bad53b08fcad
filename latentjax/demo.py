"""`latentjax demo`: Lorenz latents seen through Poisson neurons, recovered by two models.

Simulates `lj.datasets.lorenz` (160 trials x 100 bins x 30 neurons, 10 ms bins), splits the
trials 80/20, fits the Gaussian LDS baseline (EM on square-root counts) and LFADS (Lorenz
preset, shortened so the whole demo runs in a few minutes on 2 CPU cores), and writes

    OUT/data.npz                      the simulated trials (lj.io.load reads them)
    OUT/lds/, OUT/lfads/              run folders: checkpoints, metrics, posterior, report
    OUT/figures/*.png                 true against inferred latents, one figure per model
    OUT/summary.md, OUT/report.html   the comparison table and the figures
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

__all__ = ["run_demo"]


def _models(quick: bool) -> dict:
    from latentjax.models import lds, lfads
    from latentjax.train import TrainConfig

    if quick:
        lfads_config = lfads.Config.preset(
            "tiny",
            train=TrainConfig(
                learning_rate=1e-2, batch_size=8, steps=20, chunk_size=10, grad_clip=200.0
            ),
        )
        lds_config = lds.Config(
            latent_dim=3, transform="sqrt", train=TrainConfig(steps=5, chunk_size=5)
        )
    else:
        lfads_config = lfads.Config.preset("lorenz")  # its own 1000-step budget
        lds_config = lds.Config(
            latent_dim=3, transform="sqrt", train=TrainConfig(steps=100, chunk_size=25)
        )
    return {"lds": lds_config, "lfads": lfads_config}


def _check_folder(out: Path, trials) -> None:
    """Refuse (ValueError) a folder that holds another demo's data or other files: a rerun
    of the same demo resumes its fits; nothing else is overwritten."""
    import latentjax as lj

    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"out: {out} is a file, not a folder")
    data = out / "data.npz"
    if data.exists():
        saved = lj.io.load(data)
        same = saved.shape == trials.shape and np.array_equal(saved.spikes, trials.spikes)
        if not same:
            raise ValueError(
                f"out: {out} holds the data of another run ({saved.shape} trials x bins x "
                "neurons); use another folder"
            )
    elif any(out.iterdir()):
        raise ValueError(f"out: {out} is not empty and holds no demo; use another folder")


def run_demo(out="demo_run", *, quick=False, progress=True, seed=0) -> str:
    """Run the demo into folder `out`; returns the summary text (also in `out/summary.md`).

    `quick=True` uses tiny sizes and a few steps (a smoke test, not a result).
    """
    import latentjax as lj
    from latentjax import plot
    from latentjax.report import complete_run, page

    out = Path(out)
    sizes = dict(num_trials=20, num_bins=40, num_neurons=12) if quick else {}
    dataset = lj.datasets.lorenz(seed=seed, **sizes)
    trials = dataset.trials
    _check_folder(out, trials)
    out.mkdir(parents=True, exist_ok=True)
    lj.io.save(trials, out / "data.npz")
    train, valid = lj.data.split(trials, (0.8, 0.2), seed=seed)

    rows, figures = {}, {}
    (out / "figures").mkdir(exist_ok=True)
    for name, config in _models(quick).items():
        started = time.perf_counter()
        result = lj.fit(config, train, valid=valid, seed=seed, out=out / name, progress=progress)
        outputs = complete_run(result, trials, truth=dataset.truth, seed=seed)
        seconds = time.perf_counter() - started
        rows[name] = {**outputs.evaluation, "seconds (fit + report)": seconds}
        posterior = outputs.posterior
        fitted = lj.metrics.latent_r2(dataset.truth["latents"], posterior.latents)
        figure = plot.true_vs_inferred(
            dataset.truth["latents"],
            fitted.affine_map(posterior.latents),
            dt=trials.dt,
            title=f"{name}: true (black) and inferred Lorenz latents, R² = {fitted.mean:.3f}",
        )
        path = out / "figures" / f"true_vs_inferred_{name}.png"
        figure.savefig(path, dpi=100)
        figures[name] = path

    summary = _summary_table(rows, trials)
    (out / "summary.md").write_text(summary + "\n")
    (out / "report.html").write_text(
        page("latentjax demo: Lorenz", summary_rows=rows, figures=list(figures.values()))
    )
    return summary + f"\n\nwrote {out}/ (report.html, summary.md, figures/, lds/, lfads/)"


def _summary_table(rows: dict, trials) -> str:
    keys = [k for k in next(iter(rows.values())) if all(k in r for r in rows.values())]
    lines = [
        f"Lorenz demo: {trials.num_trials} trials x {trials.num_bins} bins x "
        f"{trials.num_neurons} neurons, dt = {trials.dt} s",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)
