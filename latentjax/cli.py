"""The `latentjax` command line: a thin layer over the Python API.

Each subcommand parses its arguments, builds a Config (defaults, then `--config file.toml`,
then `--set key=value`), calls the API and writes the run folder. Errors are one line on
stderr and a non-zero exit code; `--debug` (or `LATENTJAX_DEBUG=1`) shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

__all__ = ["main"]

DATA_HELP = """trials to use: a .npz written by lj.io.save, an .nwb file in the NLB layout (with
--bin-size and optionally --align/--window or --trial-length), a .csv recording of one row per
sample (lj.io.load_csv, with --bin-size), or a built-in dataset name with
optional sizes, e.g. `lorenz` or `lorenz:num_trials=40,num_bins=50`. Default: for `fit` and
`sweep` the built-in dataset that suits the family; for `infer` and `evaluate` the data the
run was fitted on"""

_DATA_RECORD = "command.json"
"""What `fit`/`sweep` record in the run folder about the data flags (for infer/evaluate)."""

_DATA_FLAGS = (
    "data",
    "bin_size",
    "align",
    "window",
    "trial_length",
    "ignore_trials",
    "strict_windows",
    "data_seed",
)


class CommandError(Exception):
    """A user error reported as one line."""


def family_registration(name: str):
    """The registered family named on the command line (a module name registers its own)."""
    from latentjax import family

    return family.resolve(name)


def build_config(family: str, config_file: str | None, assignments) -> object:
    """Config of `family`: defaults, then the TOML file, then `--set` overrides."""
    from latentjax.configs import load_toml, make_config, parse_assignments

    changes = load_toml(config_file) if config_file else {}
    changes.update(parse_assignments(assignments))
    return make_config(family_registration(family).config_type, changes)


def load_data(spec: str, args) -> tuple:
    """(trials, truth or None) from a file path or a built-in dataset spec."""
    import latentjax as lj

    path = Path(spec)
    if path.suffix in (".npz", ".nwb", ".csv"):
        if not path.exists():
            raise CommandError(f"--data: no such file {spec}")
        if path.suffix == ".npz":
            return lj.io.load(path), None
        if path.suffix == ".csv":
            if args.bin_size is None:
                raise CommandError("--data: a .csv recording needs --bin-size (seconds)")
            return lj.io.load_csv(path, bin_size=args.bin_size), None
        if args.bin_size is None:
            raise CommandError("--data: an .nwb file needs --bin-size (seconds)")
        window = tuple(args.window) if args.window else None
        trials = lj.io.load_nwb(
            path,
            bin_size=args.bin_size,
            align=args.align,
            window=window,
            trial_length=args.trial_length,
            ignore_trials=bool(args.ignore_trials),
            strict=bool(args.strict_windows),
        )
        return trials, None
    name, _, sizes = spec.partition(":")
    if name not in lj.datasets.available():
        raise CommandError(
            f"--data: {spec!r} is neither an .npz/.nwb file nor a built-in dataset "
            f"({', '.join(lj.datasets.available())})"
        )
    from latentjax.configs import parse_assignments

    options = parse_assignments(sizes.split(",") if sizes else ())
    dataset = lj.datasets.generate(name, seed=args.data_seed, **options)
    return dataset.trials, dataset.truth


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--bin-size", type=float, help="NWB: bin width in seconds")
    parser.add_argument("--align", help="NWB: trials-table column to align windows to")
    parser.add_argument(
        "--window", type=float, nargs=2, metavar=("BEFORE", "AFTER"), help="NWB: seconds"
    )
    parser.add_argument("--trial-length", type=float, help="NWB without trials: seconds")
    parser.add_argument(
        "--ignore-trials",
        action="store_true",
        default=None,
        help="NWB: with --trial-length, cut the recording although the file has a trials table",
    )
    parser.add_argument(
        "--strict-windows",
        action="store_true",
        default=None,
        help="NWB: refuse a window with bins outside its trial or the units' obs_intervals "
        "(default: those bins are masked)",
    )
    parser.add_argument("--data-seed", type=int, help="seed of a built-in dataset (default 0)")


def _fit_data(args) -> None:
    """Fill `--data` with the family's default dataset when it is not given."""
    if args.data is None:
        args.data = family_registration(args.family).data
    if args.data_seed is None:
        args.data_seed = 0


def _run_data(args) -> None:
    """Fill the data flags of `infer`/`evaluate` from the run's `command.json` when `--data`
    is not given."""
    import json

    if args.data is None:
        path = Path(args.run) / _DATA_RECORD
        if not path.exists():
            raise CommandError(
                f"--data: give the trials to use; {args.run} records no data of its own"
            )
        for name, value in json.loads(path.read_text()).items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if args.data_seed is None:
        args.data_seed = 0


