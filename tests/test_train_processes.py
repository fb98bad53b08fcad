"""Engine tests that need their own process: a population sharded over 4 virtual CPU devices,
and a fit killed with SIGKILL in the middle of a checkpoint write, then resumed."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import train_toy as toy

import latentjax as lj

TESTS = os.path.dirname(os.path.abspath(__file__))


def run_python(code: str, *, devices: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TESTS, env.get("PYTHONPATH", "")])
    # the test process's XLA flags (its optimisation level: results must match bit for bit)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={devices}", *flags])
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sharded_population_equals_unsharded():
    result = run_python(
        """
        import dataclasses, jax, numpy as np, latentjax as lj, train_toy as toy
        from latentjax.train import loop

        assert len(jax.devices()) == 4
        placements = []
        run_chunk = loop.run_chunk

        def recording_run_chunk(*args):
            state, summary = run_chunk(*args)
            placements.append(len(state.fitter_state.params["mean"].sharding.device_set))
            return state, summary

        loop.run_chunk = recording_run_chunk
        config = dataclasses.replace(
            toy.Config(), train=dataclasses.replace(toy.Config().train, batch_size=4)
        )
        grid = {"train.learning_rate": [0.01, 0.03, 0.05]}  # 2 x 3 = 6 members, padded to 8
        sharded = lj.sweep(config, toy.make_trials(), seeds=(0, 1), grid=grid, progress=False)
        assert set(placements) == {4}, placements
        placements.clear()
        single = lj.sweep(
            config, toy.make_trials(), seeds=(0, 1), grid=grid, progress=False,
            devices=jax.devices()[:1],
        )
        assert set(placements) == {1}, placements
        assert len(sharded) == len(single) == 6
        for a, b in zip(sharded, single):
            assert a.config == b.config
            np.testing.assert_allclose(a.params["mean"], b.params["mean"], rtol=1e-6)
            np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-6)
        print("OK")
        """,
        devices=4,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_fit_killed_during_a_checkpoint_write_resumes_to_the_same_result(tmp_path):
    run_dir = tmp_path / "run"
    killed = run_python(
        f"""
        import os, signal, latentjax as lj, train_toy as toy
        from latentjax.train.checkpoint import Checkpoints

        save = Checkpoints.save

        def save_then_die(self, step, state, record):
            save(self, step, state, record)  # orbax writes on in a background thread ...
            if step == 30:
                os.kill(os.getpid(), signal.SIGKILL)  # ... and dies in the middle

        Checkpoints.save = save_then_die
        lj.fit(toy.minibatch_config(), toy.make_trials(), out={str(run_dir)!r}, progress=False)
        """
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    committed = sorted(int(p) for p in os.listdir(run_dir / "checkpoints") if p.isdigit())
    assert committed[-1] in (20, 30), committed
    with open(run_dir / "metrics.jsonl") as file:
        assert len(file.readlines()) == 3  # chunks up to step 30 were logged before the kill

    # minibatches of 4 of the 16 trials: the resumed run must continue the epoch's order
    trials, config = toy.make_trials(), toy.minibatch_config()
    resumed = lj.fit(config, trials, out=run_dir, progress=False)
    straight = lj.fit(config, trials, progress=False)
    full_batch = lj.fit(toy.Config(), trials, progress=False)
    assert not np.array_equal(straight.history["loss"], full_batch.history["loss"])
    np.testing.assert_array_equal(resumed.params["mean"], straight.params["mean"])
    np.testing.assert_array_equal(resumed.history["step"], [10, 20, 30, 40])
    np.testing.assert_array_equal(resumed.history["loss"], straight.history["loss"])
    loaded = lj.load_run(run_dir)
    np.testing.assert_array_equal(loaded.params["mean"], straight.params["mean"])


@pytest.mark.slow
@pytest.mark.parametrize("devices", [3])
def test_resume_on_another_device_count_is_refused(tmp_path, devices):
    lj.sweep(toy.Config(), toy.make_trials(), seeds=(0, 1), out=tmp_path / "run", progress=False)
    result = run_python(
        f"""
        import latentjax as lj, train_toy as toy
        try:
            lj.sweep(toy.Config(), toy.make_trials(), seeds=(0, 1), out={str(tmp_path / "run")!r},
                     steps=50, progress=False)
        except ValueError as error:
            print(error)
        """,
        devices=devices,
    )
    assert "resume with the same number of devices" in result.stdout, result.stderr[-3000:]
