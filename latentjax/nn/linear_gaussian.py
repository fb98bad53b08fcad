"""Linear-Gaussian pieces shared by the Gaussian and the Poisson LDS.

- `emission_potentials`: the Gaussian potentials (see `kalman`) of a linear emission
  y_t = C z_t + d + D u_t + N(0, diag(r)), with optional per-entry observation masks.
- `subspace_init`: an initial linear-Gaussian model from PCA or factor analysis of the
  observed bins, the dynamics by least squares on the projected latents.
- `prior_m_step`: the closed-form M-step of the Gauss-Markov prior
  z_0 ~ N(m_0, P_0), z_t = F z_{t-1} + b + B u_t + N(0, Q) from smoothed marginals.

Arrays of many trials are `[trials, time, ...]`; `emission_potentials` works on one trial.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from latentjax.nn.kalman import Potentials, SmootherResult

__all__ = [
    "SubspaceModel",
    "augment",
    "clip_eigenvalues",
    "emission_potentials",
    "prior_m_step",
    "second_moment",
    "subspace_init",
]


def clip_eigenvalues(matrix, floor):
    """The symmetric part of `matrix` with its eigenvalues raised to at least `floor`."""
    values, vectors = jnp.linalg.eigh(0.5 * (matrix + matrix.T))
    return (vectors * jnp.maximum(values, floor)) @ vectors.T


def emission_potentials(
    weights, bias, input_weights, noise, signals, bin_mask, inputs, entry_mask=None
) -> Potentials:
    """Observation potentials of one trial.

    Args:
      weights: `[N, K]` (C); bias: `[N]` (d); input_weights: `[N, U]` (D); noise: `[N]` (r).
      signals: `[T, N]`; bin_mask: `[T]` bool; inputs: `[T, U]`.
      entry_mask: `[T, N]` (1 where an entry is observed) or None (every entry of an
        observed bin); with None, J_t = C^T diag(1 / r) C is shared by every bin.
    """
    inverse_noise = 1.0 / noise
    centred = signals - bias - inputs @ input_weights.T
    weight = bin_mask.astype(centred.dtype)
    if entry_mask is None:
        observed = jnp.broadcast_to(weight[:, None], centred.shape)
        precision = weights.T @ (inverse_noise[:, None] * weights)
    else:
        observed = weight[:, None] * entry_mask
        precision = jnp.einsum("tn,nk,nl->tkl", observed * inverse_noise, weights, weights)
    centred = jnp.where(observed > 0, centred, 0.0)
    scaled = observed * inverse_noise * centred
    constant = -0.5 * (
        observed @ (jnp.log(noise) + jnp.log(2 * jnp.pi)) + jnp.sum(scaled * centred, -1)
    )
    return Potentials(precision, weight, scaled @ weights, constant)


def _regress_dynamics(latents, valid, inputs, min_variance):
    """Least-squares F, b, B, Q from latent paths `[B, T, K]` over valid transitions `[B, T-1]`."""
    num_latents = latents.shape[-1]
    design = jnp.concatenate(
        [latents[:, :-1], jnp.ones_like(latents[:, :-1, :1]), inputs[:, 1:]], axis=-1
    )
    weights = valid[..., None].astype(latents.dtype)
    gram = jnp.einsum("bti,btj->ij", weights * design, design)
    cross = jnp.einsum("bti,btj->ij", weights * latents[:, 1:], design)
    ridge = 1e-6 * jnp.eye(gram.shape[0])
    coefficients = jnp.linalg.solve(gram + ridge, cross.T).T
    residual = latents[:, 1:] - design @ coefficients.T
    noise = jnp.einsum("bti,btj->ij", weights * residual, residual) / jnp.maximum(weights.sum(), 1)
    return (
        coefficients[:, :num_latents],
        coefficients[:, num_latents],
        coefficients[:, num_latents + 1 :],
        clip_eigenvalues(noise, min_variance),
    )


class SubspaceModel(NamedTuple):
    """An initial linear-Gaussian model (`subspace_init`).

    initial_mean `[K]`, initial_cov `[K, K]`, dynamics `[K, K]`, bias `[K]`, input_weights
    `[K, U]`, dynamics_cov `[K, K]`; loadings `[N, K]`, offset `[N]`, noise `[N]` (the
    emission); latents `[B, T, K]` the projected latent paths the dynamics were fitted to.
    """

    initial_mean: jax.Array
    initial_cov: jax.Array
    dynamics: jax.Array
    bias: jax.Array
    input_weights: jax.Array
    dynamics_cov: jax.Array
    loadings: jax.Array
    offset: jax.Array
    noise: jax.Array
    latents: jax.Array


def subspace_init(
    key, signals, bin_mask, inputs, latent_dim: int, method: str, min_variance, init_jitter
) -> SubspaceModel:
    """Initial model from the observed bins of `signals` `[B, T, N]` (`bin_mask` `[B, T]`,
    `inputs` `[B, T, U]`).

    The emissions come from the principal subspace (`method="pca"`) or scikit-learn's factor
    analysis (`"fa"`, host code); the dynamics from least squares on consecutive projected
    latents, perturbed by `init_jitter * N(0, 1) / sqrt(K)` drawn from `key`.
    """
    weight = bin_mask[..., None].astype(signals.dtype)
    count = weight.sum()
    offset = jnp.sum(weight * signals, axis=(0, 1)) / count
    centred = (signals - offset) * weight
    covariance = jnp.einsum("bti,btj->ij", centred, centred) / count
    variance = jnp.diagonal(covariance)
    if method == "fa":
        from sklearn.decomposition import FactorAnalysis

        observed = np.asarray(signals)[np.asarray(bin_mask)]
        analysis = FactorAnalysis(n_components=latent_dim, random_state=0).fit(observed)
        loadings = jnp.asarray(analysis.components_.T, signals.dtype)
        noise = jnp.asarray(analysis.noise_variance_, signals.dtype)
        posterior_map = jnp.linalg.solve(
            jnp.eye(latent_dim) + loadings.T @ (loadings / noise[:, None]),
            (loadings / noise[:, None]).T,
        )
    else:
        values, vectors = jnp.linalg.eigh(covariance)
        loadings = vectors[:, ::-1][:, :latent_dim]
        explained = jnp.sum(loadings**2 * values[::-1][:latent_dim], axis=1)
        noise = jnp.maximum(variance - explained, 0.1 * variance)
        posterior_map = loadings.T
    noise = jnp.maximum(noise, min_variance)
    latents = (signals - offset) @ posterior_map.T
    valid = bin_mask[:, 1:] & bin_mask[:, :-1]
    dynamics, bias, input_weights, dynamics_cov = _regress_dynamics(
        latents, valid, inputs, min_variance
    )
    dynamics = dynamics + init_jitter * jax.random.normal(
        key, dynamics.shape, dynamics.dtype
    ) / jnp.sqrt(latent_dim)
    first = latents[:, 0]
    initial_cov = clip_eigenvalues(
        jnp.cov(first.T, bias=True).reshape(latent_dim, latent_dim) + dynamics_cov, min_variance
    )
    return SubspaceModel(
        first.mean(0),
        initial_cov,
        dynamics,
        bias,
        input_weights,
        dynamics_cov,
        loadings,
        offset,
        noise,
        latents,
    )


def _transition_mask(bin_mask):
    """`[B, T-1]`: transitions up to each trial's last observed bin (trailing padding skipped)."""
    num_bins = bin_mask.shape[1]
    last = jnp.max(jnp.where(bin_mask, jnp.arange(num_bins), 0), axis=1)
    return jnp.arange(1, num_bins)[None, :] <= last[:, None]


