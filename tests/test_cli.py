"""Every `latentjax` subcommand on tiny data: outputs written, errors one line."""

import base64
import dataclasses
import io
import json
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import train_toy as toy
from matplotlib.image import imread

import latentjax as lj
from latentjax.cli import CommandError, main

TINY = "lorenz:num_trials=12,num_bins=30,num_neurons=8"


@dataclasses.dataclass(frozen=True)
class NeedsSize(toy.Config):
    size: int = dataclasses.field(kw_only=True)  # a required setting without a default


class NeedsSizeFamily:
    Config = NeedsSize
    init, loss, validation_loss, posterior = toy.init, toy.loss, toy.validation_loss, toy.posterior


lj.family.register("needs_size", NeedsSizeFamily)


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def lds_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lds"
    code = main(
        [
            "fit",
            "lds",
            "--data",
            TINY,
            "--out",
            str(out),
            "--set",
            "latent_dim=2",
            "--set",
            "transform=sqrt",
            "--steps",
            "3",
            "--valid-fraction",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def embedded_images(html_text):
    return [
        imread(io.BytesIO(base64.b64decode(data)), format="png")
        for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html_text)
    ]


def test_fit_writes_a_complete_run_folder(lds_run):
    for name in (
        "config.json",
        "data.json",
        "metrics.jsonl",
        "posterior.npz",
        "evaluation.json",
        "report.html",
    ):
        assert (lds_run / name).exists(), name
    posterior = np.load(lds_run / "posterior.npz")
    assert posterior["latents"].shape == (12, 30, 2)
    assert posterior["rates"].shape == (12, 30, 8)
    evaluation = json.loads((lds_run / "evaluation.json").read_text())
    assert {"latent_r2", "rate_r2"} <= set(evaluation)
    images = embedded_images((lds_run / "report.html").read_text())
    figures = sorted(p.stem for p in (lds_run / "figures").glob("*.png"))
    assert {"true_vs_inferred", "raster", "training_curves"} <= set(figures)
    assert len(images) == len(figures) and all(im.ndim == 3 and im.shape[0] > 100 for im in images)


def test_infer_and_evaluate_read_the_run(lds_run, capsys, tmp_path):
    """The command line gives what the Python API gives on the same run and data."""
    dataset = lj.datasets.generate("lorenz", seed=0, num_trials=12, num_bins=30, num_neurons=8)
    fitted = lj.load_run(lds_run)
    target = tmp_path / "post.npz"
    code, out, _ = run(capsys, "infer", "--run", str(lds_run), "--data", TINY, "--out", str(target))
    assert code == 0 and "wrote" in out
    expected = lj.infer(fitted, dataset.trials)
    np.testing.assert_allclose(np.load(target)["latents"], expected.latents, atol=1e-5)
    np.testing.assert_allclose(np.load(target)["rates"], expected.rates, rtol=1e-5)

    (lds_run / "evaluation.json").unlink(missing_ok=True)
    code, out, _ = run(capsys, "evaluate", "--run", str(lds_run), "--data", TINY)
    assert code == 0 and "latent_r2" in out
    written = json.loads((lds_run / "evaluation.json").read_text())
    scores = lj.evaluate(fitted, dataset.trials, truth=dataset.truth)
    assert set(written) == set(scores) >= {"bps", "latent_r2", "rate_r2"}
    for name, value in scores.items():
        assert written[name] == pytest.approx(float(value), rel=1e-5, abs=1e-7), name


def test_report_redraws_from_the_folder(lds_run, capsys):
    (lds_run / "report.html").unlink()
    code, out, _ = run(capsys, "report", "--run", str(lds_run))
    assert code == 0 and (lds_run / "report.html").exists()
    assert len(embedded_images((lds_run / "report.html").read_text())) >= 3


def test_sweep_trains_every_member(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, printed, err = run(
        capsys,
        "sweep",
        "lds",
        "--data",
        TINY,
        "--out",
        str(out),
        "--set",
        "latent_dim=2",
        "--seeds",
        "0,1",
        "--grid",
        "init_jitter=0.01,0.1",
        "--steps",
        "2",
        "--valid-fraction",
        "0",
        "--no-progress",
    )
    assert code == 0, err
    assert printed.count("member ") == 4
    assert len(lj.load_run(out)) == 4


def test_config_file_and_overrides(tmp_path, capsys):
    config = tmp_path / "lds.toml"
    config.write_text("latent_dim = 2\ntransform = 'sqrt'\n[train]\nchunk_size = 2\n")
    out = tmp_path / "from_toml"
    code, _, err = run(
        capsys,
        "fit",
        "lds",
        "--data",
        TINY,
        "--out",
        str(out),
        "--config",
        str(config),
        "--set",
        "train.steps=2",
        "--valid-fraction",
        "0",
        "--no-progress",
        "--no-report",
    )
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())["config"]["fields"]
    assert saved["latent_dim"] == 2 and saved["transform"] == "sqrt"
    assert saved["train"]["fields"]["chunk_size"] == 2


def test_datasets_lists_every_builtin(capsys):
    code, out, _ = run(capsys, "datasets")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == list(lj.datasets.available())


def test_demo_quick_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code, printed, err = run(capsys, "demo", "--out", str(out), "--quick", "--no-progress")
    assert code == 0, err
    assert (out / "data.npz").exists() and (out / "summary.md").exists()
    assert lj.io.load(out / "data.npz").shape == (20, 40, 12)
    images = embedded_images((out / "report.html").read_text())
    assert len(images) == 2  # true vs inferred, one per model
    assert "| lds |" in printed and "| lfads |" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "nosuch", "--data", TINY, "--out", "x"], "unknown family 'nosuch'"),
        (["fit", "needs_size", "--data", TINY, "--out", "x"], "needs `size` (e.g. --set size=...)"),
        (
            ["fit", "lds", "--data", "missing.npz", "--out", "x", "--set", "latent_dim=2"],
            "no such file",
        ),
        (
            ["fit", "lds", "--data", "spikes", "--out", "x", "--set", "latent_dim=2"],
            "neither an .npz/.nwb file nor a built-in dataset",
        ),
        (
            [
                "fit",
                "lds",
                "--data",
                TINY,
                "--out",
                "x",
                "--set",
                "latent_dim=2",
                "--set",
                "no_such_field=1",
            ],
            "no field `no_such_field`",
        ),
        (["report", "--run", "no/such/run"], "is not a folder"),
        (
            ["fit", "toy", "--data", "empty.npz", "--out", "x"],
            "is not a readable .npz archive (empty",
        ),
        (["fit", "toy", "--data", TINY, "--out", "x", "--set", "train=5"], "expects a table"),
        (["fit", "lds", "--data", TINY, "--out", "x", "--set", "latent_dim=true"], "expects int"),
        (
            ["fit", "toy", "--data", TINY, "--out", "x", "--set", "train.learning_rate=-1"],
            "`train.learning_rate` must be > 0",
        ),
        (  # every step of a 15-step run at this learning rate is skipped: a failure, exit 1
            ["fit", "toy", "--data", TINY, "--out", "x", "--set", "nan_from=0"]
            + ["--set", "nan_until=1e6", "--set", "train.max_nonfinite=20", "--steps", "15"],
            "error: training failed at step 15: 15 of 15 steps",
        ),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LATENTJAX_DEBUG", raising=False)
    (tmp_path / "empty.npz").write_bytes(b"")
    argv = [*argv, "--no-report", "--no-progress"] if argv[0] == "fit" else argv
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and message in err, err
    if "--set" in argv:  # nothing written for a config refused before training
        assert (tmp_path / "x").exists() == ("nan_from=0" in argv)
    # --debug: the exception itself, for its traceback
    with pytest.raises((CommandError, ValueError, RuntimeError, zipfile.BadZipFile)):
        main([*argv, "--debug"])


