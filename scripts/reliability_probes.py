"""Replay the reliability probes of issue #20 and write `benchmarks/reliability.md`.

Each probe does one careless or unlucky thing a user does (bad data, files, configs, reruns,
inputs that do not match the fitted run) through the Python API or the command line, and is
classified by what came back:

- clear error: a ValueError (or NonFiniteError, or a one-line CLI error with exit code 1)
  whose message names the problem (the probe's pattern);
- correct result: it ran, and the result checks out against what it should be;
- silent: it returned a wrong or untrained result, or exit code 0, without saying so;
- cryptic: another exception, a traceback from the CLI, or a message that does not name the
  problem.

Usage: `python scripts/reliability_probes.py [--out benchmarks/reliability.md]`
(the NWB probes need `../shared/data`, else they are listed as skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import BENCHMARKS, machine, write_section  # noqa: E402

import latentjax as lj  # noqa: E402
from latentjax.cli import main as cli_main  # noqa: E402
from latentjax.configs import update_config  # noqa: E402
from latentjax.models import lds, lfads  # noqa: E402
from latentjax.train import NonFiniteError  # noqa: E402

SHARED = Path(os.environ.get("LATENTJAX_SHARED_DATA") or Path(__file__).parents[2] / "shared/data")
MC_MAZE = SHARED / "mc_maze_small_test/sub-Jenkins_ses-small_desc-test_ecephys.nwb"
TINY = "lorenz:num_trials=12,num_bins=30,num_neurons=8"


@dataclasses.dataclass(frozen=True)
class Probe:
    area: str
    what: str
    run: Callable[[Path], object]
    error: str | None = None  # the pattern a clear error names; None: a result is expected
    check: Callable[[object], bool] | None = None  # a result's check


class CliResult:
    def __init__(self, code: int, err: str):
        self.code, self.err = code, err


def cli(*argv: str) -> CliResult:
    """`latentjax ARGV` in this process: exit code and stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli_main([*argv])
        except SystemExit as exit_:
            code = exit_.code
    return CliResult(code, stderr.getvalue())


def lorenz(num_neurons=8, **labels) -> lj.Trials:
    trials = lj.datasets.lorenz(seed=0, num_trials=12, num_bins=30, num_neurons=num_neurons).trials
    if not labels:
        return trials
    return lj.Trials(np.asarray(trials.spikes), dt=labels.pop("dt", trials.dt), **labels)


_FITTED: dict[str, lj.FitResult] = {}


def fitted_lds() -> lj.FitResult:
    """A small LDS fit on Lorenz trials with unit ids 100..107 (shared by the infer probes)."""
    if "lds" not in _FITTED:
        trials = lorenz(neuron_ids=list(range(100, 108)))
        _FITTED["lds"] = lj.fit(lds.Config(latent_dim=2), trials, steps=5, progress=False)
    return _FITTED["lds"]


