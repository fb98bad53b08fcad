"""Procrustes, CCA, CKA, DSA and behaviour decoding against independent references."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.spatial
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

from latentjax import geometry


def _random_orthogonal(rng, size):
    return np.linalg.qr(rng.normal(size=(size, size)))[0]


def test_procrustes_matches_scipy_and_recovers_similarity_transform():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    _, _, disparity = scipy.spatial.procrustes(Y, X)
    assert geometry.procrustes(X, Y).distance == pytest.approx(disparity)
    rotation = _random_orthogonal(rng, 3)
    target = 2.5 * X @ rotation + np.array([1.0, -2.0, 0.5])
    result = geometry.procrustes(X, target)
    assert result.distance == pytest.approx(0, abs=1e-12)
    np.testing.assert_allclose(result.aligned, target, atol=1e-10)
    np.testing.assert_allclose(result.rotation, rotation, atol=1e-10)
    assert result.scale == pytest.approx(2.5)


def test_cca_matches_generalised_eigenproblem():
    rng = np.random.default_rng(1)
    shared = rng.normal(size=(400, 2))
    X = np.c_[shared, rng.normal(size=(400, 2))] @ rng.normal(size=(4, 4))
    Y = np.c_[shared + 0.5 * rng.normal(size=(400, 2)), rng.normal(size=(400, 1))]
    result = geometry.cca(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    cxx, cyy, cxy = Xc.T @ Xc, Yc.T @ Yc, Xc.T @ Yc
    eigenvalues = scipy.linalg.eigh(cxy @ np.linalg.solve(cyy, cxy.T), cxx, eigvals_only=True)
    np.testing.assert_allclose(result.correlations, np.sqrt(eigenvalues[::-1][:3]), atol=1e-8)
    variates_x, variates_y = Xc @ result.x_weights, Yc @ result.y_weights
    np.testing.assert_allclose(
        np.corrcoef(variates_x.T, variates_y.T)[:3, 3:], np.diag(result.correlations), atol=1e-8
    )


def test_cka_matches_hsic_formula_and_invariances():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(60, 5)), rng.normal(size=(60, 3))
    centring = np.eye(60) - 1 / 60

    def hsic(K, L):
        return np.trace(K @ centring @ L @ centring)

    K, L = X @ X.T, Y @ Y.T
    expected = hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))
    assert geometry.cka(X, Y) == pytest.approx(expected)
    assert geometry.cka(X, 3 * X @ _random_orthogonal(rng, 5) + 1) == pytest.approx(1.0)


def _linear_trajectories(rng, step, num_trials=20, num_time=50, noise=0.05):
    state = rng.normal(size=(num_trials, step.shape[0]))
    trajectories = []
    for _ in range(num_time):
        trajectories.append(state)
        state = state @ step.T + noise * rng.normal(size=state.shape)
    return np.stack(trajectories, axis=1)


def _rotation(angle, decay=0.98):
    return decay * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def test_dsa_change_of_coordinates_beats_different_dynamics():
    rng = np.random.default_rng(3)
    X = _linear_trajectories(rng, _rotation(0.2))
    embedding = _random_orthogonal(rng, 6)[:2]
    same_system = _linear_trajectories(rng, _rotation(0.2)) @ embedding
    different = _linear_trajectories(rng, np.diag([0.95, 0.7]))
    options = {"n_delays": 3, "rank": 4, "num_steps": 300}
    close = geometry.dsa(X, same_system, **options).distance
    far = geometry.dsa(X, different, **options).distance
    print(f"DSA angular distance: change of coordinates {close:.3f}, different system {far:.3f}")
    assert close < 0.5 * far


def test_dsa_alignment_finds_planted_conjugacy():
    from latentjax.geometry.comparison import _align_dynamics

    rng = np.random.default_rng(4)
    source = rng.normal(size=(4, 4))
    conjugation = _random_orthogonal(rng, 4)
    if np.linalg.det(conjugation) > 0:
        conjugation[:, 0] *= -1  # a reflection: only the reflected starts can reach it
    starts = np.r_[np.zeros((1, 6)), rng.normal(size=(7, 6))]  # as dsa(n_starts=8)
    reflection = np.diag([-1.0, 1, 1, 1])
    cosine, rotation = _align_dynamics(
        jnp.asarray(conjugation @ source @ conjugation.T, jnp.float32),
        jnp.asarray(source, jnp.float32),
        jnp.asarray(np.r_[starts, starts], jnp.float32),
        jnp.asarray(np.stack([np.eye(4)] * 8 + [reflection] * 8), jnp.float32),
        0.05,
        300,  # the shapes and step count of the DSA test above: one compilation
    )
    assert float(cosine) == pytest.approx(1.0, abs=1e-4)
    rotated = np.asarray(rotation) @ source @ np.asarray(rotation).T
    np.testing.assert_allclose(rotated, conjugation @ source @ conjugation.T, atol=1e-2)


def test_decode_behavior_matches_manual_trial_kfold():
    rng = np.random.default_rng(5)
    coords = rng.normal(size=(12, 15, 3))
    behavior = coords @ rng.normal(size=(3, 2)) + 0.5 * rng.normal(size=(12, 15, 2))
    result = geometry.decode_behavior(coords, behavior, n_folds=4, alpha=2.0, seed=7)
    predictions = np.zeros_like(behavior)
    for train, test in KFold(4, shuffle=True, random_state=7).split(coords):
        model = Ridge(alpha=2.0).fit(coords[train].reshape(-1, 3), behavior[train].reshape(-1, 2))
        predictions[test] = model.predict(coords[test].reshape(-1, 3)).reshape(len(test), 15, 2)
    np.testing.assert_allclose(result.predictions, predictions)
    flat, flat_pred = behavior.reshape(-1, 2), predictions.reshape(-1, 2)
    r2 = 1 - ((flat - flat_pred) ** 2).sum(0) / ((flat - flat.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(result.r2_per_dim, r2)
    noise = geometry.decode_behavior(coords, rng.normal(size=(12, 15, 1)), n_folds=4)
    assert noise.r2 < 0.05 < result.r2


def test_comparison_validation():
    with pytest.raises(ValueError, match="same number of samples"):
        geometry.cka(np.zeros((5, 2)), np.zeros((6, 2)))
    with pytest.raises(ValueError, match="regularization"):
        column = np.arange(6.0)[:, None] ** 2
        geometry.cca(np.c_[column, 2 * column], np.random.default_rng(0).normal(size=(6, 2)))
    with pytest.raises(ValueError, match="score"):
        geometry.dsa(np.zeros((2, 20, 2)), np.zeros((2, 20, 2)), score="cosine")
    with pytest.raises(ValueError, match="mask"):
        geometry.decode_behavior(
            np.zeros((4, 5, 2)), np.zeros((4, 5, 1)), mask=np.ones((4, 4)), n_folds=2
        )
