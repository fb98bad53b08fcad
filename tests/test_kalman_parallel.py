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
    import json, sys, time
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
                   for x, y in zip(a, b, strict=True) if np.size(y))

    started = [time.perf_counter()]

    def report(name, got, want):
        seconds = time.perf_counter() - started[0]
        print(json.dumps({"call": name, "gap": gap(got, want), "seconds": seconds}), flush=True)
        started[0] = time.perf_counter()

    # one trial of this size hung on every run before the fix (K=16, T=200 or K=8 did not)
    rng = np.random.default_rng(0)
    K, N, T, TRIALS, T_BATCHED = 16, 60, 400, 4, 100
    p = params(rng, K, N)
    y = jnp.asarray(rng.normal(size=(T, N)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(TRIALS, T_BATCHED, N)), jnp.float32)

    def call(kind, parallel, ll):
        def run(p, y):
            r = (lds.smoother if kind == "smoother" else lds.filter)(
                p, y, missing_entries=False, parallel=parallel)
            return (r.means, r.covariances, r.log_likelihood) if ll else (r.means, r.covariances)
        return run

    reference = jax.jit(lambda p, y: lds.smoother(p, y, missing_entries=False))(p, y)
    want = {"smoother": reference, "filter": reference.filtered}
    for kind in ("smoother", "filter"):
        for ll in (True, False):
            name = f"{kind}{' + log-likelihood' if ll else ''}"
            expected = (want[kind].means, want[kind].covariances) + (
                (want[kind].log_likelihood,) if ll else ())
            report(f"{name}, jit", jax.jit(call(kind, True, ll))(p, y), expected)
    # outside jit: the public functions as they are (they compile their own program)
    report("smoother + log-likelihood, no jit",
           lds.smoother(p, y, missing_entries=False, parallel=True), reference)
    report("filter + log-likelihood, no jit",
           lds.filter(p, y, missing_entries=False, parallel=True), reference.filtered)
    for kind in ("smoother", "filter"):
        batched = jax.vmap(call(kind, True, True), in_axes=(None, 0))
        sequential = jax.vmap(call(kind, False, True), in_axes=(None, 0))
        report(f"{kind} + log-likelihood, vmap over trials",
               jax.jit(batched)(p, ys), jax.jit(sequential)(p, ys))

    trials = lj.Trials(np.asarray(ys), dt=0.01, continuous=True)
    fits = [lj.fit(lds.Config(latent_dim=2, parallel=parallel), trials, steps=2, progress=False)
            for parallel in (True, False)]
    report("EM parallel=True", fits[0].params, fits[1].params)

    with jax.enable_x64(True):
        p64 = params(np.random.default_rng(1), 6, 30)
        y64 = jnp.asarray(np.random.default_rng(2).normal(size=(3, 100, 30)))
        run = lambda par: jax.jit(jax.vmap(call("smoother", par, True), in_axes=(None, 0)))
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
    assert len(results) == 10, done.stdout
    for result in results:
        tolerance = 1e-8 if result["call"].startswith("float64") else 2e-3
        assert result["gap"] < tolerance, result