def augment(latent_means, extra):
    """`[..., K + 1 + U]` regressors [z, 1, u]."""
    return jnp.concatenate([latent_means, jnp.ones_like(latent_means[..., :1]), extra], -1)


def second_moment(augmented, latent_covs, weights):
    """Weighted E[x x^T] of regressors x = [z, 1, u] with Cov(z) = `latent_covs`."""
    num_latents = latent_covs.shape[-1]
    moment = jnp.einsum("bt,bti,btj->ij", weights, augmented, augmented)
    return moment.at[:num_latents, :num_latents].add(
        jnp.einsum("bt,btij->ij", weights, latent_covs)
    )


def prior_m_step(smoothed: SmootherResult, bin_mask, inputs, min_variance):
    """Closed-form M-step of the Gauss-Markov prior from smoothed marginals `[B, T, ...]`.

    Returns `(initial_mean, initial_cov, dynamics, bias, input_weights, dynamics_cov)`;
    transitions count up to each trial's last observed bin.
    """
    means, covs = smoothed.means, smoothed.covariances
    num_latents = means.shape[-1]
    transitions = _transition_mask(bin_mask).astype(means.dtype)
    previous = augment(means[:, :-1], inputs[:, 1:])
    gram = second_moment(previous, covs[:, :-1], transitions)
    cross = jnp.einsum("bt,bti,btj->ij", transitions, means[:, 1:], previous)
    cross = cross.at[:, :num_latents].add(
        jnp.einsum("bt,btji->ij", transitions, smoothed.cross_covariances)
    )
    next_moment = jnp.einsum("bt,bti,btj->ij", transitions, means[:, 1:], means[:, 1:])
    next_moment = next_moment + jnp.einsum("bt,btij->ij", transitions, covs[:, 1:])
    coefficients = jnp.linalg.solve(gram, cross.T).T
    dynamics_cov = (next_moment - coefficients @ cross.T) / jnp.maximum(transitions.sum(), 1)

    initial_mean = means[:, 0].mean(0)
    spread = means[:, 0] - initial_mean
    initial_cov = covs[:, 0].mean(0) + spread.T @ spread / means.shape[0]
    return (
        initial_mean,
        clip_eigenvalues(initial_cov, min_variance),
        coefficients[:, :num_latents],
        coefficients[:, num_latents],
        coefficients[:, num_latents + 1 :],
        clip_eigenvalues(dynamics_cov, min_variance),
    )
