"""Shared test helpers: `SHARED_DATA`, the real recordings (`LATENTJAX_SHARED_DATA`, else
../shared/data beside the checkout; tests that need them skip when absent)."""

import os
import tempfile
from importlib import metadata
from pathlib import Path

import pytest


def _jaxlib_version() -> tuple[int, ...]:
    """The installed jaxlib's version numbers, read without importing it (importing would
    start XLA before its flags are set); () if its metadata cannot be read (seen once, when
    two pytest runs started together), which only leaves the version-specific flags out."""
    try:
        release = metadata.version("jaxlib").split("+")[0]
    except metadata.PackageNotFoundError:
        return ()
    return tuple(int(part) for part in release.split(".") if part.isdigit())


# Tests run tiny models for a few steps, so XLA's compile time dominates them: the LLVM
# backend at optimisation level 0 halves it (LFADS two-session sweep: 65 s -> 31 s) and the
# programs stay numerically the same ops. Command-line subprocesses inherit the flag.
flags = "--xla_backend_optimization_level=0"
if _jaxlib_version()[:2] == (0, 10):
    # XLA:CPU's older loop emitters and LLVM without its expensive passes compile the same
    # HLO about 40% faster again (test_slds: 94 -> 55 s of CPU). XLA aborts on a flag it
    # does not know, so they are set only for the jaxlib line they were measured on.
    flags += " --xla_cpu_use_fusion_emitters=false --xla_llvm_disable_expensive_passes=true"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on two cores: one thread per worker for XLA's CPU ops, not two each
    # (about 15% faster on test_node + test_lfads; the compiled code is the same).
    flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
# diffrax's solver checks (equinox `error_if`) are host callbacks, and JAX never caches an
# executable holding one: every ODE program would recompile in every test and subprocess.
# Returning NaN instead keeps the programs cacheable; the engine's NaN handling still applies.
os.environ.setdefault("EQX_ON_ERROR", "nan")

# One persistent XLA compilation cache for the test session, its xdist workers and the
# command-line subprocesses they start: a program compiled by one is loaded by the others.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(tempfile.gettempdir()) / "latentjax-test-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

SHARED_DATA = Path(
    os.environ.get("LATENTJAX_SHARED_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)


@pytest.fixture(scope="session")
def shared_file():
    """`shared_file("peyrache_hd/dataHD.mat")` -> its path, or skip the test with a message."""

    def find(relative: str) -> Path:
        path = SHARED_DATA / relative
        if not path.exists():
            pytest.skip(
                f"real data {relative} not found under {SHARED_DATA} (set LATENTJAX_SHARED_DATA)"
            )
        return path

    return find


@pytest.fixture(autouse=True, scope="module")
def _release_memory_after_each_module():
    """Drop the module's compiled programs and figures once its tests are done.

    A worker otherwise keeps every executable and figure it ever made: on two cores each
    `pytest -n 2` worker grew to about 7.7 GB by the end of the suite, and a CI run lost a
    worker ("node down") near its end. Programs shared across modules reload from the
    persistent compilation cache above.
    """
    yield
    import gc

    import jax
    import matplotlib.pyplot as plt

    plt.close("all")
    jax.clear_caches()
    gc.collect()
