"""Flow-field geometry (`lj.geometry.flowfield`): systems with different dynamics over the same
states are told apart, where Procrustes distance on the raw latents is not (issue 25)."""

import numpy as np
import pytest

import latentjax as lj

DT = 0.05


def _plane_flow(kind: str, seed: int, trials: int = 40, bins: int = 20, noise: float = 0.002):
    """Trajectories `[trials, bins, 3]` of a rotation or a saddle on a plane in 3-D, from
    initial states uniform in a square (drawn from `seed`), exact solutions plus noise."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(-1, 1, (trials, 1, 2))
    t = (np.arange(bins) * DT)[None, :, None]
    a, b = start[..., :1], start[..., 1:]
    if kind == "rotation":
        plane = np.concatenate([np.cos(t) * a - np.sin(t) * b, np.sin(t) * a + np.cos(t) * b], -1)
    else:
        plane = np.concatenate([np.exp(t) * a, np.exp(-t) * b], -1)
    plane = plane + noise * np.random.default_rng(seed + 100).normal(size=plane.shape)
    basis = np.linalg.qr(np.random.default_rng(99).normal(size=(3, 3)))[0][:, :2]
    return plane @ basis.T


def test_flowfield_tells_rotation_from_saddle_better_than_procrustes():
    """Each system twice (initial states from seeds 0 and 1); each saddle starts where a
    rotation starts, so their states nearly coincide. Separation = smallest distance between
    systems / largest distance within a system."""
    conditions = [_plane_flow(kind, seed) for kind in ("rotation", "saddle") for seed in (0, 1)]
    result = lj.geometry.flowfield(conditions, dt=DT, manifold_dim=2)
    procrustes = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            if i != j:
                procrustes[i, j] = lj.geometry.procrustes(
                    conditions[i].reshape(-1, 3), conditions[j].reshape(-1, 3)
                ).distance
    within, between = [(0, 1), (2, 3)], [(0, 2), (0, 3), (1, 2), (1, 3)]

    def separation(d):
        return min(d[i, j] for i, j in between) / max(d[i, j] for i, j in within)

    assert separation(result.distances) > 2.0
    assert separation(procrustes) < 1.0
    assert separation(result.distances) > 5 * separation(procrustes)
    # the embedding of the conditions puts each system's two samples together
    first = result.embedding[:, 0]
    assert np.sign(first[0]) == np.sign(first[1]) != np.sign(first[2]) == np.sign(first[3])


def test_flow_features_match_the_analytic_jacobians():
    """Noise-free: rotation has vorticity 1, no strain or divergence; the saddle diag(1, -1)
    has strain 1, no vorticity or divergence (finite differences: small errors)."""
    for kind, want in (("rotation", (0.0, 1.0, 0.0)), ("saddle", (0.0, 0.0, 1.0))):
        x = _plane_flow(kind, 0, noise=0.0)
        states = 0.5 * (x[:, 1:] + x[:, :-1]).reshape(-1, 3)
        velocities = (np.diff(x, axis=1) / DT).reshape(-1, 3)
        features = lj.geometry.flow_features(states, velocities, manifold_dim=2)
        np.testing.assert_allclose(np.median(features[:, 1:], axis=0), want, atol=0.05)


def test_flowfield_errors_name_the_argument():
    x = _plane_flow("rotation", 0)
    with pytest.raises(ValueError, match="conditions"):
        lj.geometry.flowfield([x])
    with pytest.raises(ValueError, match="dt"):
        lj.geometry.flowfield([x, x], dt=0.0)
    with pytest.raises(ValueError, match="manifold_dim"):
        lj.geometry.flowfield([x, x], manifold_dim=4)
    with pytest.raises(ValueError, match="n_neighbors"):
        lj.geometry.flow_features(x[0], x[0], n_neighbors=100)
