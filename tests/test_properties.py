"""Property tests (hypothesis) of input validation: `lj.Trials` and the metrics, given valid
inputs with one argument spoilt (a NaN or Inf somewhere, a wrong shape or dtype, an odd mask,
a bad scalar), either validate, giving finite results, or raise a `ValueError` that names the
spoilt argument; no other exception, and no warning (such as a silent complex cast)."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import latentjax as lj
from latentjax import metrics

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)

ARRAY_SPOILS = (
    "nan",
    "inf",
    "-inf",
    "negative",
    "fraction",
    "rank",
    "size",
    "empty",
    "complex",
    "text",
    "ragged",
    "int8",
    "bool",
)
MASK_SPOILS = ("rank", "size", "int", "two", "nan", "text", "none_observed", "random")
RESHAPING = ("rank", "size", "empty")
SCALAR_SPOILS = (np.nan, np.inf, -np.inf, -1.0, 0.0, "x", None, 1.5, True)


def spoil_array(draw, array: np.ndarray) -> tuple[object, str]:
    """`array` (float) with one drawn defect, and the defect's name."""
    kind = draw(st.sampled_from(ARRAY_SPOILS))
    return _spoilt(draw, array, kind), kind


def _spoilt(draw, array: np.ndarray, kind: str) -> object:
    index = tuple(draw(st.integers(0, n - 1)) for n in array.shape)
    spoilt = array.astype(np.float64)
    if kind in ("nan", "inf", "-inf", "negative", "fraction"):
        spoilt[index] = {
            "nan": np.nan,
            "inf": np.inf,
            "-inf": -np.inf,
            "negative": -1.0,
            "fraction": 0.5,
        }[kind]
        return spoilt
    if kind == "rank":
        return spoilt[..., 0] if draw(st.booleans()) else spoilt[..., None]
    if kind == "size":
        axis = draw(st.integers(0, array.ndim - 1))
        return np.concatenate([spoilt, spoilt.take([0], axis=axis)], axis=axis)
    if kind == "empty":
        return spoilt[..., :0]
    if kind == "complex":
        return spoilt + 1j
    if kind == "text":
        return spoilt.astype(str)
    if kind == "ragged":
        return [list(spoilt.reshape(-1)), [1.0]]
    return spoilt.astype(np.int8 if kind == "int8" else bool)


def spoil_mask(draw, mask: np.ndarray) -> object:
    kind = draw(st.sampled_from(MASK_SPOILS))
    if kind == "rank":
        return mask[..., None]
    if kind == "size":
        return mask[:, 1:]
    if kind == "int":
        return mask.astype(np.int64)
    if kind == "two":
        return mask.astype(np.int64) * 2
    if kind == "nan":
        spoilt = mask.astype(np.float64)
        spoilt[0, 0] = np.nan
        return spoilt
    if kind == "text":
        return mask.astype(str)
    if kind == "none_observed":
        return np.zeros_like(mask)
    return draw(
        st.lists(st.booleans(), min_size=mask.size, max_size=mask.size).map(
            lambda values: np.reshape(values, mask.shape)
        )
    )


def call(function, kwargs: dict, spoilt: str, kind: str):
    """`function(**kwargs)`, or None after a ValueError naming `spoilt` (or, for a wrong
    shape, the argument it disagrees with); any warning fails."""
    named = sorted(kwargs) if kind in RESHAPING else [spoilt]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return function(**kwargs)
        except ValueError as error:
            assert any(f"`{name}`" in str(error) for name in named), (spoilt, str(error))
            return None


