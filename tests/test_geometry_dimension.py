"""Participation ratio, variance counts and TwoNN against known dimensions."""

import numpy as np
import pytest
from sklearn.datasets import make_swiss_roll

from latentjax import geometry


def _orthonormal_embedding(rng, low, high=10):
    return np.linalg.qr(rng.normal(size=(high, high)))[0][:low]


def test_participation_ratio_of_isotropic_embedding():
    rng = np.random.default_rng(0)
    for dims in (2, 4, 7):
        points = rng.normal(size=(3000, dims)) @ _orthonormal_embedding(rng, dims, 20)
        assert geometry.participation_ratio(points) == pytest.approx(dims, rel=0.1)


def test_participation_ratio_and_variance_count_from_known_spectrum():
    rng = np.random.default_rng(1)
    scales = np.array([3.0, 2.0, 1.0, 0.5])
    points = (rng.normal(size=(20000, 4)) / rng.normal(size=(20000, 4)).std(0)) * scales
    variances = scales**2
    expected = variances.sum() ** 2 / (variances**2).sum()
    assert geometry.participation_ratio(points) == pytest.approx(expected, rel=0.05)
    # cumulative fractions: 0.632, 0.912, 0.982, 1.0
    assert geometry.n_components_for_variance(points, 0.6) == 1
    assert geometry.n_components_for_variance(points, 0.9) == 2
    assert geometry.n_components_for_variance(points, 0.95) == 3
    assert geometry.n_components_for_variance(points, 1.0) == 4


@pytest.mark.parametrize("manifold", ["swiss_roll", "sphere"])
def test_twonn_on_curved_two_dimensional_manifolds(manifold):
    rng = np.random.default_rng(2)
    if manifold == "swiss_roll":
        points, _ = make_swiss_roll(3000, random_state=0)
    else:
        points = rng.normal(size=(3000, 3))
        points /= np.linalg.norm(points, axis=1, keepdims=True)
    embedded = points @ _orthonormal_embedding(rng, 3)
    assert geometry.twonn_dimension(embedded) == pytest.approx(2.0, rel=0.15)


def test_twonn_of_a_five_dimensional_cube():
    points = np.random.default_rng(3).uniform(size=(4000, 5))
    assert geometry.twonn_dimension(points) == pytest.approx(5.0, rel=0.15)


def test_dimension_validation():
    with pytest.raises(ValueError, match="fraction"):
        geometry.n_components_for_variance(np.eye(4), 1.5)
    with pytest.raises(ValueError, match="distinct"):
        geometry.twonn_dimension(np.zeros((10, 2)))
