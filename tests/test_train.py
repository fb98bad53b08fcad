"""The training engine on toy families (tests/train_toy.py): fits, compilation, populations,
non-finite steps, early stopping, run folders, schedules, PBT."""

import dataclasses
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_toy as toy

import latentjax as lj
from latentjax.train import (
    FamilyGradientFitter,
    NonFiniteError,
    PBTConfig,
    TrainConfig,
    gradient_fitter,
    knob,
    schedules,
)
from latentjax.train.run import config_from_json, config_to_json


@dataclasses.dataclass(frozen=True)
class FailingConfig:
    fail_from: float = knob(-1.0)
    train: TrainConfig = toy.Config().train


class FailingFamily:
    """The toy family whose steps fail from step `fail_from` on (a knob, so members of one
    population may differ): a NaN loss with `toy_failures = 1`, the family's report of why
    (as node reports `solver_failures`, the fraction of failed ODE solves)."""

    Config = FailingConfig
    init = staticmethod(toy.init)
    posterior = staticmethod(toy.posterior)

    @staticmethod
    def loss(params, batch, key, config, step):
        value, aux = toy.loss(params, batch, key, toy.Config(), step)
        failing = (config.fail_from >= 0) & (step >= config.fail_from)
        aux = {**aux, "toy_failures": failing.astype(jnp.float32)}
        return jnp.where(failing, jnp.nan, value), aux


lj.family.register("toy_failing", FailingFamily)


@pytest.fixture(scope="module")
def trials():
    return toy.make_trials()


def toy_config(**train_changes):
    return dataclasses.replace(
        toy.Config(), train=dataclasses.replace(toy.Config().train, **train_changes)
    )


def test_gradient_fit_reaches_closed_form_optimum(trials):
    config = dataclasses.replace(
        toy_config(learning_rate=0.3, steps=200, chunk_size=50, schedule="cosine"), l2=0.01
    )
    result = lj.fit(config, trials, progress=False)
    np.testing.assert_allclose(result.params["mean"], toy.optimum(trials, l2=0.01), atol=2e-2)
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.history["step"].tolist() == [50, 100, 150, 200]
    posterior = lj.infer(result, trials)
    assert posterior.rates.shape == trials.shape


def test_em_fitter_runs_through_the_same_loop_and_checkpoints(trials, tmp_path):
    config = toy.EMConfig(damping=0.5)
    result = lj.fit(config, trials, progress=False, steps=30, out=tmp_path / "em")
    # damped fixed-point iteration: error shrinks by (1 - damping) per step
    np.testing.assert_allclose(result.params["mean"], toy.optimum(trials), atol=1e-5)
    assert result.history["step"][-1] == 30
    loaded = lj.load_run(tmp_path / "em")
    assert loaded.config == result.config
    np.testing.assert_array_equal(loaded.params["mean"], result.params["mean"])


def test_compiled_once_per_shape(trials, caplog):
    config = toy_config(steps=28, chunk_size=7)  # a chunk size no other test compiles
    traces = toy.TRACES["loss"]
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        lj.fit(config, trials, progress=False)  # four chunks
        traced_once = toy.TRACES["loss"] - traces
        other = toy.make_trials(seed=1)  # same shapes, other values and knob values
        changed = dataclasses.replace(
            config, l2=0.1, train=dataclasses.replace(config.train, learning_rate=0.01)
        )
        lj.fit(changed, other, seed=3, progress=False)
    compiled = [r for r in caplog.records if "compilation of jit(run_chunk)" in r.getMessage()]
    assert len(compiled) == 1
    assert traced_once == 1 and toy.TRACES["loss"] - traces == 1


