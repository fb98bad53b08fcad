"""`lj.fit` / `lj.infer` / `lj.sweep` / `lj.load_run` at the API boundary: family dispatch and
argument validation (training itself is tested in test_train.py)."""

import dataclasses

import numpy as np
import pytest
import train_toy as toy

import latentjax as lj
from latentjax.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Unhashable(toy.Config):
    sizes: list = dataclasses.field(default_factory=lambda: [1, 2])


class UnhashableFamily:
    Config = Unhashable
    init, loss, validation_loss, posterior = toy.init, toy.loss, toy.validation_loss, toy.posterior


lj.family.register("unhashable", UnhashableFamily)


@pytest.fixture(scope="module")
def trials():
    return toy.make_trials()


def test_the_registry_maps_configs_and_names_to_families():
    assert lj.family.of_config(toy.Config()).family is toy
    assert lj.family.of_config(toy.EMConfig()).family is toy.EMFamily
    assert lj.family.get("lfads").family is lj.models.lfads
    assert lj.family.of_config(lj.models.lfads.Config()).name == "lfads"
    with pytest.raises(ValueError, match="Config instance"):
        lj.family.of_config(toy.Config)
    with pytest.raises(ValueError, match="unknown family 'nope'; choose from lds"):
        lj.family.get("nope")

    @dataclasses.dataclass(frozen=True)
    class Unregistered:
        rate: float = 1.0

    with pytest.raises(ValueError, match="Config of no registered family"):
        lj.fit(Unregistered(), toy.make_trials(), progress=False)


def test_register_family_for_an_out_of_tree_family(trials):
    @dataclasses.dataclass(frozen=True)
    class Shifted(toy.Config):  # defined here, in a module that is no family
        pass

    class Family:
        Config = Shifted
        init = staticmethod(toy.init)
        loss = staticmethod(toy.loss)
        validation_loss = staticmethod(toy.loss)

        @staticmethod
        def posterior(params, trials, config, key, *, shift=0.0):
            rates = toy.posterior(params, trials, config, key).rates + shift
            return lj.Posterior(latents=rates[..., :1], rates=rates)

    lj.family.register("shifted", Family)
    result = lj.fit(Shifted(), trials, progress=False)
    shifted = lj.infer(result, trials, shift=1.0)
    assert shifted.family == "shifted"
    # float32: (x + 1) - 1 differs from x by up to one ulp of 2, so not rtol=1e-7.
    np.testing.assert_allclose(shifted.rates - 1.0, lj.infer(result, trials).rates, atol=1e-6)
    np.testing.assert_allclose(shifted.rates[0, 0] - 1.0, result.params["mean"], rtol=1e-6)


def test_invalid_arguments_name_what_is_wrong(trials):
    with pytest.raises(ValueError, match="'train.momentum' is not a field of Config"):
        lj.sweep(toy.Config(), trials, grid={"train.momentum": [0.9]}, progress=False)
    with pytest.raises(ValueError, match="does not use 'train.learning_rate'"):
        lj.sweep(toy.EMConfig(), trials, grid={"train.learning_rate": [0.1, 0.2]}, progress=False)
    with pytest.raises(ValueError, match="`train` must be lj.Trials"):
        lj.fit(toy.Config(), np.zeros((2, 3, 4)), progress=False)
    with pytest.raises(ValueError, match="seeds must be"):
        lj.sweep(toy.Config(), trials, seeds=(), progress=False)
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int"):
        TrainConfig(chunk_size=0)
    with pytest.raises(ValueError, match="lacks Config, init, posterior, loss or fitter"):
        lj.family.register("nothing", object())

    with pytest.raises(ValueError, match="must be hashable"):
        lj.fit(Unhashable(), trials, progress=False)
    with pytest.raises(ValueError, match="result must be a FitResult"):
        lj.infer({"mean": 0}, trials)
    with pytest.raises(ValueError, match="holds no config.json"):
        lj.load_run("/nonexistent/run")
