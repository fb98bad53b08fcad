"""Per-region low-dimensional latents: the shared front end of the region-level models.

Each region's neurons are reduced to `latent_dim` standardised latents of its signals
(square-root counts for spike counts, the signals themselves for continuous data), a linear
read of each bin:

    z_r[t] = W_r^T (y_r[t] - mean_r) / scale_r            [time, latent_dim]

with `scale_r` the standard deviations of the unscaled latents, so every region latent has unit
variance. Two ways to choose `W_r` `[neurons_r, latent_dim]`:

- `"pca"`: region r's leading principal directions `U_r` (and loadings `U_r`). Read as
  probabilistic PCA (Tipping & Bishop 1999), `y = U x + e` with `e ~ N(0, s2 I)` and `s2` the
  mean discarded eigenvalue, so each latent carries measurement noise of variance `s2`.
- `"fa"`: factor analysis (scikit-learn), `y = C x + e`, `e ~ N(0, diag(psi))`, read by
  generalised least squares, `W = psi^-1 C (C' psi^-1 C)^-1`: then `z = x + noise` exactly, with
  noise covariance `(C' psi^-1 C)^-1` (scaled), whatever the latents' dynamics.

`noise_variance` `[neurons]` is each signal's own variance around the latents' read-out (FA's
private variances `psi`, PPCA's `s2`), for the expected counts of `reconstruct`.
`noise_covariance` `[R*K, R*K]` (block diagonal) is that measurement noise of the standardised
latents, what a model must allow for when it treats the latents as data (errors in variables).
All regions are stored as block-structured matrices `[neurons, regions * latent_dim]` (neuron i
loads only on its own region's columns), so the projection of all regions is one matmul. With
`projection="none"` the signals themselves are the region latents (each region must then have
exactly `latent_dim` neurons; nothing is centred or scaled; no measurement noise).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from sklearn.decomposition import FactorAnalysis

from latentjax.data import Trials
from latentjax.nn import gp

PROJECTIONS = ("fa", "pca", "none")


class RegionProjection(NamedTuple):
    """mean `[neurons]`, components `[neurons, regions * latent_dim]` (block structured),
    scales `[regions * latent_dim]`; latents = (signals - mean) @ components / scales.
    loadings `[neurons, regions * latent_dim]`: signals ~ mean + (latents * scales) @ loadings.T;
    noise_covariance `[regions * latent_dim]*2`: measurement noise of the latents;
    noise_variance `[neurons]`: each signal's variance around `mean + loadings @ latents`."""

    mean: jnp.ndarray
    components: jnp.ndarray
    scales: jnp.ndarray
    loadings: jnp.ndarray
    noise_covariance: jnp.ndarray
    noise_variance: jnp.ndarray


def check_regions(caller: str, trials, latent_dim: int, projection: str) -> tuple:
    """Validate `trials` for a region-level model; return the region names."""
    if not isinstance(trials, Trials):
        raise ValueError(f"{caller}: `trials` must be lj.Trials, got {type(trials).__name__}")
    names = trials.region_names
    if len(names) < 2:
        raise ValueError(
            f"{caller}: `trials.regions` must label neurons with at least 2 regions, got {names}"
        )
    labels = np.asarray(trials.regions)
    for name in names:
        count = int(np.sum(labels == name))
        if projection == "none" and count != latent_dim:
            raise ValueError(
                f"{caller}: with projection='none' every region needs exactly latent_dim="
                f"{latent_dim} neurons; region {name!r} has {count}"
            )
        if count < latent_dim:
            raise ValueError(
                f"{caller}: region {name!r} has {count} neurons, fewer than latent_dim={latent_dim}"
            )
    return names


def check_delays(caller: str, delays) -> tuple[int, ...]:
    """`delays` as a tuple of ints, or a ValueError naming `caller`: distinct ints >= 1."""
    delays = tuple(delays)
    if (
        not delays
        or any(
            not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1 for d in delays
        )
        or len(set(delays)) != len(delays)
    ):
        raise ValueError(f"{caller}: `delays` must be distinct ints >= 1, got {delays!r}")
    return tuple(int(d) for d in delays)


def signals(trials) -> jnp.ndarray:
    """`[trials, time, neurons]` the signals the projection reads (sqrt of counts)."""
    spikes = jnp.asarray(trials.spikes, jnp.float32)
    return spikes if trials.continuous else jnp.sqrt(spikes)