def classify(probe: Probe, workdir: Path) -> tuple[str, str]:
    """(outcome, detail) of one probe."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = probe.run(workdir)
    except (ValueError, NonFiniteError) as err:
        message = " ".join(str(err).split())
        if probe.error is not None and re.search(probe.error, message):
            return "clear error", message
        return "cryptic", message
    except Exception as err:  # noqa: BLE001 - any other exception is the finding
        return "cryptic", f"{type(err).__name__}: {' '.join(str(err).split())}"
    if isinstance(value, CliResult):
        lines = value.err.strip().splitlines()
        message = lines[-1] if lines else ""
        if value.code == 0:
            ok = probe.error is None and (probe.check is None or probe.check(value))
            return ("correct result" if ok else "silent"), "exit 0"
        if len(lines) == 1 and probe.error is not None and re.search(probe.error, message):
            return "clear error", message
        return "cryptic", " / ".join(lines[-2:])
    if probe.error is not None and probe.check is None:
        return "silent", f"returned {type(value).__name__} instead of an error"
    ok = probe.check is None or bool(probe.check(value))
    return ("correct result" if ok else "silent"), "checked" if ok else "check failed"


def _nwb_window_past_trial_end(_):
    trials = lj.io.load_nwb(MC_MAZE, bin_size=0.005, align="move_onset_time", window=(-0.25, 0.6))
    return trials


def _window_past_end_is_masked(trials) -> bool:
    import pynwb

    with pynwb.NWBHDF5IO(str(MC_MAZE), "r", load_namespaces=True) as io_:
        table = io_.read().trials
        stop = np.asarray(table["stop_time"][:]) - np.asarray(table["move_onset_time"][:])
    stop = stop[np.isfinite(stop)][: trials.num_trials]
    starts = -0.25 + 0.005 * np.arange(trials.num_bins)  # bin starts around movement onset
    past = starts[None, :] >= stop[:, None] - 1e-9
    spikes = np.asarray(trials.spikes)
    return bool(past.any() and not np.asarray(trials.mask)[past].any() and spikes[past].sum() == 0)


def _refit_fewer_steps(workdir):
    lj.fit(lds.Config(latent_dim=2), lorenz(), steps=10, out=workdir / "run", progress=False)
    return lj.fit(lds.Config(latent_dim=2), lorenz(), steps=5, out=workdir / "run", progress=False)


def _corrupt_newest_checkpoint(workdir):
    config = lds.Config(
        latent_dim=2, train=lj.train.TrainConfig(steps=10, chunk_size=5, checkpoint_every=5)
    )
    lj.fit(config, lorenz(), out=workdir / "run", progress=False)
    data = workdir / "run" / "checkpoints" / "10" / "state" / "d"
    for name in os.listdir(data):
        (data / name).write_bytes(b"overwritten")
    return lj.fit(config, lorenz(), steps=15, out=workdir / "run", progress=False)


def _permuted_neurons(_):
    result = fitted_lds()
    trials = lorenz(neuron_ids=list(range(100, 108)))
    order = np.array([3, 1, 7, 0, 2, 6, 5, 4])
    got = lj.infer(result, trials.select_neurons(order)).latents
    return np.allclose(got, lj.infer(result, trials).latents, atol=1e-5)


def _lfads_huge_learning_rate(_):
    config = update_config(
        lfads.Config.preset("tiny"),
        {"train.learning_rate": 1e3, "train.chunk_size": 5, "train.batch_size": 8},
    )
    return lj.fit(config, lorenz(), steps=15, progress=False)


def _trained(result) -> bool:
    loss = np.asarray(result.history["loss"], float)
    return bool(np.isfinite(loss).all() and loss[-1] < loss[0])


def _one_bin(_):
    spikes = lorenz().spikes[:, :1]
    return lj.fit(
        lds.Config(latent_dim=2), lj.Trials(np.asarray(spikes), dt=0.01), steps=5, progress=False
    )


def _finite_params(result) -> bool:
    import jax

    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(result.params))


def _demo_into_other_folder(workdir):
    out = workdir / "demo"
    out.mkdir()
    lj.io.save(lorenz(), out / "data.npz")
    return cli("demo", "--quick", "--out", str(out), "--no-progress")


def _empty_npz(workdir):
    (workdir / "empty.npz").write_bytes(b"")
    return cli("fit", "lds", "--data", str(workdir / "empty.npz"), "--out", str(workdir / "x"))


def _help_example(workdir):
    os.chdir(workdir)
    fit = cli(
        "fit",
        "lds",
        "--data",
        "lorenz",
        "--out",
        "runs/lds",
        "--set",
        "latent_dim=3",
        "--no-progress",
    )
    return fit if fit.code else cli("evaluate", "--run", "runs/lds", "--data", "lorenz")


def probes() -> list[Probe]:
    bad = np.asarray(lorenz().spikes, float)
    nan = bad.copy()
    nan[0, 3, 2] = np.nan
    negative = bad.copy()
    negative[1, 0, 0] = -1
    steps = np.asarray(lorenz().times).copy()
    steps[0, 5] = steps[0, 4]

    def lfads_fit(changes):
        def run(workdir):
            config = update_config(lfads.Config(), changes)
            return lj.fit(config, lorenz(), out=workdir / "run", progress=False)

        return run

    return [
        Probe("data", "spike counts with a NaN", lambda _: lj.Trials(nan, dt=0.01), "NaN"),
        Probe("data", "negative spike counts", lambda _: lj.Trials(negative, dt=0.01), "negative"),
        Probe("data", "bin size 0", lambda _: lj.Trials(bad, dt=0.0), "dt"),
        Probe(
            "data",
            "non-increasing timestamps",
            lambda _: lj.Trials(bad, dt=0.01, times=steps),
            "times",
        ),
        Probe(
            "data",
            'regions given as one string "ABCDEFGH"',
            lambda _: lorenz(regions="ABCDEFGH"),
            "regions",
        ),
        Probe(
            "data",
            "a fit on trials with every bin masked",
            lambda _: lj.fit(
                lds.Config(latent_dim=2),
                lj.Trials(bad, dt=0.01, mask=np.zeros(bad.shape[:2], bool)),
                steps=5,
                progress=False,
            ),
            "mask",
        ),
        Probe(
            "data", "a fit on one time bin", _one_bin, "bin|failed|non-finite", check=_finite_params
        ),
        Probe(
            "NWB",
            "window past the trial end (MC_Maze_Small, -0.25..0.60 s)",
            _nwb_window_past_trial_end,
            check=_window_past_end_is_masked,
        ),
        Probe(
            "NWB",
            "--trial-length on a file with a trials table",
            lambda w: cli(
                "fit",
                "lds",
                "--data",
                str(MC_MAZE),
                "--bin-size",
                "0.005",
                "--trial-length",
                "1",
                "--out",
                str(w / "x"),
            ),
            "trials table",
        ),
        Probe(
            "NWB",
            "--strict-windows with a window past the trial end",
            lambda w: cli(
                "fit",
                "lds",
                "--data",
                str(MC_MAZE),
                "--bin-size",
                "0.005",
                "--align",
                "move_onset_time",
                "--window",
                "-0.25",
                "0.6",
                "--strict-windows",
                "--out",
                str(w / "x"),
            ),
            "outside",
        ),
        Probe(
            "config",
            "negative learning rate",
            lfads_fit({"train.learning_rate": -1e-3}),
            "learning_rate",
        ),
        Probe("config", "dropout 1.5", lfads_fit({"dropout": 1.5}), "dropout"),
        Probe("config", "negative KL weight", lfads_fit({"kl_ic_scale": -1.0}), "kl_ic_scale"),
        Probe(
            "config",
            "--set latent_dim=true",
            lambda w: cli(
                "fit", "lds", "--data", TINY, "--out", str(w / "x"), "--set", "latent_dim=true"
            ),
            "latent_dim",
        ),
        Probe(
            "config",
            "--set train=5",
            lambda w: cli("fit", "lds", "--data", TINY, "--out", str(w / "x"), "--set", "train=5"),
            "`train` expects a table",
        ),
        Probe(
            "config",
            "--set with a misspelt field",
            lambda w: cli(
                "fit", "lds", "--data", TINY, "--out", str(w / "x"), "--set", "latnet_dim=2"
            ),
            "latnet_dim",
        ),
        Probe(
            "config",
            "a grid value outside the knob's range",
            lambda _: lj.sweep(
                lfads.Config(), lorenz(), grid={"dropout": [0.1, 2.0]}, progress=False
            ),
            "grid: `dropout`",
        ),
        Probe(
            "training",
            "LFADS at learning rate 1e3 for 15 steps",
            _lfads_huge_learning_rate,
            "failed",
            check=_trained,
        ),
        Probe(
            "run folder",
            "rerun with fewer --steps than done",
            _refit_fewer_steps,
            "trained 10 steps",
        ),
        Probe(
            "run folder",
            "corrupted newest checkpoint, then resume",
            _corrupt_newest_checkpoint,
            check=lambda r: r.history["step"][-1] == 15,
        ),
        Probe(
            "infer", "the fitted units in another order", _permuted_neurons, check=lambda same: same
        ),
        Probe(
            "infer",
            "other unit ids",
            lambda _: lj.infer(fitted_lds(), lorenz(neuron_ids=list(range(200, 208)))),
            "neuron_ids",
        ),
        Probe(
            "infer",
            "another bin size",
            lambda _: lj.infer(fitted_lds(), lorenz(dt=0.02)),
            "bin size",
        ),
        Probe(
            "infer",
            "another neuron count",
            lambda _: lj.infer(fitted_lds(), lorenz(num_neurons=9)),
            "9 neurons",
        ),
        Probe(
            "fit",
            "validation trials with another neuron count",
            lambda _: lj.fit(
                lds.Config(latent_dim=2), lorenz(), valid=lorenz(num_neurons=9), progress=False
            ),
            "`valid`: 9 neurons",
        ),
        Probe("CLI", "the --help example: fit lds on lorenz, then evaluate", _help_example),
        Probe("CLI", "demo into a folder of other data", _demo_into_other_folder, "another run"),
        Probe("CLI", "an empty .npz file", _empty_npz, "not a readable .npz"),
        Probe(
            "CLI",
            "a missing data file",
            lambda w: cli("fit", "lds", "--data", "missing.npz", "--out", str(w / "x")),
            "no such file",
        ),
        Probe(
            "CLI",
            "infer on a folder that is not a run",
            lambda w: cli("infer", "--run", str(w), "--data", TINY),
            "config.json",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(BENCHMARKS / "reliability.md"))
    args = parser.parse_args()
    rows, counts = [], {}
    here = os.getcwd()
    for probe in probes():
        started = time.perf_counter()
        if probe.area == "NWB" and not MC_MAZE.exists():
            outcome, detail = "skipped", f"{MC_MAZE} not found"
        else:
            with tempfile.TemporaryDirectory() as workdir:
                try:
                    outcome, detail = classify(probe, Path(workdir))
                except Exception:  # noqa: BLE001 - a broken probe is reported, not hidden
                    outcome, detail = "probe failed", traceback.format_exc(limit=1)
                finally:
                    os.chdir(here)
        counts[outcome] = counts.get(outcome, 0) + 1
        expected = "correct result" if probe.error is None else "clear error"
        detail = detail.replace("|", "/")[:160]
        rows.append(
            f"| {probe.area} | {probe.what} | {expected} | **{outcome}** | {detail} | "
            f"{time.perf_counter() - started:.1f} |"
        )
        print(rows[-1], flush=True)
    summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
    text = "\n".join(
        [
            f"Machine: {machine()}",
            "",
            f"{len(rows)} probes: {summary}.",
            "",
            "| area | probe | expected | outcome | message or check | seconds |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    write_section(args.out, "probes", text, "Reliability probes (issue #20)")


if __name__ == "__main__":
    main()