def _record_data(args, out) -> None:
    import json

    record = {name: getattr(args, name) for name in _DATA_FLAGS}
    (Path(out) / _DATA_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "family",
        help="model family: a registered name (see `latentjax families`) or a module that "
        "registers one",
    )
    parser.add_argument("--config", help="TOML file of Config fields ([train] table etc.)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field"
    )
    parser.add_argument("--steps", type=int, help="training steps / EM iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--valid-fraction", type=float, default=0.2, help="trials held out for validation"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _split(trials, fraction: float, seed: int):
    import latentjax as lj

    if not 0 <= fraction < 1:
        raise CommandError(f"--valid-fraction must be in [0, 1), got {fraction}")
    if fraction == 0 or trials.num_trials < 2:
        return trials, None
    return lj.data.split(trials, (1 - fraction, fraction), seed=seed)


def cmd_fit(args) -> None:
    import latentjax as lj

    config = build_config(args.family, args.config, args.set)
    _fit_data(args)
    trials, truth = load_data(args.data, args)
    train, valid = _split(trials, args.valid_fraction, args.seed)
    result = lj.fit(
        config,
        train,
        valid=valid,
        seed=args.seed,
        steps=args.steps,
        out=args.out,
        progress=not args.no_progress,
    )
    _record_data(args, args.out)
    from latentjax.report import complete_run

    outputs = complete_run(result, trials, truth=truth, seed=args.seed, report=not args.no_report)
    print(outputs.evaluation)
    print(f"wrote {result.run_dir}")


def cmd_sweep(args) -> None:
    import numpy as np

    import latentjax as lj
    from latentjax.configs import parse_value

    config = build_config(args.family, args.config, args.set)
    _fit_data(args)
    trials, _ = load_data(args.data, args)
    train, valid = _split(trials, args.valid_fraction, args.seed)
    grid = {}
    for item in args.grid:
        key, sep, values = item.partition("=")
        if not sep:
            raise CommandError(f"--grid: expected key=v1,v2,..., got {item!r}")
        grid[key] = [parse_value(v) for v in values.split(",")]
    seeds = tuple(int(s) for s in args.seeds.split(","))
    results = lj.sweep(
        config,
        train,
        valid=valid,
        seeds=seeds,
        grid=grid or None,
        steps=args.steps,
        out=args.out,
        progress=not args.no_progress,
    )
    _record_data(args, args.out)
    for index, result in enumerate(results):
        shown = [k for k in ("loss", "valid_loss", *grid) if np.ndim(result.history.get(k)) == 1]
        final = {k: float(result.history[k][-1]) for k in shown if len(result.history[k])}
        print(f"member {index}: " + ", ".join(f"{k}={v:.4g}" for k, v in final.items()))
    print(f"wrote {args.out}")


def cmd_infer(args) -> None:
    import numpy as np

    import latentjax as lj

    result = _one_result(lj.load_run(args.run), args.run)
    _run_data(args)
    trials, _ = load_data(args.data, args)
    posterior = lj.infer(result, trials, seed=args.seed)
    out = Path(args.out) if args.out else Path(args.run) / "posterior.npz"
    np.savez(out, **posterior.to_numpy())
    print(f"wrote {out} (latents {tuple(np.shape(posterior.latents))})")


def cmd_evaluate(args) -> None:
    import latentjax as lj

    result = _one_result(lj.load_run(args.run), args.run)
    _run_data(args)
    trials, truth = load_data(args.data, args)
    table = lj.evaluate(result, trials, truth=truth)
    from latentjax.report import write_evaluation

    out = write_evaluation(args.run, table)
    print(table)
    print(f"wrote {out}")


_DECODERS = ("wiener", "kalman_velocity")


def _held_out(trials, test_spec, fraction, args):
    """(train, test): the trials of `--test`, else the last trial, else (one stream) its
    last `fraction` of bins."""
    import latentjax as lj

    if test_spec is not None:
        test, _ = load_data(test_spec, args)
        return trials, test
    if trials.num_trials > 1:
        return trials[: trials.num_trials - 1], trials[trials.num_trials - 1]
    if not 0 < fraction < 1:
        raise CommandError(f"--test-fraction must be in (0, 1), got {fraction}")
    cut = int(round(trials.num_bins * (1 - fraction)))
    if cut < 10 or trials.num_bins - cut < 2:
        raise CommandError(f"--test-fraction: {trials.num_bins} bins are too few to split")

    def part(start, stop):
        fields = trials.fields()
        for name in ("spikes", "times", "mask", "behavior"):
            if fields[name] is not None:
                fields[name] = fields[name][:, start:stop]
        return lj.Trials(**fields)

    return part(0, cut), part(cut, trials.num_bins)


def cmd_decode(args) -> None:
    import dataclasses
    import json

    import numpy as np

    import latentjax as lj

    if args.data is None:
        raise CommandError("--data: give the recording to train on (with behaviour)")
    if args.data_seed is None:
        args.data_seed = 0
    trials, _ = load_data(args.data, args)
    train, test = _held_out(trials, args.test, args.test_fraction, args)
    if train.behavior is None or test.behavior is None:
        raise CommandError("--data: the recording has no behaviour to decode")
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    wiener = lj.decode.Wiener(lags=args.lags, smooth=args.smooth)
    if args.family == "kalman_velocity":
        decoder = lj.decode.stream(
            None, lj.decode.fit(lj.decode.KalmanVelocity(), train, train.behavior)
        )
    elif args.family == "wiener":
        decoder = lj.decode.stream(None, lj.decode.fit(wiener, train, train.behavior))
    else:
        streaming = [
            name
            for name in lj.family.names()
            if callable(getattr(lj.family.get(name).family, "causal_filter", None))
        ]
        if family_registration(args.family).name not in streaming:
            raise CommandError(
                f"family {args.family!r} has no causal filter to stream; choose one of "
                f"{', '.join(streaming + list(_DECODERS))}"
            )
        config = build_config(args.family, args.config, args.set)
        result = lj.fit(
            config, train, seed=args.seed, steps=args.steps, out=out / "model",
            progress=not args.no_progress,
        )  # fmt: skip
        latents = lj.infer(result, train, causal=True)
        readout = lj.decode.fit(dataclasses.replace(wiener, smooth=0.0), latents, train.behavior)
        decoder = lj.decode.stream(result, readout)
    replayed = lj.decode.replay(decoder, test)
    score = lj.decode.r2(replayed.outputs, test.behavior, mask=test.mask)
    milliseconds = replayed.seconds * 1000
    summary = {
        "decoder": args.family,
        "test_bins": int(np.prod(milliseconds.shape)),
        "r2_per_axis": [float(v) for v in score.per_axis],
        "r2_mean": score.mean,
        "latency_ms": {
            "p50": float(np.percentile(milliseconds, 50)),
            "p99": float(np.percentile(milliseconds, 99)),
            "max": float(milliseconds.max()),
        },
    }
    np.savez(
        out / "decoded.npz",
        decoded=replayed.outputs,
        behavior=test.behavior,
        latency_seconds=replayed.seconds,
    )
    (out / "decode.json").write_text(json.dumps(summary, indent=1) + "\n")
    figures = {
        "latency.png": lj.plot.latency_histogram(replayed.seconds),
        "decoded_velocity.png": lj.plot.decoded_behavior(
            replayed.outputs[0], test.behavior[0], dt=test.dt, title=f"{args.family}, causal"
        ),
    }
    for name, figure in figures.items():
        figure.savefig(out / "figures" / name, dpi=100)
    print(
        f"R² {score.mean:.3f} (per axis {', '.join(f'{v:.3f}' for v in score.per_axis)}); "
        f"latency p50 {summary['latency_ms']['p50']:.3f} ms, "
        f"p99 {summary['latency_ms']['p99']:.3f} ms over {summary['test_bins']} bins"
    )
    print(f"wrote {out}")


def _one_result(results, run):
    if isinstance(results, list):
        raise CommandError(
            f"--run: {run} holds a sweep of {len(results)} members; use lj.load_run in Python "
            "and pick one (e.g. lj.best)"
        )
    return results


def cmd_report(args) -> None:
    from latentjax.report import write_report

    path = write_report(args.run)
    print(f"wrote {path}")


def cmd_families(args) -> None:
    from latentjax import family

    for name in family.names():
        registration = family.get(name)
        how = "gradient" if registration.trained_by_gradient else "fitter"
        doc = (getattr(registration.family, "__doc__", "") or "").strip().splitlines()
        print(f"{name:<12} {how:<8} data={registration.data:<12} {doc[0] if doc else ''}")


def cmd_datasets(args) -> None:
    import latentjax as lj

    descriptions = lj.datasets.available()
    width = max(map(len, descriptions))
    for name, description in descriptions.items():
        print(f"{name:<{width}}  {description}")


def cmd_demo(args) -> None:
    from latentjax.demo import run_demo

    summary = run_demo(args.out, quick=args.quick, progress=not args.no_progress)
    print(summary)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentjax",
        description="Latent dynamics of neural populations in JAX.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            examples:
              latentjax demo --out demo_run
              latentjax datasets
              latentjax fit lds --data lorenz --out runs/lds --set latent_dim=3 --steps 50
              latentjax fit lfads --data session.nwb --bin-size 0.005 --out runs/lfads --steps 200
              latentjax evaluate --run runs/lds --data lorenz
            """
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, function, help_text, example):
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(function=function)
        sub.add_argument(
            "--debug", action="store_true", help="show the traceback of an error (for reports)"
        )
        return sub

    fit = add(
        "fit",
        cmd_fit,
        "fit a model family and write a run folder",
        "latentjax fit lds --data lorenz --out runs/lds --set latent_dim=3 --steps 50",
    )
    _add_config_arguments(fit)
    _add_data_arguments(fit)
    fit.add_argument("--out", required=True, help="run folder (an existing run resumes)")
    fit.add_argument("--no-report", action="store_true", help="skip figures and report.html")

    sweep = add(
        "sweep",
        cmd_sweep,
        "train a population (seeds x grid) as one program",
        "latentjax sweep lfads --data lorenz --out runs/pop --seeds 0,1 "
        "--grid train.learning_rate=1e-3,3e-3 --steps 200",
    )
    _add_config_arguments(sweep)
    _add_data_arguments(sweep)
    sweep.add_argument("--out", required=True, help="run folder")
    sweep.add_argument("--seeds", default="0", help="comma-separated seeds")
    sweep.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="knob values"
    )

    infer = add(
        "infer",
        cmd_infer,
        "infer latents and rates with a fitted run",
        "latentjax infer --run runs/lds --data lorenz",
    )
    infer.add_argument("--run", required=True, help="run folder written by fit")
    infer.add_argument("--out", help="output .npz (default RUN/posterior.npz)")
    infer.add_argument("--seed", type=int, default=0)
    _add_data_arguments(infer)

    evaluate = add(
        "evaluate",
        cmd_evaluate,
        "print and save every metric that applies",
        "latentjax evaluate --run runs/lds --data lorenz",
    )
    evaluate.add_argument("--run", required=True, help="run folder written by fit")
    _add_data_arguments(evaluate)

    report = add(
        "report",
        cmd_report,
        "write figures and report.html of a run",
        "latentjax report --run runs/lds",
    )
    report.add_argument("--run", required=True, help="run folder written by fit")

    decode = add(
        "decode",
        cmd_decode,
        "train a real-time decoder on a recording, replay a held-out stream bin by bin",
        "latentjax decode lds --data trial_748_data.csv --test trial_1356_data.csv "
        "--bin-size 0.02 --set latent_dim=8 --out runs/decode",
    )
    decode.add_argument(
        "family",
        help="a family with a causal filter (lds, plds: a Wiener read-out of its causal "
        "latents), or `wiener` (Wiener filter on smoothed spikes) or `kalman_velocity` "
        "(Kalman filter with behaviour as the state)",
    )
    decode.add_argument("--out", required=True, help="output folder")
    decode.add_argument(
        "--test", help="held-out recording to replay (default: the last trial, or the last "
        "--test-fraction of a single stream)"
    )  # fmt: skip
    decode.add_argument("--test-fraction", type=float, default=0.2)
    decode.add_argument("--lags", type=int, default=5, help="Wiener window in bins (default 5)")
    decode.add_argument(
        "--smooth", type=float, default=2.0, help="`wiener`: smoothing time constant in bins"
    )
    decode.add_argument("--config", help="TOML file of Config fields")
    decode.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a field"
    )
    decode.add_argument("--steps", type=int, help="EM iterations / training steps")
    decode.add_argument("--seed", type=int, default=0)
    decode.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_arguments(decode)

    add("datasets", cmd_datasets, "list the built-in synthetic datasets", "latentjax datasets")
    add("families", cmd_families, "list the registered model families", "latentjax families")

    demo = add(
        "demo",
        cmd_demo,
        "simulate Lorenz data, fit models, write figures and a report",
        "latentjax demo --out demo_run",
    )
    demo.add_argument("--out", default="demo_run", help="output folder (default demo_run)")
    demo.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def error_line(command: str, err: BaseException) -> str:
    """One line naming the problem: the message of a user error (CommandError, ValueError,
    OSError, a failed fit), else the exception's type and message with a pointer to
    `--debug`."""
    from latentjax.train import NonFiniteError

    message = " ".join(str(err).split()) or "(no message)"
    if isinstance(err, FileNotFoundError) and err.filename is not None:
        message = f"no such file {err.filename}"
    if not isinstance(err, (CommandError, ValueError, OSError, NonFiniteError)):
        message = f"{type(err).__name__}: {message} (rerun with --debug for the traceback)"
    return f"latentjax {command}: error: {message}"


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.function(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            f"latentjax {args.command}: interrupted (a run folder resumes from its last "
            "checkpoint when the same command is run again)",
            file=sys.stderr,
        )
        return 130
    except Exception as err:
        if args.debug or os.environ.get("LATENTJAX_DEBUG"):
            raise
        print(error_line(args.command, err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
