"""`Trials`: validation names the field, indexing and regions select the right data, pytree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import latentjax as lj


def make(**overrides):
    rng = np.random.default_rng(0)
    fields = dict(
        spikes=rng.poisson(2.0, (6, 20, 5)),
        dt=0.01,
        behavior=rng.normal(size=(6, 20, 2)),
        regions=["M1", "M1", "PMd", "PMd", "PMd"],
        conditions=[0, 1, 2, 0, 1, 2],
        neuron_ids=[11, 12, 21, 22, 23],
    )
    fields.update(overrides)
    spikes = fields.pop("spikes")
    dt = fields.pop("dt")
    return lj.Trials(spikes, dt, **fields)


def test_defaults():
    trials = make()
    assert trials.shape == (6, 20, 5)
    np.testing.assert_allclose(trials.times[3], np.arange(20) * 0.01)
    assert trials.mask.dtype == bool and trials.mask.all()
    assert trials.region_names == ("M1", "PMd")


BAD_CASES = [
    ("spikes", dict(spikes=np.zeros((20, 5)))),
    ("spikes", dict(spikes=np.zeros((0, 20, 5)))),
    ("spikes", dict(spikes=np.full((6, 20, 5), np.nan))),
    ("spikes", dict(spikes=np.full((6, 20, 5), np.inf))),
    ("spikes", dict(spikes=-np.ones((6, 20, 5)))),
    ("spikes", dict(spikes=np.full((6, 20, 5), 0.5))),
    ("spikes", dict(spikes=np.full((6, 20, 5), "a"))),
    ("dt", dict(dt=0.0)),
    ("dt", dict(dt=-0.01)),
    ("dt", dict(dt="fast")),
    ("times", dict(times=np.zeros((6, 20)))),
    ("times", dict(times=np.tile(np.arange(20.0)[::-1], (6, 1)))),
    ("times", dict(times=np.zeros((6, 19)))),
    ("mask", dict(mask=np.ones((6, 21), bool))),
    ("mask", dict(mask=np.full((6, 20), 2))),
    ("behavior", dict(behavior=np.zeros((6, 19, 2)))),
    ("behavior", dict(behavior=np.zeros((6, 20)))),
    ("behavior", dict(behavior=np.full((6, 20, 2), np.nan))),
    ("regions", dict(regions=["M1"] * 4)),
    ("neuron_ids", dict(neuron_ids=[1, 2])),
    ("conditions", dict(conditions=[0, 1])),
]


@pytest.mark.parametrize(
    "field,bad", BAD_CASES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_CASES)]
)
def test_validation_names_the_field(field, bad):
    with pytest.raises(ValueError, match=f"`{field}`"):
        make(**bad)


def test_continuous_allows_negative_and_fractional_values():
    trials = make(spikes=np.random.default_rng(1).normal(size=(6, 20, 5)), continuous=True)
    assert trials.continuous and (trials.spikes < 0).any()
    with pytest.raises(ValueError, match="`spikes`"):
        make(spikes=np.full((6, 20, 5), np.nan), continuous=True)


def test_missing_bins_may_hold_nan_and_are_zeroed():
    spikes = np.ones((6, 20, 5))
    spikes[2, 5:] = np.nan
    mask = np.ones((6, 20), bool)
    mask[2, 5:] = False
    times = np.tile(np.arange(20) * 0.01, (6, 1))
    times[2, 5:] = np.nan  # padding: times there are ignored too
    trials = make(spikes=spikes, mask=mask, times=times)
    assert np.isfinite(trials.spikes).all() and trials.spikes[2, 5:].sum() == 0
    # times need only increase where observed
    times[2, 5:] = 0.0
    make(spikes=spikes, mask=mask, times=times)


def test_indexing_selects_trials_and_keeps_static_fields():
    trials = make()
    sub = trials[[4, 1]]
    np.testing.assert_array_equal(sub.spikes, trials.spikes[[4, 1]])
    np.testing.assert_array_equal(sub.behavior, trials.behavior[[4, 1]])
    np.testing.assert_array_equal(sub.conditions, [1, 1])
    assert sub.regions == trials.regions and sub.dt == trials.dt
    assert trials[2].shape == (1, 20, 5)
    assert trials[1:3].num_trials == 2
    assert trials[np.arange(6) % 2 == 0].num_trials == 3
    with pytest.raises(ValueError, match="no trial"):
        trials[[]]


def test_region_selects_its_neurons():
    trials = make()
    pmd = trials.region("PMd")
    np.testing.assert_array_equal(pmd.spikes, trials.spikes[:, :, 2:])
    assert pmd.neuron_ids == (21, 22, 23) and pmd.regions == ("PMd",) * 3
    with pytest.raises(ValueError, match="no region 'V1'"):
        trials.region("V1")
    with pytest.raises(ValueError, match="no `regions`"):
        make(regions=None).region("M1")


def test_string_conditions_become_codes():
    trials = make(conditions=["b", "a", "b", "c", "a", "a"])
    assert trials.condition_names == ("a", "b", "c")
    np.testing.assert_array_equal(trials.conditions, [1, 0, 1, 2, 0, 0])
    assert trials[[0, 3]].condition_names == ("a", "b", "c")


def test_pytree_round_trip_and_jit():
    trials = make()
    leaves, treedef = jax.tree_util.tree_flatten(trials)
    assert len(leaves) == 5  # spikes, times, mask, behavior, conditions
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.regions == trials.regions and rebuilt.dt == trials.dt

    @jax.jit
    def total_observed(t):
        return jnp.sum(t.spikes * t.mask[..., None]) * t.dt

    np.testing.assert_allclose(total_observed(trials), trials.spikes.sum() * 0.01, rtol=1e-6)
    per_trial = jax.vmap(lambda s: s.sum())(trials.spikes)
    np.testing.assert_array_equal(per_trial, trials.spikes.sum(axis=(1, 2)))


def test_replace_revalidates():
    trials = make()
    assert trials.replace(dt=0.005).dt == 0.005
    with pytest.raises(ValueError, match="`dt`"):
        trials.replace(dt=-1)