def _pca(centred: np.ndarray, latent_dim: int):
    """Principal directions `[n, K]` (sign fixed) as read-out and loadings, the read-out's
    noise covariance `[K, K]` and each signal's noise variance `[n]` (probabilistic PCA)."""
    _, singular, right = np.linalg.svd(centred, full_matrices=False)
    directions = right[:latent_dim].T
    signs = np.sign(directions[np.abs(directions).argmax(axis=0), np.arange(latent_dim)])
    directions = directions * signs
    discarded = singular[latent_dim:] ** 2 / len(centred)
    noise_variance = discarded.sum() / max(centred.shape[1] - latent_dim, 1)
    return (directions, directions, np.eye(latent_dim) * noise_variance,
            np.full(centred.shape[1], noise_variance))  # fmt: skip


def _factor_analysis(centred: np.ndarray, latent_dim: int):
    """GLS read-out `[n, K]`, loadings `[n, K]`, the read-out's noise covariance `[K, K]` and
    the private variances `[n]`."""
    fa = FactorAnalysis(latent_dim, random_state=0).fit(centred)
    loadings, private = fa.components_.T, np.maximum(fa.noise_variance_, 1e-6)
    noise_covariance = np.linalg.inv(loadings.T @ (loadings / private[:, None]))
    components = (loadings / private[:, None]) @ noise_covariance
    signs = np.sign(loadings[np.abs(loadings).argmax(axis=0), np.arange(latent_dim)])
    signs = np.where(signs == 0, 1.0, signs)
    signed = noise_covariance * np.outer(signs, signs)
    return components * signs, loadings * signs, signed, private


def fit_projection(trials, latent_dim: int, projection: str) -> RegionProjection:
    """Per-region PCA or factor analysis of the observed bins of `trials` (host code,
    data-dependent init)."""
    names = trials.region_names
    labels = np.asarray(trials.regions)
    values = np.asarray(signals(trials), np.float64)[np.asarray(trials.mask)]  # [bins, neurons]
    num_neurons = values.shape[1]
    size = len(names) * latent_dim
    mean = np.zeros(num_neurons)
    components = np.zeros((num_neurons, size))
    loadings = np.zeros((num_neurons, size))
    scales = np.ones(size)
    noise_covariance = np.zeros((size, size))
    noise_variance = np.zeros(num_neurons)
    for index, name in enumerate(names):
        rows = np.flatnonzero(labels == name)
        cols = slice(index * latent_dim, (index + 1) * latent_dim)
        if projection == "none":
            components[rows, cols] = loadings[rows, cols] = np.eye(latent_dim)
            continue
        mean[rows] = values[:, rows].mean(axis=0)
        centred = values[:, rows] - mean[rows]
        read, load, noise, private = (_pca if projection == "pca" else _factor_analysis)(
            centred, latent_dim
        )
        scale = np.maximum((centred @ read).std(axis=0), 1e-6)
        components[rows, cols], loadings[rows, cols], scales[cols] = read, load, scale
        noise_covariance[cols, cols] = noise / np.outer(scale, scale)
        noise_variance[rows] = private
    arrays = (mean, components, scales, loadings, noise_covariance, noise_variance)
    return RegionProjection(*(jnp.asarray(array, jnp.float32) for array in arrays))


def region_latents(projection: RegionProjection, trials) -> jnp.ndarray:
    """`[trials, time, regions * latent_dim]` region latents (region r: columns r*K:(r+1)*K)."""
    return (signals(trials) - projection.mean) @ projection.components / projection.scales


def reconstruct(projection: RegionProjection, latents, continuous: bool) -> jnp.ndarray:
    """`[trials, time, neurons]` expected signal from region latents, in the unit of `spikes`.

    For counts, the square-root signal `y ~ N(mean + loadings @ latents, noise_variance)` is
    clipped at zero and squared in expectation, `E[max(y, 0)^2]` (`gp.expected_clipped`): the
    square of the mean alone misses the noise variance, which for a neuron firing well below
    one spike per bin is most of its rate."""
    signal = (latents * projection.scales) @ projection.loadings.T + projection.mean
    if continuous:
        return signal
    variance = jnp.maximum(projection.noise_variance, 1e-12)
    return gp.expected_clipped(signal, variance, sqrt_transform=True)
