"""Persistent homology and Betti numbers against shapes of known topology."""

import matplotlib
import numpy as np
import pytest
from scipy.spatial.distance import cdist

import latentjax as lj
from latentjax import geometry

matplotlib.use("Agg")


def _noisy_ring(rng, n=1000):
    angle = rng.uniform(0, 2 * np.pi, n)
    return np.c_[np.cos(angle), np.sin(angle)] + 0.1 * rng.normal(size=(n, 2))


def _torus(rng, n=3000, major=2.0, minor=1.0):
    u, v = rng.uniform(0, 2 * np.pi, (2, n))
    radius = major + minor * np.cos(v)
    points = np.c_[radius * np.cos(u), radius * np.sin(u), minor * np.sin(v)]
    return points + 0.05 * rng.normal(size=points.shape)


def _sphere(rng, n=2000):
    points = rng.normal(size=(n, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points + 0.05 * rng.normal(size=points.shape)


def _two_blobs(rng, n=600):
    points = 0.3 * rng.normal(size=(n, 3))
    points[: n // 2, 0] += 4.0
    return points


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    ("shape", "maxdim", "n_points", "expected"),
    [
        (_noisy_ring, 1, 200, (1, 1)),
        (_torus, 2, 200, (1, 2, 1)),
        (_sphere, 2, 150, (1, 0, 1)),
        (lambda rng: rng.uniform(size=(500, 3)), 2, 150, (1, 0, 0)),
        (_two_blobs, 1, 200, (2, 0)),
    ],
    ids=["ring", "torus", "sphere", "cube", "two_blobs"],
)
def test_betti_numbers_of_known_shapes(shape, maxdim, n_points, expected, seed):
    points = shape(np.random.default_rng(seed))
    assert geometry.betti(points, maxdim=maxdim, n_points=n_points, seed=seed) == expected


def test_circle_h1_dies_at_inscribed_triangle_side():
    """Rips H1 of a dense circle of radius r is born near 0 and dies at √3 r."""
    angle = np.linspace(0, 2 * np.pi, 240, endpoint=False)
    diagrams = geometry.persistence(3.0 * np.c_[np.cos(angle), np.sin(angle)])
    longest = diagrams[1][np.argmax(np.diff(diagrams[1], axis=1))]
    np.testing.assert_allclose(longest[1], 3.0 * np.sqrt(3), rtol=0.01)
    assert np.isinf(diagrams[0][:, 1]).sum() == 1


def test_greedy_landmarks_pick_the_farthest_point_each_time():
    points = np.random.default_rng(0).normal(size=(300, 4))
    chosen = geometry.greedy_landmarks(points, 25, seed=5)
    assert len(set(chosen.tolist())) == 25
    for position in range(1, 25):
        distance_to_chosen = cdist(points, points[chosen[:position]]).min(axis=1)
        assert distance_to_chosen[chosen[position]] == pytest.approx(distance_to_chosen.max())


def test_persistence_memory_estimate_refuses_what_does_not_fit():
    points = np.random.default_rng(0).normal(size=(3000, 3))
    with pytest.raises(ValueError, match="n_points"):
        geometry.persistence(points, maxdim=2)
    assert geometry.persistence_memory_bytes(3000, 2) > 8 * 2**30
    assert geometry.persistence_memory_bytes(300, 2) < 2**30
    assert geometry.persistence_memory_bytes(5000, 1) < 2**30


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"maxdim": -1}, "maxdim"), ({"n_points": 0}, "n_points")]
)
def test_persistence_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        geometry.persistence(np.zeros((10, 2)) + np.arange(10)[:, None], **kwargs)


def test_long_bars_gap_rule():
    diagrams = [
        np.array([[0, 0.1], [0, 0.11], [0, np.inf]]),
        np.array([[0.1, 0.2], [0.1, 2.0], [0.2, 0.25]]),
    ]
    masks = geometry.long_bars(diagrams)
    assert masks[0].tolist() == [False, False, True]
    assert masks[1].tolist() == [False, True, False]
    smooth = [np.array([[0, np.inf]]), np.array([[0, 1.0], [0, 0.9], [0, 0.8], [0, 0.7]])]
    assert geometry.long_bars(smooth)[1].sum() == 0


def test_ring_dataset_rates_have_a_loop():
    rates = np.asarray(lj.datasets.ring(seed=0, num_trials=20, num_bins=100).truth["rates"])
    coordinates = geometry.pca(rates, 3).coordinates
    assert geometry.betti(coordinates, n_points=200) == (1, 1)


@pytest.mark.slow
def test_torus_dataset_rates_are_a_torus():
    """Square-root rates (variance stabilised) projected on 10 PCs."""
    dataset = lj.datasets.torus(seed=0, num_trials=200, num_bins=50)
    coordinates = geometry.pca(np.sqrt(np.asarray(dataset.truth["rates"])), 10).coordinates
    assert geometry.betti(coordinates, maxdim=2, n_points=250) == (1, 2, 1)


def test_diagram_and_barcode_plots_return_figures():
    import matplotlib.pyplot as plt

    from latentjax.plot import plot_barcode, plot_diagram

    diagrams = geometry.persistence(_noisy_ring(np.random.default_rng(0), 200))
    for plot in (plot_diagram, plot_barcode):
        figure = plot(diagrams)
        assert isinstance(figure, matplotlib.figure.Figure)
        assert figure.axes[0].has_data()
        plt.close(figure)
    figure, ax = plt.subplots()
    assert plot_barcode(diagrams, ax=ax) is figure
    plt.close(figure)
    with pytest.raises(ValueError, match="diagrams"):
        plot_diagram([])
