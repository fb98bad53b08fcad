"""Embeddings and jPCA: layouts, determinism, transforms, planted rotation planes."""

import numpy as np
import pytest
from scipy.linalg import subspace_angles

import latentjax as lj
from latentjax import geometry


def _points(seed=0, shape=(6, 25, 5)):
    return np.random.default_rng(seed).normal(size=shape)


def test_pca_layout_variance_and_transform():
    X = _points() * np.array([5.0, 3.0, 2.0, 1.0, 0.5])
    emb = geometry.pca(X, 3)
    assert emb.coordinates.shape == (6, 25, 3)
    flat = X.reshape(-1, 5)
    eigenvalues = np.linalg.eigvalsh(np.cov(flat.T))[::-1]
    np.testing.assert_allclose(emb.explained_variance_ratio, eigenvalues[:3] / eigenvalues.sum())
    np.testing.assert_allclose(emb.transform(X), emb.coordinates, atol=1e-10)
    np.testing.assert_allclose(emb.transform(flat[:7]), emb.coordinates.reshape(-1, 3)[:7])


@pytest.mark.parametrize("method", ["isomap", "lle", "tsne"])
def test_nonlinear_embeddings_deterministic(method):
    X = _points(1, (4, 30, 3))
    tsne_options = {"seed": 3, "max_iter": 250, "perplexity": 10.0}
    options = {"isomap": {}, "lle": {"seed": 3}, "tsne": tsne_options}[method]
    first = getattr(geometry, method)(X, 2, **options)
    second = getattr(geometry, method)(X, 2, **options)
    assert first.coordinates.shape == (4, 30, 2)
    np.testing.assert_array_equal(first.coordinates, second.coordinates)
    assert (first.transform is None) == (method == "tsne")
    if first.transform is not None:
        assert first.transform(X[:1]).shape == (1, 30, 2)


def test_isomap_unrolls_a_circle_to_its_angle():
    angle = np.linspace(0, 1.5 * np.pi, 200)
    arc = np.c_[np.cos(angle), np.sin(angle), np.zeros_like(angle)]
    coordinate = geometry.isomap(arc, 1, n_neighbors=5).coordinates[:, 0]
    assert abs(np.corrcoef(coordinate, angle)[0, 1]) > 0.999


@pytest.mark.slow
def test_umap_deterministic_with_transform():
    X = _points(2, (200, 4))
    first, second = geometry.umap(X, 2, seed=1), geometry.umap(X, 2, seed=1)
    np.testing.assert_array_equal(first.coordinates, second.coordinates)
    assert first.transform(X[:5]).shape == (5, 2)


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.zeros(5), "`X` must be"),
        (np.full((4, 3), np.nan), "NaN"),
        (np.zeros((0, 3)), "empty"),
    ],
)
def test_embedding_rejects_bad_input(X, message):
    with pytest.raises(ValueError, match=message):
        geometry.pca(X, 1)


def test_pca_rejects_too_many_components():
    with pytest.raises(ValueError, match="n_components"):
        geometry.pca(_points(), 6)


def _planted_rotation(seed=0, omega=0.3, num_conditions=12, num_time=40, num_neurons=20):
    """Latents: a rotation at `omega` rad/bin in plane (0, 1) and pure decay in dims 2..5,
    embedded orthonormally in `num_neurons` neurons. Returns activity and the plane basis."""
    rng = np.random.default_rng(seed)
    rotation = np.array([[np.cos(omega), -np.sin(omega)], [np.sin(omega), np.cos(omega)]])
    step = np.eye(6)
    step[:2, :2] = rotation
    step[2:, 2:] = np.diag([0.97, 0.95, 0.93, 0.9])
    state = rng.normal(size=(num_conditions, 6)) * np.array([1, 1, 1.5, 1.5, 1.5, 1.5])
    latents = []
    for _ in range(num_time):
        latents.append(state)
        state = state @ step.T
    latents = np.stack(latents, axis=1)
    embedding = np.linalg.qr(rng.normal(size=(num_neurons, 6)))[0]
    activity = latents @ embedding.T + 0.01 * rng.normal(
        size=(num_conditions, num_time, num_neurons)
    )
    return activity, embedding[:, :2]


def test_jpca_recovers_planted_rotation_plane():
    activity, plane = _planted_rotation()
    emb = geometry.jpca(activity, 6, subtract_condition_mean=False)
    angles = np.degrees(subspace_angles(emb.info["axes"][:, :2], plane))
    print(f"principal angles to the planted plane: {angles}, r2 {emb.info['r2_skew']:.3f}")
    assert angles.max() < 10
    # The discrete rotation by 0.3 rad/bin is fitted as ds ≈ s M with forward differences:
    # the skew part of (R - I) has imaginary eigenvalue sin(0.3).
    np.testing.assert_allclose(emb.info["frequencies"][0], np.sin(0.3), rtol=0.05)
    assert emb.coordinates.shape == (12, 40, 6)
    np.testing.assert_allclose(emb.transform(activity), emb.coordinates, atol=1e-8)


def test_jpca_skew_fit_matches_bruteforce_least_squares():
    """The closed-form skew-symmetric fit equals a direct minimisation by scipy."""
    from scipy.optimize import minimize

    from latentjax.geometry.jpca import fit_skew_symmetric

    rng = np.random.default_rng(4)
    states, derivatives = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))

    def loss(upper):
        matrix = np.zeros((4, 4))
        matrix[np.triu_indices(4, 1)] = upper
        matrix = matrix - matrix.T
        return np.sum((derivatives - states @ matrix) ** 2)

    reference = minimize(loss, np.zeros(6), method="BFGS", options={"gtol": 1e-10}).x
    fitted = fit_skew_symmetric(states, derivatives)
    np.testing.assert_allclose(fitted[np.triu_indices(4, 1)], reference, atol=1e-5)
    np.testing.assert_allclose(fitted, -fitted.T)


def test_jpca_rejects_odd_components():
    with pytest.raises(ValueError, match="even"):
        geometry.jpca(_points(), 3)


def test_public_names():
    """Every name `lj.geometry` exports exists, is callable and documented with its shapes."""
    names = lj.geometry.__all__
    assert {"pca", "jpca", "umap", "tsne", "isomap", "lle", "betti", "fixed_points"} <= set(names)
    for name in names:
        function = getattr(lj.geometry, name)
        assert callable(function) and function.__doc__, name
    assert callable(lj.plot.plot_barcode) and lj.plot.plot_barcode.__doc__