@st.composite
def trials_case(draw):
    num_trials, num_bins, num_neurons = (draw(st.integers(1, 4)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = (num_trials, num_bins, num_neurons)
    kwargs = {
        "spikes": rng.poisson(2.0, shape),
        "dt": 0.01,
        "times": np.cumsum(rng.uniform(0.01, 0.02, (num_trials, num_bins)), axis=1),
        "mask": rng.random((num_trials, num_bins)) < 0.8,
        "behavior": rng.normal(size=(num_trials, num_bins, 2)),
        "conditions": rng.integers(0, 3, num_trials),
        "continuous": draw(st.booleans()),
    }
    field = draw(st.sampled_from(["spikes", "dt", "times", "mask", "behavior", "conditions"]))
    kind = field
    if field == "dt":
        kwargs["dt"] = draw(st.sampled_from(SCALAR_SPOILS))
    elif field == "mask":
        kwargs["mask"] = spoil_mask(draw, kwargs["mask"])
    else:
        kwargs[field], kind = spoil_array(draw, kwargs[field])
    return kwargs, field, kind


@SETTINGS
@given(trials_case())
def test_trials_validate_or_name_the_field(case):
    kwargs, field, kind = case
    trials = call(lj.Trials, kwargs, field, kind)
    if trials is not None:
        observed = trials.mask[..., None]
        assert trials.mask.dtype == bool and trials.mask.shape == trials.shape[:2]
        assert np.isfinite(trials.spikes[np.broadcast_to(observed, trials.shape)]).all()
        assert np.isfinite(trials.times[trials.mask]).all()
        assert np.isfinite(trials.behavior[np.broadcast_to(observed, trials.behavior.shape)]).all()
        assert trials.conditions.dtype.kind in "iu"
        assert all(name == name for name in trials.condition_names or ())  # no NaN label


def metric_inputs(draw):
    num_trials, num_bins, num_neurons = draw(st.integers(4, 6)), draw(st.integers(3, 5)), 2
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = (num_trials, num_bins, num_neurons)
    mask = rng.random(shape[:2]) < 0.8
    mask[:, 0] = True  # every trial and condition observed
    spikes = rng.poisson(2.0, shape).astype(np.float64)
    spikes[0, 0] += 1.0  # some spike is observed
    rates = rng.gamma(2.0, size=shape)
    return rng, shape, mask, spikes, rates


@st.composite
def metric_case(draw):
    rng, shape, mask, spikes, rates = metric_inputs(draw)
    name = draw(st.sampled_from(["bits_per_spike", "co_bps", "psth_r2", "rate_r2", "latent_r2"]))
    if name in ("bits_per_spike", "co_bps"):
        prefix = "" if name == "bits_per_spike" else "_heldout"
        function = getattr(metrics, name)
        kwargs = {f"rates{prefix}": rates, f"spikes{prefix}": spikes, "mask": mask}
    elif name == "psth_r2":
        function = metrics.psth_r2
        conditions = np.arange(shape[0]) % 2
        kwargs = {
            "rates": rates,
            "spikes": spikes,
            "conditions": conditions,
            "dt": 0.01,
            "kernel_sd": 0.02,
            "mask": mask,
        }
    elif name == "rate_r2":
        function = metrics.rate_r2
        kwargs = {"true_rates": rates, "est_rates": rates + rng.normal(size=shape), "mask": mask}
    else:
        function = metrics.latent_r2
        true = rng.normal(size=shape)
        kwargs = {
            "true_latents": true,
            "est_latents": true @ rng.normal(size=(2, 3)),
            "train_fraction": 0.5,
            "seed": 0,
            "mask": mask,
        }
    field = draw(st.sampled_from(sorted(kwargs)))
    value, kind = kwargs[field], field
    if field == "mask":
        kwargs[field] = spoil_mask(draw, value)
    elif isinstance(value, np.ndarray):
        kwargs[field], kind = spoil_array(draw, value)
    else:
        kwargs[field] = draw(st.sampled_from(SCALAR_SPOILS))
    return function, kwargs, field, kind


@SETTINGS
@given(metric_case())
def test_metrics_validate_or_name_the_argument(case):
    function, kwargs, field, kind = case
    result = call(function, kwargs, field, kind)
    if result is not None:
        score = result.mean if isinstance(result, metrics.LatentR2) else result
        assert isinstance(score, float) and np.isfinite(score), (field, score)


@pytest.mark.parametrize("value", [np.array([1.0 + 1j, 2.0]), np.array(["a", "b"])])
def test_metrics_refuse_complex_and_text(value):
    with pytest.raises(ValueError, match="`true_rates` must be"):
        metrics.rate_r2(np.broadcast_to(value, (2, 2, 2)), np.ones((2, 2, 2)))
