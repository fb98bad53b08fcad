"""The run folder is transactional: `metrics.jsonl` holds one line per logged step whatever
interrupted the run, a second process training in the same folder is refused, and an
unreadable newest checkpoint falls back to the previous one."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import train_toy as toy

import latentjax as lj
from latentjax.train.checkpoint import Checkpoints

TESTS = os.path.dirname(os.path.abspath(__file__))


def logged_steps(run_dir) -> list[int]:
    with open(run_dir / "metrics.jsonl") as file:
        return [json.loads(text)["step"] for text in file]


def test_interrupted_before_the_first_checkpoint_restarts_the_metrics(tmp_path, monkeypatch):
    def interrupt(self, step, state, record):
        raise KeyboardInterrupt  # as a kill: the chunk of step 10 is logged, not checkpointed

    trials = toy.make_trials()
    with monkeypatch.context() as patch:
        patch.setattr(Checkpoints, "save", interrupt)
        with pytest.raises(KeyboardInterrupt):
            lj.fit(toy.Config(), trials, out=tmp_path / "run", progress=False)
    assert logged_steps(tmp_path / "run") == [10]
    assert not os.listdir(tmp_path / "run" / "checkpoints")

    resumed = lj.fit(toy.Config(), trials, out=tmp_path / "run", progress=False)
    assert logged_steps(tmp_path / "run") == [10, 20, 30, 40]  # not 10, 10, 20, ...
    np.testing.assert_array_equal(resumed.history["step"], [10, 20, 30, 40])


def test_a_second_process_on_the_same_folder_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time, latentjax as lj, train_toy as toy
                from latentjax.train.checkpoint import Checkpoints

                def pause(self, step, state, record):  # a fit in progress
                    print("training", flush=True)
                    time.sleep(120)

                Checkpoints.save = pause
                lj.fit(toy.Config(), toy.make_trials(), out={str(run_dir)!r}, progress=False)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
        },
    )
    try:
        assert holder.stdout.readline().strip() == "training"
        with pytest.raises(
            ValueError,
            match=rf"out: .*run is in use by another run \(process "
            rf"{holder.pid} on ",
        ):
            lj.fit(toy.Config(), toy.make_trials(), out=run_dir, progress=False)
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process, however it ends
    result = lj.fit(toy.Config(), toy.make_trials(), out=run_dir, progress=False)
    np.testing.assert_array_equal(result.history["step"], [10, 20, 30, 40])


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    trials = toy.make_trials()
    run_dir = tmp_path / "run"
    lj.fit(toy.Config(), trials, out=run_dir, progress=False)  # checkpoints 30 and 40 kept
    data = run_dir / "checkpoints" / "40" / "state" / "d"
    for name in os.listdir(data):
        (data / name).write_bytes(b"overwritten")

    with pytest.warns(UserWarning, match=r"checkpoints/40 cannot be read \(.*\); falling back"):
        longer = lj.fit(toy.Config(), trials, out=run_dir, steps=50, progress=False)
    straight = lj.fit(toy.Config(), trials, steps=50, progress=False)
    np.testing.assert_array_equal(longer.params["mean"], straight.params["mean"])
    np.testing.assert_array_equal(longer.history["loss"], straight.history["loss"])
    assert logged_steps(run_dir) == [10, 20, 30, 40, 50]
    loaded = lj.load_run(run_dir)  # the rewritten step 40 and step 50 read back
    np.testing.assert_array_equal(loaded.params["mean"], straight.params["mean"])

    with pytest.raises(ValueError, match="has trained 50 steps, more than the 20 asked for"):
        lj.fit(toy.Config(), trials, out=run_dir, steps=20, progress=False)
    assert logged_steps(run_dir) == [10, 20, 30, 40, 50]  # untouched


def test_a_demo_into_a_folder_of_other_data_is_refused_before_writing(tmp_path):
    from latentjax.demo import run_demo

    out = tmp_path / "demo"
    out.mkdir()
    other = toy.make_trials()
    lj.io.save(other, out / "data.npz")
    before = (out / "data.npz").read_bytes()
    with pytest.raises(ValueError, match="holds the data of another run"):
        run_demo(out, quick=True, progress=False)
    assert (out / "data.npz").read_bytes() == before and sorted(os.listdir(out)) == ["data.npz"]
