"""Geometry on real recordings in ../shared/data (skipped when absent).

- Head-direction cells (Peyrache et al. 2015, Nat Neurosci; CRCNS th-1): wake activity lies
  on a ring whose angle is the head direction.
- Motor cortex PSTHs (Churchland et al. 2012, Nature): rotational dynamics (jPCA).
"""

import functools

import numpy as np
import pytest
import scipy.io
from conftest import SHARED_DATA
from scipy.ndimage import gaussian_filter1d

from latentjax import geometry

HEAD_DIRECTION = SHARED_DATA / "peyrache_hd" / "dataHD.mat"
CHURCHLAND = SHARED_DATA / "churchland2012" / "exampleData.mat"


def _load(path):
    if not path.exists():
        pytest.skip(f"real data not found: {path}")
    return scipy.io.loadmat(path)


@functools.cache
def _head_direction_points():
    """Square-root Gaussian-smoothed (100 ms) rates every 2 s of wake; the 5% of samples with
    the least total activity (drop-outs) are removed. ~1000 points `[points, 19]`."""
    data = _load(HEAD_DIRECTION)
    rates = gaussian_filter1d(data["Qrun"].astype(float), sigma=10, axis=0)
    angle = data["angRun"][:, 1]
    every = np.arange(0, rates.shape[0], 200)
    points, angle = np.sqrt(rates[every]), angle[every]
    active = points.sum(axis=1) > np.percentile(points.sum(axis=1), 5)
    return points[active], angle[active]


def _circular_error_after_best_alignment(estimate, truth):
    """Median |angle error| after the best rotation and reflection of `estimate`."""
    errors = []
    for sign in (1, -1):
        difference = np.angle(np.exp(1j * (sign * estimate - truth)))
        offset = np.angle(np.mean(np.exp(1j * difference)))
        errors.append(np.median(np.abs(np.angle(np.exp(1j * (difference - offset))))))
    return np.degrees(min(errors))


def test_head_direction_cells_lie_on_a_ring():
    points, _ = _head_direction_points()
    assert geometry.betti(points, n_points=300) == (1, 1)


def test_head_direction_isomap_angle_tracks_head_direction():
    points, angle = _head_direction_points()
    coordinates = geometry.isomap(points, 2, n_neighbors=15).coordinates
    centred = coordinates - coordinates.mean(axis=0)
    error = _circular_error_after_best_alignment(np.arctan2(centred[:, 1], centred[:, 0]), angle)
    print(f"head direction from the Isomap ring angle: median error {error:.1f} degrees")
    assert error < 45


def test_churchland_jpca_rotations_capture_most_of_the_linear_fit():
    """Paper window: -50..150 ms around movement onset, 6 PCs. Churchland et al. report that
    the skew-symmetric fit captures most of what the unconstrained fit captures; we require
    at least half."""
    data = _load(CHURCHLAND)
    times = data["t"].ravel()
    activity = data["dataTensor"].transpose(2, 0, 1)[:, times <= 150]  # [conditions, time, N]
    emb = geometry.jpca(activity, 6, dt=0.01)
    r2_skew, r2_linear = emb.info["r2_skew"], emb.info["r2_linear"]
    hertz = emb.info["frequencies"][0] / (2 * np.pi)
    print(
        f"jPCA on Churchland 2012 PSTHs: R² skew {r2_skew:.3f}, unconstrained {r2_linear:.3f}, "
        f"ratio {r2_skew / r2_linear:.2f}; fastest plane {hertz:.2f} Hz"
    )
    assert r2_linear > 0.3
    assert r2_skew >= 0.5 * r2_linear
