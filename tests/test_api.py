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


def test_config_values_are_checked_before_any_folder_is_written(trials, tmp_path):
    from latentjax.configs import update_config
    from latentjax.models import lds, lfads

    out = tmp_path / "run"
    bad = {
        "train.learning_rate": (-1e-3, "`train.learning_rate` must be > 0"),
        "dropout": (1.5, "`dropout` must be in \\[0, 1\\)"),
        "cd_rate": (float("nan"), "`cd_rate` must be in \\[0, 1\\)"),
        "kl_ic_scale": (-1.0, "`kl_ic_scale` must be >= 0"),
    }
    for path, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            lj.fit(update_config(lfads.Config(), {path: value}), trials, out=out, progress=False)
        with pytest.raises(ValueError, match=f"grid: {message}"):
            lj.sweep(lfads.Config(), trials, grid={path: [0.1, value]}, out=out, progress=False)
    assert not out.exists()
    # `--set` values must have the field's kind: no bool for an int, no number for a table
    # (a field that is None now, as lfads' `train.steps`, is judged by the config's checks)
    for config, path, value, message in (
        (lds.Config(), "latent_dim", True, "`latent_dim` expects int"),
        (lfads.Config(), "train", 5, "`train` expects a table of TrainConfig fields"),
        (lds.Config(), "train.steps", 2.5, "`train.steps` expects an int"),
        (lfads.Config(), "train.steps", 2.5, "`steps` must be a positive int, got 2.5"),
        (lds.Config(), "parallel", 1, "`parallel` expects true or false"),
        (lfads.Config(), "dropout", "high", "`dropout` expects a number"),
    ):
        with pytest.raises(ValueError, match=message):
            update_config(config, {path: value})


def _relabelled(trials, **labels):
    return lj.Trials(np.asarray(trials.spikes), dt=labels.pop("dt", trials.dt), **labels)


def test_new_trials_are_checked_against_the_data_the_model_was_fitted_on(trials, tmp_path):
    ids, regions = [11, 12, 13, 14, 15], ["M1", "M1", "PMd", "PMd", "PMd"]
    fitted_on = _relabelled(trials, neuron_ids=ids, regions=regions)
    result = lj.fit(toy.Config(), fitted_on, steps=200, out=tmp_path / "run", progress=False)
    saved = lj.load_run(tmp_path / "run")
    assert saved.data == result.data and result.data["neuron_ids"] == ids
    want = np.asarray(lj.infer(result, fitted_on).rates)

    # the same units in another order: reordered by id (with a warning), same posterior
    order = np.array([3, 0, 4, 2, 1])
    shuffled = fitted_on.select_neurons(order)
    for fitted in (result, saved):
        with pytest.warns(UserWarning, match="neurons reordered by neuron_ids"):
            np.testing.assert_allclose(np.asarray(lj.infer(fitted, shuffled).rates), want)
    with pytest.warns(UserWarning, match="reordered"):
        scores = lj.evaluate(saved, shuffled)
    assert scores["bps"] == pytest.approx(lj.evaluate(saved, fitted_on)["bps"])

    refused = {
        "not the 5 units .*1 missing, e.g. \\[15\\]; 1 unknown, e.g. \\[99\\]": _relabelled(
            trials, neuron_ids=[11, 12, 13, 14, 99]
        ),
        "4 neurons, the model was fitted on 5": trials.select_neurons(np.arange(4)),
        "bin size dt=0.02 s, the model was fitted with dt=0.01 s": _relabelled(trials, dt=0.02),
        "region labels .*'PMd': 2.* differ from the fitted .*'PMd': 3": _relabelled(
            trials, regions=["M1", "M1", "M1", "PMd", "PMd"]
        ),
    }
    for message, other in refused.items():
        for fitted in (result, saved):
            with pytest.raises(ValueError, match=f"`trials`: .*{message}"):
                lj.infer(fitted, other)
        with pytest.raises(ValueError, match=message):
            lj.evaluate(saved, other)
    with pytest.raises(ValueError, match="`valid`: 4 neurons, the model was fitted on 5"):
        lj.fit(toy.Config(), trials, valid=trials.select_neurons(np.arange(4)), progress=False)
    for labels in ({"regions": "ABCDE"}, {"neuron_ids": "abcde"}):
        with pytest.raises(ValueError, match="must be a sequence with one label per neuron"):
            _relabelled(trials, **labels)


def test_trials_with_every_bin_masked_are_refused(trials):
    empty = trials.replace(mask=np.zeros(trials.mask.shape, bool))
    with pytest.raises(ValueError, match="`train`: every bin is masked"):
        lj.fit(toy.Config(), empty, progress=False)
    with pytest.raises(ValueError, match="`valid`: every bin is masked"):
        lj.fit(toy.Config(), trials, valid=empty, progress=False)
