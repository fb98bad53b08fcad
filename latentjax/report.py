"""Run reports: `RUN/figures/*.png` and one self-contained `RUN/report.html`.

`write_report(run_dir, ...)` draws every figure that applies to what it is given or finds in
the run folder (training curves from `metrics.jsonl`, latents from `posterior.npz`; rasters
and PSTHs need the trials, true-against-inferred latents need the truth), keeps figures an
earlier call drew, and writes an HTML page with the config, the metrics table and every
figure embedded as PNG data, so the page can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from latentjax.results import Posterior
from latentjax.train.run import member_histories

__all__ = ["RunOutputs", "complete_run", "make_figures", "page", "write_evaluation", "write_report"]

_FIGURE_ORDER = (
    "true_vs_inferred",
    "raster",
    "latent_trajectories",
    "training_curves",
    "psths",
    "persistence",
    "communication",
)


def make_figures(*, trials=None, posterior=None, truth=None, histories=None, family=None) -> dict:
    """Name -> Figure for everything the inputs allow (see module docstring), plus the
    figures of the family's `figures(posterior, trials)` hook (`family`: its registered name,
    default `posterior.family`)."""
    from latentjax import geometry, metrics, plot

    figures = {}
    if histories:
        figures["training_curves"] = plot.training_curves(histories)
    if posterior is None:
        return figures
    latents = np.asarray(posterior.latents)
    conditions = None if trials is None else trials.conditions
    if latents.shape[-1] >= 2:
        shown = geometry.pca(latents, min(3, latents.shape[-1])).coordinates
        figure = plot.latent_trajectories(
            shown, color_by=conditions, dims=tuple(range(min(3, shown.shape[-1])))
        )
        figure.axes[0].set_title("inferred latents (principal components)")
        figures["latent_trajectories"] = figure
        points = latents.reshape(-1, latents.shape[-1])
        diagrams = geometry.persistence(points, maxdim=1, n_points=min(300, len(points)))
        figures["persistence"] = plot.plot_diagram(diagrams, title="persistence of latents")
    dt = 1.0 if trials is None else trials.dt
    if trials is not None and posterior.rates is not None:
        if np.shape(posterior.rates)[:2] == trials.spikes.shape[:2]:
            rates = np.asarray(posterior.rates)[..., : trials.num_neurons]
            figures["raster"] = plot.raster(trials, rates)
            if conditions is not None:
                figures["psths"] = plot.psths(rates, conditions, spikes=trials.spikes, dt=dt)
    if truth is not None and "latents" in truth:
        true_latents = np.asarray(truth["latents"])
        if true_latents.shape[:2] == latents.shape[:2]:
            fitted = metrics.latent_r2(true_latents, latents)
            figures["true_vs_inferred"] = plot.true_vs_inferred(
                true_latents,
                fitted.affine_map(latents),
                dt=dt,
                title=f"true (black) and inferred latents, held-out R² = {fitted.mean:.3f}",
            )
    from latentjax.family import hook

    family_figures = hook(family or posterior.family, "figures")
    if family_figures is not None:
        figures.update(family_figures(posterior, trials))
    return figures


class RunOutputs(NamedTuple):
    evaluation: Any  # the `lj.evaluate` table
    posterior: Posterior


def complete_run(result, trials, *, truth=None, seed=0, report=True) -> RunOutputs:
    """After a fit: infer on `trials`, write `posterior.npz`, `evaluation.json` and the report.

    This is what `latentjax fit` and the demo run after `lj.fit`.
    """
    from latentjax.api import infer
    from latentjax.evaluate import evaluate

    run = Path(result.run_dir)
    posterior = infer(result, trials, seed=seed)
    np.savez(run / "posterior.npz", **posterior.to_numpy())
    table = evaluate(posterior, trials, truth=truth, seed=seed)
    write_evaluation(run, table)
    if report:
        write_report(run, trials=trials, posterior=posterior, truth=truth, result=result)
    return RunOutputs(table, posterior)


def write_evaluation(run_dir, table) -> Path:
    """Write an `lj.evaluate` table as `run_dir/evaluation.json` (what the report shows)."""
    path = Path(run_dir) / "evaluation.json"
    path.write_text(json.dumps(dict(table), indent=1, default=float) + "\n")
    return path


def write_report(run_dir, *, trials=None, posterior=None, truth=None, result=None) -> Path:
    """Draw the figures into `run_dir/figures/` and write `run_dir/report.html`.

    Args:
      run_dir: a run folder (written by `lj.fit(..., out=...)` or `latentjax fit`).
      trials: the `Trials` the posterior describes (for rasters and PSTHs).
      posterior: a `Posterior`; default `run_dir/posterior.npz` if present.
      truth: ground truth of synthetic data (`Dataset.truth`) for true-vs-inferred latents.
      result: a `FitResult` or list of them, for training curves; default `metrics.jsonl`.

    Returns:
      the path of `report.html`.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise ValueError(f"write_report: `run_dir` {run} is not a folder")
    family = _run_family(run)
    if posterior is None and (run / "posterior.npz").exists():
        with np.load(run / "posterior.npz") as arrays:
            posterior = Posterior.from_numpy(dict(arrays))
    if result is not None:
        histories = [r.history for r in (result if isinstance(result, list) else [result])]
    elif (run / "metrics.jsonl").exists():
        histories = member_histories(run / "metrics.jsonl")
    else:
        histories = None

    figure_dir = run / "figures"
    figure_dir.mkdir(exist_ok=True)
    for name, figure in make_figures(
        trials=trials, posterior=posterior, truth=truth, histories=histories, family=family
    ).items():
        figure.savefig(figure_dir / f"{name}.png", dpi=100)

    path = run / "report.html"
    path.write_text(_html(run, sorted(figure_dir.glob("*.png"), key=_figure_rank)))
    return path


