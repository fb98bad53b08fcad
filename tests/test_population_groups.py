"""Populations run vmapped, in groups, one member after another or in concurrent streams
(`TrainConfig.population_mode`, `latentjax.train.grouping`): the same members to float32
rounding, the choice recorded in the run folder, bad settings refused, kill and resume in
groups."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_toy as toy

import latentjax as lj
from latentjax.train import TrainConfig, grouping
from latentjax.train.checkpoint import Checkpoints

SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def trials():
    return toy.make_trials()


def toy_config(mode, **train_changes):
    train = dataclasses.replace(toy.minibatch_config().train, population_mode=mode, **train_changes)
    return dataclasses.replace(toy.Config(), l2=0.01, train=train)


@pytest.fixture(scope="module")
def populations(trials):
    """`{mode: results}` of one population of 4 members (2 seeds x 2 learning rates)."""
    grid = {"train.learning_rate": [0.02, 0.05]}
    return {
        mode: lj.sweep(toy_config(mode), trials, seeds=(0, 1), grid=grid, progress=False)
        for mode in ("vmapped", "sequential", 2, 3)
    }


def test_vmapped_sequential_and_groups_give_the_same_members(populations):
    reference = populations["vmapped"]
    for mode, population in populations.items():
        expected = "groups" if mode in (2, 3) else mode
        assert population[0].history["population_mode"] == expected
        for member, same in zip(population, reference, strict=True):
            assert member.config.train.learning_rate == same.config.train.learning_rate
            np.testing.assert_allclose(
                member.params["mean"], same.params["mean"], rtol=1e-5, atol=1e-6
            )
            np.testing.assert_allclose(
                member.history["loss"], same.history["loss"], rtol=1e-5, atol=1e-6
            )
    assert [int(p[0].history["group_size"]) for p in populations.values()] == [4, 1, 2, 3]


def test_concurrent_streams_give_the_same_members(populations, trials, tmp_path, monkeypatch):
    """Three streams (parts of 2, 1 and 1 members, each run by its own host thread) whatever
    this machine's cores."""
    monkeypatch.setattr(grouping, "host_cores", lambda: 3)
    grid = {"train.learning_rate": [0.02, 0.05]}
    population = lj.sweep(toy_config("concurrent"), trials, seeds=(0, 1), grid=grid,
                          out=tmp_path / "run", progress=False)  # fmt: skip
    with open(tmp_path / "run" / "population.json") as file:
        record = json.load(file)
    assert (record["mode"], record["group_size"], record["streams"]) == ("concurrent", 1, 3)
    for member, same in zip(population, populations["sequential"], strict=True):
        assert member.history["population_mode"] == "concurrent"
        assert member.config.train.learning_rate == same.config.train.learning_rate
        np.testing.assert_allclose(member.params["mean"], same.params["mean"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            member.history["loss"], same.history["loss"], rtol=1e-5, atol=1e-6
        )


def test_a_population_equals_its_members_fitted_one_by_one(populations, trials):
    for member in populations[2]:
        alone = lj.fit(member.config, trials, seed=int(member.history["seed"]), progress=False)
        np.testing.assert_allclose(
            member.params["mean"], alone.params["mean"], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            member.history["loss"], alone.history["loss"], rtol=1e-5, atol=1e-6
        )


def test_the_choice_is_recorded_in_the_run_folder(trials, tmp_path):
    population = lj.sweep(
        toy_config("sequential"), trials, seeds=SEEDS, out=tmp_path / "run", progress=False
    )
    with open(tmp_path / "run" / "population.json") as file:
        record = json.load(file)
    assert record["mode"] == "sequential" and record["group_size"] == 1
    assert record["platform"] == jax.devices()[0].platform
    assert record["sequential_flops"] == grouping.SEQUENTIAL_FLOPS
    loaded = lj.load_run(tmp_path / "run")
    assert loaded[0].history["population_mode"] == population[0].history["population_mode"]

    auto = lj.sweep(toy_config("auto"), trials, seeds=SEEDS, out=tmp_path / "auto", progress=False)
    with open(tmp_path / "auto" / "population.json") as file:
        record = json.load(file)
    if jax.devices()[0].platform == "cpu":  # the toy's step: a handful of flops
        assert record["member_step_flops"] < grouping.SEQUENTIAL_FLOPS
    assert record["mode"] == "vmapped" and record["group_size"] == len(SEEDS)
    assert auto[0].history["population_mode"] == "vmapped"


def test_the_cost_rule_counts_scan_bodies_times_their_length():
    def step(a, x):
        def body(carry, _):
            return carry @ a, None

        return jax.lax.scan(body, x, None, length=10)[0]

    flops = grouping.member_step_flops(step, jnp.ones((8, 8)), jnp.ones((4, 8)))
    assert flops == 10 * 2 * 4 * 8 * 8
    cpu = jax.devices("cpu")[:1]
    big = grouping.choose("auto", 8, cpu, lambda: 10 * grouping.SEQUENTIAL_FLOPS, cores=1)
    small = grouping.choose("auto", 8, cpu, lambda: grouping.SEQUENTIAL_FLOPS / 10, cores=4)
    assert (big.mode, big.group_size, big.streams) == ("sequential", 1, 1)
    assert (small.mode, small.group_size, small.streams) == ("vmapped", 8, 1)
    assert grouping.choose(16, 8, cpu, lambda: 0.0).mode == "vmapped"


def test_a_large_model_on_several_cores_runs_one_stream_per_core():
    cpu = jax.devices("cpu")[:1]
    big = lambda: 10 * grouping.SEQUENTIAL_FLOPS  # noqa: E731
    for size, cores, streams in ((8, 2, 2), (3, 4, 3), (1, 4, 1)):
        chosen = grouping.choose("auto", size, cpu, big, cores=cores)
        assert chosen.streams == streams and chosen.group_size == 1
        assert chosen.mode == ("concurrent" if streams > 1 else "sequential")
    assert grouping.choose("concurrent", 8, cpu, big, cores=3).streams == 3
    assert grouping.choose("sequential", 8, cpu, big, cores=3).streams == 1
    assert grouping.choose("auto", 8, cpu * 2, big, cores=3).streams == 1  # sharded instead


@pytest.mark.parametrize("value", ["fast", 0, -2, 1.5, True, None])
def test_bad_population_modes_are_refused(value):
    with pytest.raises(ValueError, match="population_mode"):
        TrainConfig(population_mode=value)


def test_kill_and_resume_in_groups(trials, tmp_path, monkeypatch):
    config = toy_config(2)
    save = Checkpoints.save

    def save_then_kill(self, step, state, record):
        save(self, step, state, record)
        if step == 20:
            raise KeyboardInterrupt  # as a kill after the checkpoint of step 20

    with monkeypatch.context() as patch:
        patch.setattr(Checkpoints, "save", save_then_kill)
        with pytest.raises(KeyboardInterrupt):
            lj.sweep(config, trials, seeds=SEEDS, out=tmp_path / "run", progress=False)
    # the mode is left out of the run's hash: the run resumes in another layout too
    resumed = lj.sweep(
        toy_config("sequential"), trials, seeds=SEEDS, out=tmp_path / "run", progress=False
    )
    straight = lj.sweep(config, trials, seeds=SEEDS, progress=False)
    for member, same in zip(resumed, straight, strict=True):
        np.testing.assert_array_equal(member.history["step"], [10, 20, 30, 40])
        np.testing.assert_allclose(member.params["mean"], same.params["mean"], rtol=1e-5, atol=1e-6)
    assert resumed[0].history["population_mode"] == "sequential"


def test_the_command_line_sets_a_group_size_or_a_named_mode():
    """`--set train.population_mode=2` (an int in a `str | int` field) and `=sequential`."""
    from latentjax.configs import parse_assignments, update_config

    config = TrainConfig()
    for text, expected in (("2", 2), ("sequential", "sequential")):
        changes = parse_assignments([f"population_mode={text}"])
        assert update_config(config, changes).population_mode == expected
    with pytest.raises(ValueError, match="population_mode"):
        update_config(config, parse_assignments(["population_mode=0"]))
    with pytest.raises(ValueError, match="learning_rate"):  # other fields keep their kind
        update_config(config, parse_assignments(["learning_rate=fast"]))