def test_infer_refuses_trials_of_other_neurons(lds_run, capsys):
    other = "lorenz:num_trials=12,num_bins=30,num_neurons=9"
    code, _, err = run(capsys, "infer", "--run", str(lds_run), "--data", other)
    assert code == 1 and "`trials`: 9 neurons, the model was fitted on 8" in err


def test_console_script_help(capsys):
    result = subprocess.run(
        [sys.executable, "-m", "latentjax.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    commands = (
        "fit",
        "sweep",
        "infer",
        "evaluate",
        "report",
        "decode",
        "families",
        "datasets",
        "demo",
    )
    for command in commands:
        assert command in result.stdout
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "example" in capsys.readouterr().out


def help_examples() -> list[list[str]]:
    """Every example command of `latentjax --help` and of each subcommand's `--help`, in the
    order that makes them runnable (fits before the commands that read their runs)."""
    from latentjax.cli import make_parser

    parser = make_parser()
    texts = [parser.epilog] + [
        sub.epilog for sub in parser._subparsers._group_actions[0].choices.values()
    ]
    commands = {
        line.strip() for text in texts for line in text.splitlines() if "latentjax " in line
    }
    order = [
        "datasets", "families", "fit", "sweep", "infer", "evaluate", "report", "decode", "demo",
    ]  # fmt: skip
    examples = [command.split()[1:] for command in commands]
    return sorted(examples, key=lambda argv: (order.index(argv[0]), argv))


def test_help_examples_parse_and_the_quick_ones_run(capsys, tmp_path, monkeypatch):
    from latentjax.cli import make_parser

    examples = help_examples()
    assert {argv[0] for argv in examples} >= {"fit", "sweep", "infer", "evaluate", "demo"}
    for argv in examples:
        make_parser().parse_args(argv)  # exits on an unknown flag
    monkeypatch.chdir(tmp_path)
    for argv in examples:
        if argv[0] in ("datasets", "families"):
            assert run(capsys, *argv)[0] == 0


@pytest.mark.slow
def test_help_examples_run_as_written(capsys, tmp_path, monkeypatch, shared_file):
    """Each example of `--help`, as written (`session.nwb` is the shared MC_Maze_Small file)."""
    (tmp_path / "session.nwb").symlink_to(
        shared_file("mc_maze_small_test/sub-Jenkins_ses-small_desc-test_ecephys.nwb")
    )
    for trial in ("748", "1356"):
        name = f"trial_{trial}_data.csv"
        (tmp_path / name).symlink_to(shared_file(f"mc_maze_two_trials/{name}"))
    monkeypatch.chdir(tmp_path)
    for argv in help_examples():
        code, _, err = run(capsys, *argv)
        assert code == 0, (argv, err)


def test_decode_trains_replays_and_writes_the_outputs(tmp_path, capsys):
    """`latentjax decode`: fit on the first 75% of a stream, replay the rest bin by bin."""
    rng = np.random.default_rng(0)
    velocity = np.cumsum(rng.normal(size=(1, 80, 2)), axis=1) * 0.1
    counts = rng.poisson(np.exp(0.3 + velocity @ rng.normal(size=(2, 6))))
    lj.io.save(lj.Trials(counts, dt=0.02, behavior=velocity), tmp_path / "stream.npz")
    out = tmp_path / "decode"
    common = ["--data", str(tmp_path / "stream.npz"), "--test-fraction", "0.25", "--lags", "2"]
    code, stdout, err = run(
        capsys, "decode", "lds", *common, "--out", str(out), "--set", "latent_dim=2",
        "--steps", "2", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "R²" in stdout and "latency p50" in stdout
    summary = json.loads((out / "decode.json").read_text())
    assert summary["test_bins"] == 20 and len(summary["r2_per_axis"]) == 2
    arrays = np.load(out / "decoded.npz")
    assert arrays["decoded"].shape == arrays["behavior"].shape == (1, 20, 2)
    assert arrays["latency_seconds"].shape == (1, 20) and (arrays["latency_seconds"] > 0).all()
    for figure in ("latency.png", "decoded_velocity.png"):
        assert imread(out / "figures" / figure).size > 0
    code, _, _ = run(capsys, "decode", "kalman_velocity", *common, "--out", str(tmp_path / "k"))
    assert code == 0 and (tmp_path / "k" / "decode.json").exists()
    code, _, err = run(capsys, "decode", "gpfa", *common, "--out", str(tmp_path / "g"))
    assert code == 1 and "no causal filter to stream" in err