def test_minibatches_cover_each_epoch_once():
    num_trials, batch_size = 12, 4

    def loss(params, batch, key, step):
        ids = batch["id"]
        return params * jnp.sum(ids), {f"id{i}": ids[i] for i in range(batch_size)}

    fitter = gradient_fitter(loss, TrainConfig(batch_size=batch_size))
    data = {"id": jnp.arange(num_trials, dtype=jnp.float32)}
    state = fitter.init(jnp.float32(1.0), data)
    step_fn = jax.jit(fitter.step)
    epochs = []
    for step in range(6):
        state, info = step_fn(state, data, jax.random.PRNGKey(step))
        epochs.extend(int(info[f"id{i}"]) for i in range(batch_size))
    first, second = epochs[:num_trials], epochs[num_trials:]
    assert sorted(first) == list(range(num_trials)) == sorted(second)
    assert first != second  # a new permutation each epoch


def test_population_equals_separate_fits(trials):
    config = toy_config(batch_size=4)
    grid = {"train.learning_rate": [0.01, 0.05]}
    population = lj.sweep(config, trials, seeds=(0, 1), grid=grid, progress=False)
    assert len(population) == 4
    for member in population:
        seed = int(member.history["seed"])
        alone = lj.fit(member.config, trials, seed=seed, progress=False)
        np.testing.assert_allclose(member.params["mean"], alone.params["mean"], rtol=1e-6)
        assert member.history["train.learning_rate"][0] == pytest.approx(
            member.config.train.learning_rate
        )
    learning_rates = [m.config.train.learning_rate for m in population]
    assert learning_rates == [0.01, 0.05, 0.01, 0.05]


def test_nan_gradient_is_skipped_with_parameters_unchanged(trials):
    config = dataclasses.replace(toy.Config(), nan_from=3, nan_until=4)
    fitter = FamilyGradientFitter(toy.loss)(config)
    state = fitter.init(toy.init(jax.random.PRNGKey(0), config, trials), trials)
    step_fn = jax.jit(fitter.step)
    for step in range(3):
        state, info = step_fn(state, trials, jax.random.PRNGKey(step))
        assert info["skipped"] == 0
    poisoned, info = step_fn(state, trials, jax.random.PRNGKey(3))
    assert info["skipped"] == 1 and not np.isfinite(info["grad_norm"])
    np.testing.assert_array_equal(poisoned.params["mean"], state.params["mean"])
    assert int(poisoned.step) == 4

    result = lj.fit(config, trials, progress=False)
    assert result.history["nonfinite_steps"].sum() == 1
    assert np.isfinite(result.params["mean"]).all()


def test_persistent_nan_stops_and_keeps_the_last_checkpoint(trials, tmp_path):
    config = dataclasses.replace(toy.Config(), nan_from=15, nan_until=10**6)
    with pytest.raises(NonFiniteError, match="5 consecutive steps.*checkpoint \\(step 10\\)"):
        lj.fit(config, trials, out=tmp_path / "run", progress=False)
    saved = lj.load_run(tmp_path / "run")
    clean = lj.fit(toy.Config(), trials, steps=10, progress=False)
    np.testing.assert_allclose(saved.params["mean"], clean.params["mean"], rtol=1e-6)


def test_a_member_whose_family_reports_a_failure_stops_at_once_and_the_others_go_on(
    trials, tmp_path
):
    grid = {"fail_from": [-1.0, 13.0, -1.0, -1.0]}
    population = lj.sweep(FailingConfig(), trials, grid=grid, out=tmp_path, progress=False)
    assert [bool(m.history["failed"]) for m in population] == [False, True, False, False]
    # stopped at its first failed step (not after max_nonfinite=5 of them) with the
    # parameters of its last good step: those of a 13-step fit
    assert population[1].history["nonfinite_steps"].sum() == 1
    thirteen = lj.fit(toy.Config(), trials, steps=13, progress=False)
    np.testing.assert_allclose(population[1].params["mean"], thirteen.params["mean"], rtol=1e-6)
    full = lj.fit(toy.Config(), trials, progress=False)
    for member in population[::2] + population[3:]:
        assert member.history["step"][-1] == 40 and np.isfinite(member.history["loss"]).all()
        np.testing.assert_allclose(member.params["mean"], full.params["mean"], rtol=1e-6)

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["failed"][1] for line in lines] == [False, True, True, True]
    reason = "the family reported a failure (toy_failures=1) on a step with a non-finite loss"
    assert lines[-1]["failure"] == [None, reason, None, None]
    assert str(lj.load_run(tmp_path)[1].history["failure"]) == reason
    # resumed for more steps, the run still says why
    longer = lj.sweep(FailingConfig(), trials, grid=grid, out=tmp_path, steps=50, progress=False)
    assert longer[0].history["step"][-1] == 50 and str(longer[1].history["failure"]) == reason
    # a single fit that fails stops with the reason
    with pytest.raises(NonFiniteError, match=r"step 10: the family reported .*toy_failures=1"):
        lj.fit(FailingConfig(fail_from=3.0), trials, progress=False)


