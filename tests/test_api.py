"""`lj.fit` / `lj.infer` / `lj.sweep` / `lj.load_run` at the API boundary: family dispatch and
argument validation (training itself is tested in test_train.py)."""

import dataclasses

import numpy as np
import pytest
import train_toy as toy

import latentjax as lj
from latentjax.api import family_of
from latentjax.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Unhashable(toy.Config):
    sizes: list = dataclasses.field(default_factory=lambda: [1, 2])


lj.api.register_family(Unhashable, toy)


@pytest.fixture(scope="module")
def trials():
    return toy.make_trials()


def test_family_is_the_module_or_package_of_the_config():
    assert family_of(toy.Config()) is toy
    assert family_of(toy.EMConfig()) is toy.EMFamily  # registered with register_family
    with pytest.raises(ValueError, match="Config instance"):
        family_of(toy.Config)


def test_register_family_for_an_out_of_tree_family(trials):
    @dataclasses.dataclass(frozen=True)
    class Shifted(toy.Config):  # defined here, in a module that is no family
        pass

    class Family:
        init = staticmethod(toy.init)
        loss = staticmethod(toy.loss)

        @staticmethod
        def posterior(params, trials, config, key, *, shift=0.0):
            rates = toy.posterior(params, trials, config, key).rates + shift
            return lj.Posterior(latents=rates[..., :1], rates=rates)

    lj.api.register_family(Shifted, Family)
    result = lj.fit(Shifted(), trials, progress=False)
    shifted = lj.infer(result, trials, shift=1.0)
    # float32: (x + 1) - 1 differs from x by up to one ulp of 2, so not rtol=1e-7.
    np.testing.assert_allclose(shifted.rates - 1.0, lj.infer(result, trials).rates, atol=1e-6)
    np.testing.assert_allclose(shifted.rates[0, 0] - 1.0, result.params["mean"], rtol=1e-6)


def test_invalid_arguments_name_what_is_wrong(trials):
    with pytest.raises(ValueError, match="'train.momentum' is not a knob"):
        lj.sweep(toy.Config(), trials, grid={"train.momentum": [0.9]}, progress=False)
    with pytest.raises(ValueError, match="'train.steps' is not a knob"):
        lj.sweep(toy.Config(), trials, grid={"train.steps": [1, 2]}, progress=False)
    with pytest.raises(ValueError, match="`train` must be lj.Trials"):
        lj.fit(toy.Config(), np.zeros((2, 3, 4)), progress=False)
    with pytest.raises(ValueError, match="seeds must be"):
        lj.sweep(toy.Config(), trials, seeds=(), progress=False)
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int"):
        TrainConfig(chunk_size=0)
    with pytest.raises(ValueError, match="lacks init, posterior, loss or fitter"):
        lj.api.register_family(toy.Config, object())

    with pytest.raises(ValueError, match="must be hashable"):
        lj.fit(Unhashable(), trials, progress=False)
    with pytest.raises(ValueError, match="result must be a FitResult"):
        lj.infer({"mean": 0}, trials)
    with pytest.raises(ValueError, match="holds no config.json"):
        lj.load_run("/nonexistent/run")
