"""Per-region low-dimensional latents: the shared front end of the region-level models.

Each region's neurons are reduced to `latent_dim` standardised principal components of its
signals (square-root counts for spike counts, the signals themselves for continuous data):

    z_r[t] = U_r^T (y_r[t] - mean_r) / scale_r            [time, latent_dim]

`U_r` `[neurons_r, latent_dim]` are region r's leading principal directions and `scale_r` the
standard deviations of the components, so every region latent has unit variance. Stored as one
block-structured matrix `components` `[neurons, regions * latent_dim]` (neuron i loads only on
its own region's columns), the projection of all regions is one matmul. With
`projection="none"` the signals themselves are the region latents (each region must then have
exactly `latent_dim` neurons; nothing is centred or scaled).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from latentjax.data import Trials

PROJECTIONS = ("pca", "none")


class RegionProjection(NamedTuple):
    """mean `[neurons]`, components `[neurons, regions * latent_dim]` (block structured),
    scales `[regions * latent_dim]`; latents = (signals - mean) @ components / scales."""

    mean: jnp.ndarray
    components: jnp.ndarray
    scales: jnp.ndarray


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


def signals(trials) -> jnp.ndarray:
    """`[trials, time, neurons]` the signals the projection reads (sqrt of counts)."""
    spikes = jnp.asarray(trials.spikes, jnp.float32)
    return spikes if trials.continuous else jnp.sqrt(spikes)


def fit_projection(trials, latent_dim: int, projection: str) -> RegionProjection:
    """Per-region PCA of the observed bins of `trials` (host code, data-dependent init)."""
    names = trials.region_names
    labels = np.asarray(trials.regions)
    values = np.asarray(signals(trials), np.float64)[np.asarray(trials.mask)]  # [bins, neurons]
    num_neurons = values.shape[1]
    mean = np.zeros(num_neurons)
    components = np.zeros((num_neurons, len(names) * latent_dim))
    scales = np.ones(len(names) * latent_dim)
    for index, name in enumerate(names):
        rows = np.flatnonzero(labels == name)
        cols = slice(index * latent_dim, (index + 1) * latent_dim)
        if projection == "none":
            components[rows, cols] = np.eye(latent_dim)
            continue
        mean[rows] = values[:, rows].mean(axis=0)
        centred = values[:, rows] - mean[rows]
        _, singular, right = np.linalg.svd(centred, full_matrices=False)
        directions = right[:latent_dim].T
        signs = np.sign(directions[np.abs(directions).argmax(axis=0), np.arange(latent_dim)])
        components[rows, cols] = directions * signs
        scales[cols] = np.maximum(singular[:latent_dim] / np.sqrt(len(values)), 1e-6)
    return RegionProjection(
        jnp.asarray(mean, jnp.float32),
        jnp.asarray(components, jnp.float32),
        jnp.asarray(scales, jnp.float32),
    )


def region_latents(projection: RegionProjection, trials) -> jnp.ndarray:
    """`[trials, time, regions * latent_dim]` region latents (region r: columns r*K:(r+1)*K)."""
    return (signals(trials) - projection.mean) @ projection.components / projection.scales


def reconstruct(projection: RegionProjection, latents, continuous: bool) -> jnp.ndarray:
    """`[trials, time, neurons]` expected signal from region latents, in the unit of `spikes`
    (for counts the square of the reconstructed square-root signal)."""
    signal = (latents * projection.scales) @ projection.components.T + projection.mean
    return signal if continuous else jnp.maximum(signal, 0.0) ** 2
