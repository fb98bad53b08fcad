"""`lj.sweep` over any Config field: knobs vary inside one compiled population, every other
field forms its own compiled group; results in the documented order; `lj.best` selects."""

import dataclasses

import numpy as np
import pytest
import train_toy as toy

import latentjax as lj


def test_structural_and_knob_fields_in_one_grid_equal_separate_fits(tmp_path):
    trials = toy.make_trials()
    config = toy.Config()
    grid = {"l2": [0.0, 0.5], "train.batch_size": [4, 8]}  # a knob and a structural field
    population = lj.sweep(config, trials, seeds=(0, 1), grid=grid, out=tmp_path, progress=False)
    assert len(population) == 8
    expected = [
        (seed, l2, batch) for seed in (0, 1) for l2 in (0.0, 0.5) for batch in (4, 8)
    ]  # seeds outermost, then the grid's combinations in the order of its keys
    for member, (seed, l2, batch) in zip(population, expected, strict=True):
        assert (int(member.history["seed"]), member.config.l2) == (seed, l2)
        assert member.config.train.batch_size == batch
        alone = lj.fit(member.config, trials, seed=seed, progress=False)
        np.testing.assert_allclose(member.params["mean"], alone.params["mean"], rtol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["group-0", "group-1", "sweep.json"]

    loaded = lj.load_run(tmp_path)
    for a, b in zip(loaded, population, strict=True):
        assert a.config == b.config
        np.testing.assert_array_equal(a.params["mean"], b.params["mean"])
    again = lj.sweep(config, trials, seeds=(0, 1), grid=grid, out=tmp_path, progress=False)
    np.testing.assert_array_equal(again[-1].params["mean"], population[-1].params["mean"])


def test_grid_fields_are_checked():
    trials = toy.make_trials()
    with pytest.raises(ValueError, match="'latent_dim' is not a field of Config"):
        lj.sweep(toy.Config(), trials, grid={"latent_dim": [1, 2]}, progress=False)
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int"):
        lj.sweep(toy.Config(), trials, grid={"train.chunk_size": [0]}, progress=False)
    with pytest.raises(ValueError, match="does not use 'train.learning_rate'"):
        lj.sweep(lj.models.lds.Config(), trials, grid={"train.learning_rate": [1e-3, 1e-2]})
    pbt = lj.train.PBTConfig()
    with pytest.raises(ValueError, match="not knobs"):
        lj.sweep(toy.Config(), trials, grid={"l2": [0, 1], "train.batch_size": [4, 8]}, pbt=pbt)


def test_latent_dim_sweep_picks_the_true_dimension_by_held_out_likelihood():
    data = lj.datasets.lds(seed=0, num_trials=40, num_bins=50)  # 4 latents, 30 neurons
    assert data.truth["latents"].shape[-1] == 4
    train, valid = lj.data.split(data.trials, (0.75, 0.25), seed=0)
    dims = [2, 4, 6]  # one compiled group each
    population = lj.sweep(
        lj.models.lds.Config(), train, valid=valid, grid={"latent_dim": dims}, steps=50,
        progress=False,
    )  # fmt: skip
    assert [m.config.latent_dim for m in population] == dims
    scores = [float(np.nanmin(m.history["valid_loss"])) for m in population]
    assert lj.best(population).config.latent_dim == 4, scores
    assert scores[0] > scores[1]  # too few latents cost held-out likelihood
    with pytest.raises(ValueError, match="no 'valid_loss'"):
        lj.best([dataclasses.replace(population[0], history={"loss": np.ones(2)})])
