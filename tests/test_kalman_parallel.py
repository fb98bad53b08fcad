"""Every parallel-scan Kalman path finishes and equals the sequential one (issue #27).

On jax 0.10.2 (XLA:CPU) two concurrent batched LAPACK calls can deadlock the intra-op thread
pool (see `latentjax/nn/kalman.py`); the parallel smoother asked for its log-likelihood hung
forever. The calls run in a subprocess with XLA's default threading (the test workers' own
single-thread flags would hide the fault) and a time limit, so a hang fails the test with the
name of the call that did not return instead of stalling the suite.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

CALLS = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import latentjax as lj
    from latentjax.models import lds

    def params(rng, K, N):
        A = rng.normal(size=(K, K)); A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
        return lds.params_from_arrays(
            initial_mean=np.zeros(K), initial_cov=np.eye(K), dynamics=A,
            dynamics_cov=0.1 * np.eye(K), emissions=rng.normal(size=(N, K)) / np.sqrt(K),
            emissions_cov=rng.uniform(0.5, 1.5, N), emissions_bias=rng.normal(size=N))

    def gap(a, b):
        a, b = jax.tree.leaves(a), jax.tree.leaves(b)
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (1 + np.max(np.abs(y))))
                   for x, y in zip(a, b, strict=True))

    def report(name, got, want):
        print(json.dumps({"call": name, "gap": gap(got, want)}), flush=True)

    rng = np.random.default_rng(0)
    K, N, T, TRIALS = 16, 182, 1000, 4
    p = params(rng, K, N)
    ys = jnp.asarray(rng.normal(size=(TRIALS, T, N)), jnp.float32)

    def smooth(parallel, ll):
        def run(p, y):
            r = lds.smoother(p, y, missing_entries=False, parallel=parallel)
            return (r.means, r.covariances, r.log_likelihood) if ll else (r.means, r.covariances)
        return run

    def filt(parallel, ll):
        def run(p, y):
            r = lds.filter(p, y, missing_entries=False, parallel=parallel)
            return (r.means, r.covariances, r.log_likelihood) if ll else (r.means, r.covariances)
        return run

    for kind, make in (("smoother", smooth), ("filter", filt)):
        for ll in (True, False):
            name = f"{kind}{' + log-likelihood' if ll else ''}"
            want = jax.jit(make(False, ll))(p, ys[0])
            report(f"{name}, jit", jax.jit(make(True, ll))(p, ys[0]), want)
            report(f"{name}, no jit", make(True, ll)(p, np.asarray(ys[0])), want)
            batched = jax.jit(jax.vmap(make(True, ll), in_axes=(None, 0)))(p, ys)
            report(f"{name}, vmap over trials",
                   batched, jax.vmap(make(False, ll), in_axes=(None, 0))(p, ys))

    trials = lj.Trials(np.asarray(ys[:, :200]), continuous=True)
    fits = [lj.fit(lds.Config(latent_dim=4, parallel=parallel), trials, steps=3, progress=False)
            for parallel in (True, False)]
    report("EM parallel=True", fits[0].params, fits[1].params)

    with jax.enable_x64(True):
        p64 = params(np.random.default_rng(1), 6, 30)
        y64 = jnp.asarray(np.random.default_rng(2).normal(size=(3, 300, 30)))
        run = lambda parallel: jax.jit(jax.vmap(smooth(parallel, True), in_axes=(None, 0)))
        report("float64 smoother + log-likelihood, vmap", run(True)(p64, y64), run(False)(p64, y64))
    """
)


def test_every_parallel_kalman_call_finishes_and_equals_the_sequential_path():
    flags = os.environ.get("XLA_FLAGS", "").split()
    env = {
        **os.environ,
        "XLA_FLAGS": " ".join(
            f for f in flags if "multi_thread_eigen" not in f and "intra_op" not in f
        ),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", CALLS], env=env, capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired as hung:
        out = hung.stdout.decode() if isinstance(hung.stdout, bytes) else hung.stdout or ""
        finished = [json.loads(line)["call"] for line in out.splitlines() if line.startswith("{")]
        pytest.fail(f"a parallel Kalman call hung; finished before it: {finished}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 14, done.stdout
    for result in results:
        tolerance = 1e-8 if result["call"].startswith("float64") else 2e-3
        assert result["gap"] < tolerance, result