def _run_family(run: Path) -> str | None:
    """The registered name of the family of the run in `run`, from its `config.json`."""
    from latentjax import family
    from latentjax.train.run import config_from_json

    record = _read_json(run / "config.json")
    if record is None:
        return None
    return family.of_config(config_from_json(record["config"])).name


def _figure_rank(path: Path) -> tuple[int, str]:
    name = path.stem
    return (_FIGURE_ORDER.index(name) if name in _FIGURE_ORDER else len(_FIGURE_ORDER), name)


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _config_text(record) -> str:
    """config.json's config as indented `field = value` lines."""

    def lines(value, indent=""):
        if isinstance(value, dict) and "__class__" in value:
            out = []
            for name, field in value["fields"].items():
                if isinstance(field, dict) and "__class__" in field:
                    out.append(f"{indent}{name}:")
                    out.extend(lines(field, indent + "  "))
                else:
                    out.append(f"{indent}{name} = {_plain(field)}")
            return out
        return [f"{indent}{_plain(value)}"]

    return "\n".join(lines(record))


def _plain(value):
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(_plain(v) for v in value["__tuple__"])
    if isinstance(value, dict) and "__dict__" in value:
        return {k: _plain(v) for k, v in value["__dict__"].items()}
    return value


def _html(run: Path, figures: list[Path]) -> str:
    config = _read_json(run / "config.json")
    data = _read_json(run / "data.json")
    sections = {}
    if config:
        family = config["config"].get("__class__", "?").split(":")[0]
        sections[f"Config ({family})"] = _config_text(config["config"])
    if data:
        sections["Data"] = _data_text(data)
    evaluation = _read_json(run / "evaluation.json")
    return page(
        f"latentjax run: {run.name}",
        summary_rows={"metrics": evaluation} if evaluation else None,
        figures=figures,
        sections=sections,
    )


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def page(title: str, *, summary_rows=None, figures=(), sections=None) -> str:
    """A self-contained HTML page: a metrics table (rows of name -> {metric: value}), the
    PNG figures embedded as data, and preformatted text sections."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if summary_rows:
        columns = list(dict.fromkeys(k for row in summary_rows.values() for k in row))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", *columns])
        body = "".join(
            f"<tr><td>{html.escape(name)}</td>"
            + "".join(f"<td>{_cell(row.get(c, ''))}</td>" for c in columns)
            + "</tr>"
            for name, row in summary_rows.items()
        )
        parts.append(f"<h2>Metrics</h2><table><tr>{head}</tr>{body}</table>")
    for path in figures:
        encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        caption = html.escape(Path(path).stem.replace("_", " "))
        parts.append(
            f'<figure><img alt="{caption}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    for heading, text in (sections or {}).items():
        parts.append(f"<h2>{html.escape(heading)}</h2><pre>{html.escape(text)}</pre>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
        "img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#555}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{style}</style>"
        f"</head><body>{''.join(parts)}</body></html>\n"
    )


def _data_text(record: dict) -> str:
    lines = []
    for split in ("train", "valid"):
        described = record.get(split)
        if described:
            shape = " x ".join(map(str, described["shape"]))
            lines.append(f"{split}: {shape} (trials x bins x neurons), dt = {described['dt']} s")
    return "\n".join(lines) or json.dumps(record, indent=1)