class NaNInitFamily(FailingFamily):
    """The toy family with non-finite initial parameters (as a fit on one time bin gave)."""

    @staticmethod
    def init(key, config, trials):
        return {"mean": jnp.full((trials.num_neurons,), jnp.nan)}


@dataclasses.dataclass(frozen=True)
class NaNInitConfig(FailingConfig):
    pass


NaNInitFamily.Config = NaNInitConfig
lj.family.register("toy_nan_init", NaNInitFamily)


def test_a_fit_mostly_skipped_or_ending_non_finite_is_a_failure(trials, tmp_path):
    # 15 steps, all skipped, fewer than max_nonfinite=20 in a row: still a failure
    train = dataclasses.replace(toy.Config().train, steps=15, chunk_size=5, max_nonfinite=20)
    poisoned = dataclasses.replace(toy.Config(), nan_from=0, nan_until=10**6, train=train)
    with pytest.raises(NonFiniteError, match="15 of 15 steps .* skipped.*checkpoint \\(step 15\\)"):
        lj.fit(poisoned, trials, out=tmp_path / "skipped", progress=False)
    saved = lj.load_run(tmp_path / "skipped")
    assert bool(saved.history["failed"]) and "15 of 15 steps" in str(saved.history["failure"])
    np.testing.assert_array_equal(  # the checkpoint holds the (untouched) initial parameters
        saved.params["mean"],
        toy.init(jax.random.split(jax.random.PRNGKey(0))[0], poisoned, trials)["mean"],
    )
    # in a population only that member fails; `best` passes it over
    grid = {"nan_until": [-1.0, 1e6]}
    population = lj.sweep(
        dataclasses.replace(poisoned, nan_until=-1.0), trials, grid=grid, progress=False
    )
    assert [bool(m.history["failed"]) for m in population] == [False, True]
    assert lj.best(population, score="loss") is population[0]
    # non-finite final parameters
    nan_config = NaNInitConfig(train=train)
    with pytest.raises(NonFiniteError, match="final parameters are not finite"):
        lj.fit(nan_config, trials, out=tmp_path / "nan", progress=False)
    assert bool(lj.load_run(tmp_path / "nan").history["failed"])


def test_early_stopping_keeps_the_best_parameters(trials):
    # validation means halfway to the training means: validation loss falls, then rises
    valid = lj.Trials(np.round(np.asarray(trials.spikes) / 2), dt=trials.dt)
    config = toy_config(learning_rate=0.1, steps=400, patience=3)
    result = lj.fit(config, trials, valid=valid, progress=False)
    history = result.history["valid_loss"]
    assert result.history["step"][-1] < 400  # stopped early
    assert np.argmin(history) == len(history) - 4  # three validations without improvement
    best, _ = toy.loss(result.params, valid, None, config, 0)
    assert float(best) == pytest.approx(history.min(), rel=1e-5)


