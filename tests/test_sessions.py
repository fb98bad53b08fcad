"""Several sessions (different neuron counts) through the engine: `lj.fit` and `lj.sweep` on a
sequence of `Trials`, checkpoints, SIGKILL and resume, `lj.infer` per session."""

import dataclasses
import os
import signal

import jax
import numpy as np
import pytest
from test_train_processes import run_python

import latentjax as lj


def make_config():
    """LFADS at tiny sizes, a shared read-in space, minibatches (so the per-session data order
    is part of every checkpoint) and a checkpoint every 2 steps."""
    config = lj.models.lfads.Config.preset("tiny")
    train = dataclasses.replace(
        config.train, steps=6, chunk_size=2, checkpoint_every=2, batch_size=4
    )
    return dataclasses.replace(config, readin_dim=6, train=train)


def make_sessions():
    """Two sessions of 30 and 45 neurons: (train sessions, valid sessions)."""
    sessions = [
        lj.datasets.lorenz(seed=s, num_trials=10, num_bins=20, num_neurons=n).trials
        for s, n in ((0, 30), (1, 45))
    ]
    splits = [lj.data.split(t, (0.8, 0.2), seed=0) for t in sessions]
    return [s[0] for s in splits], [s[1] for s in splits]


def test_two_sessions_killed_and_resumed_equal_an_uninterrupted_sweep(tmp_path):
    run_dir = tmp_path / "run"
    killed = run_python(
        f"""
        import os, signal, latentjax as lj
        from latentjax.train.checkpoint import Checkpoints
        from test_sessions import make_config, make_sessions

        save = Checkpoints.save

        def save_then_die(self, step, state, record):
            save(self, step, state, record)
            if step == 4:
                os.kill(os.getpid(), signal.SIGKILL)

        Checkpoints.save = save_then_die
        train, valid = make_sessions()
        lj.sweep(make_config(), train, valid=valid, seeds=(0, 1), out={str(run_dir)!r},
                 progress=False)
        """
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert max(int(p) for p in os.listdir(run_dir / "checkpoints") if p.isdigit()) in (2, 4)

    train, valid = make_sessions()
    config = make_config()
    resumed = lj.sweep(config, train, valid=valid, seeds=(0, 1), out=run_dir, progress=False)
    straight = lj.sweep(config, train, valid=valid, seeds=(0, 1), progress=False)
    for a, b in zip(resumed, straight, strict=True):
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a.history["valid_loss"], b.history["valid_loss"])
    assert len(straight[0].params["sessions"]) == 2

    loaded = lj.load_run(run_dir)
    for x, y in zip(jax.tree.leaves(loaded[0].params), jax.tree.leaves(straight[0].params),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(x, y)
    posteriors = lj.infer(loaded[0], valid)
    assert [p.rates.shape for p in posteriors] == [(2, 20, 30), (2, 20, 45)]
    one = lj.infer(loaded[0], valid[1], session=1)
    np.testing.assert_allclose(one.rates, posteriors[1].rates, rtol=1e-5)


def test_sessions_are_checked_at_the_boundary():
    train, valid = make_sessions()
    with pytest.raises(ValueError, match="`valid` must hold 2 sessions like `train`, got 1"):
        lj.fit(make_config(), train, valid=valid[:1], progress=False)
    with pytest.raises(ValueError, match="the family 'lds' fits one session"):
        lj.fit(lj.models.lds.Config(), train, progress=False)
    with pytest.raises(ValueError, match="sequence of lj.Trials"):
        lj.fit(make_config(), [train[0], "not trials"], progress=False)
