"""The family contract, run end to end for every registered family at tiny sizes.

For each family: `init`; `lj.fit` with validation trials; `lj.infer` shapes; the `load_run`
round trip; a 2-seed `lj.sweep` equal to two separate fits; and the command line `fit ->
infer -> evaluate -> report` with default flags. The example family of the
README ("Adding a model family") is written to a module here, registered from outside the
package, and held to the same contract.
"""

import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import latentjax as lj
from latentjax.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE = "poisson_fa_example"
TINY = {
    "lorenz": dict(num_trials=10, num_bins=20, num_neurons=12),
    "lds": dict(num_trials=10, num_bins=20, num_neurons=10),
    "plds": dict(num_trials=10, num_bins=20, num_neurons=10),
    "nascar": dict(num_trials=10, num_bins=20, num_neurons=10),
    "multiregion": dict(num_trials=10, num_bins=20, neurons_per_region=5),
}
STEPS = 2


def _readme_example() -> str:
    """The code block of the README's "Adding a model family" section."""
    section = README.read_text().split("### Adding a model family", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    (folder / f"{EXAMPLE}.py").write_text(_readme_example())
    sys.path.insert(0, str(folder))
    __import__(EXAMPLE)
    yield folder
    sys.path.remove(str(folder))


BUILT_IN = [
    n for n in lj.family.names() if lj.family.get(n).family.__name__.startswith("latentjax")
]
FAMILIES = [*BUILT_IN, "poisson_fa"]


def _data(name: str):
    """(all, train, valid) trials of the family's default dataset, split as the CLI does."""
    registration = lj.family.get(name)
    dataset = lj.datasets.generate(registration.data, seed=0, **TINY[registration.data])
    return dataset.trials, *lj.data.split(dataset.trials, (0.8, 0.2), seed=0)


def test_every_built_in_family_is_registered_with_the_full_contract():
    assert set(BUILT_IN) >= {"lds", "plds", "gpfa", "smoothing", "lfads", "seqvae", "node"}
    assert set(BUILT_IN) >= {"coupled_lds", "dlag", "gnn", "attention"}
    for name in BUILT_IN:
        family = lj.family.get(name).family
        assert isinstance(family, lj.family.Family), name  # validation_loss included


@pytest.mark.parametrize("name", FAMILIES)
def test_family_contract(name, example_dir, tmp_path, capsys):
    registration = lj.family.get(name)
    trials, train, valid = _data(name)
    config = registration.config_type()
    if adapt := getattr(registration.family, "adapt", None):  # data-dependent defaults
        config = adapt(config, train)
    params = registration.family.init(jax.random.PRNGKey(0), config, train)
    assert jax.tree.leaves(params) and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))

    fits = [
        lj.fit(config, train, valid=valid, seed=s, steps=STEPS, out=tmp_path / f"s{s}",
               progress=False)
        for s in (0, 1)
    ]  # fmt: skip
    for fit in fits:
        assert not fit.history["failed"]
        assert fit.history["valid_loss"].shape == (1,) and np.isfinite(fit.history["valid_loss"])

    posterior = lj.infer(fits[0], trials)
    assert posterior.family == name
    assert np.shape(posterior.latents)[:2] == trials.shape[:2]
    assert np.all(np.isfinite(posterior.latents))
    if posterior.rates is not None:
        assert np.shape(posterior.rates)[:2] == trials.shape[:2]
        assert np.shape(posterior.rates)[2] >= trials.num_neurons

    loaded = lj.load_run(tmp_path / "s0")
    assert loaded.config == fits[0].config
    for got, want in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(fits[0].params),
                         strict=True):  # fmt: skip
        np.testing.assert_array_equal(got, want)

    population = lj.sweep(config, train, valid=valid, seeds=(0, 1), steps=STEPS, progress=False)
    for member, fit in zip(population, fits, strict=True):
        for got, want in zip(jax.tree.leaves(member.params), jax.tree.leaves(fit.params),
                             strict=True):  # fmt: skip
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)  # float32 EM

    _command_line_with_default_flags(name, tmp_path / "cli", capsys)


def _command_line_with_default_flags(name, run, capsys):
    """`latentjax fit -> infer -> evaluate -> report` through the command line's `main` with
    no flag but the tiny data and steps (the same shapes as above, so the compiled programs
    are the ones this test already built; the console script itself is tested in
    test_cli.py)."""
    registration = lj.family.get(name)
    family = EXAMPLE if name == "poisson_fa" else name
    sizes = ",".join(f"{k}={v}" for k, v in TINY[registration.data].items())
    commands = [
        ["fit", family, "--data", f"{registration.data}:{sizes}", "--out", str(run), "--steps",
         str(STEPS), "--no-progress"],
        ["infer", "--run", str(run)],
        ["evaluate", "--run", str(run)],
        ["report", "--run", str(run)],
    ]  # fmt: skip
    for argv in commands:
        assert main(argv) == 0, (argv[0], capsys.readouterr().err[-2000:])
    for produced in ("posterior.npz", "evaluation.json", "report.html", "command.json"):
        assert (run / produced).exists(), produced
    assert "wrote" in capsys.readouterr().out