def test_run_folder_round_trip_and_refusal(trials, tmp_path):
    config = toy.Config()
    result = lj.fit(config, trials, out=tmp_path / "run", progress=False)
    assert sorted(os.listdir(tmp_path / "run")) == [
        "checkpoints",
        "config.json",
        "data.json",
        "lock",
        "metrics.jsonl",
        "population.json",
    ]
    loaded = lj.load_run(tmp_path / "run")
    assert loaded.config == config
    np.testing.assert_array_equal(loaded.params["mean"], result.params["mean"])
    np.testing.assert_array_equal(loaded.history["loss"], result.history["loss"])
    # a finished run is returned as it is; extending `steps` continues it
    again = lj.fit(config, trials, out=tmp_path / "run", progress=False)
    np.testing.assert_array_equal(again.params["mean"], result.params["mean"])
    longer = lj.fit(config, trials, out=tmp_path / "run", steps=50, progress=False)
    straight = lj.fit(config, trials, steps=50, progress=False)
    np.testing.assert_allclose(longer.params["mean"], straight.params["mean"], rtol=1e-6)
    with pytest.raises(ValueError, match="different config"):
        lj.fit(dataclasses.replace(config, l2=0.5), trials, out=tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="different `train` trials"):
        lj.fit(config, toy.make_trials(seed=5), out=tmp_path / "run", progress=False)


def test_partially_written_checkpoint_is_ignored(trials, tmp_path):
    result = lj.fit(toy.Config(), trials, out=tmp_path / "run", progress=False)
    checkpoints = tmp_path / "run" / "checkpoints"
    # what a kill during the write of step 50 leaves: orbax's temporary directory, cut short
    partial = checkpoints / "50.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(checkpoints / "40", partial)
    for path in partial.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    loaded = lj.load_run(tmp_path / "run")
    np.testing.assert_array_equal(loaded.params["mean"], result.params["mean"])


def test_config_json_round_trip():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        sizes: tuple = (3, (4, 5))
        name: str = "x"

    config = toy_config(grad_clip=1.0)
    assert config_from_json(json.loads(json.dumps(config_to_json(config)))) == config
    encoded = json.loads(json.dumps(config_to_json(Inner())))
    assert encoded["fields"]["sizes"] == {"__tuple__": [3, {"__tuple__": [4, 5]}]}
    with pytest.raises(ValueError, match="config.fn: a builtin_function_or_method cannot be saved"):
        config_to_json({"fn": len})


def test_schedules():
    steps = jnp.arange(0, 11)
    np.testing.assert_allclose(
        schedules.ramp(steps, start=2, length=4)[np.array([0, 2, 4, 6, 10])], [0, 0, 0.5, 1, 1]
    )
    np.testing.assert_array_equal(schedules.ramp(steps, start=3)[2:5], [0, 1, 1])
    train = TrainConfig(steps=110, warmup_steps=10, schedule="cosine", final_lr_fraction=0.1)
    factors = [float(schedules.learning_rate_factor(s, train)) for s in (0, 5, 10, 60, 110)]
    np.testing.assert_allclose(factors, [0, 0.5, 1, 0.55, 0.1], atol=1e-6)


def test_pbt_beats_the_same_population_without_it(trials, tmp_path):
    # three of four learning rates are far too small to get anywhere in 200 steps
    config = toy_config(steps=200)
    grid = {"train.learning_rate": [1e-4, 2e-4, 5e-4, 5e-2]}
    fixed = lj.sweep(config, trials, grid=grid, progress=False)
    pbt = PBTConfig(fraction=0.5, seed=0)
    exploited = lj.sweep(config, trials, grid=grid, pbt=pbt, progress=False, out=tmp_path / "pbt")

    def final_losses(population):
        return np.array([float(toy.loss(m.params, trials, None, config, 0)[0]) for m in population])

    assert np.median(final_losses(exploited)) < 0.5 * np.median(final_losses(fixed))
    learning_rates = np.array([m.config.train.learning_rate for m in exploited])
    assert np.median(learning_rates) > 1e-2  # the population moved to the good learning rate
    assert any((m.history["pbt_source"] != np.arange(4)[i]).any() for i, m in enumerate(exploited))
    loaded = lj.load_run(tmp_path / "pbt")  # a sweep folder gives one result per member
    for member, saved in zip(exploited, loaded, strict=True):
        assert saved.config == member.config
        np.testing.assert_array_equal(saved.params["mean"], member.params["mean"])
        np.testing.assert_array_equal(saved.history["pbt_source"], member.history["pbt_source"])
