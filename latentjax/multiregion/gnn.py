"""Graph routing model: regions are nodes exchanging messages along learned weighted edges.

Each region `r` has a latent state `z_r` `[latent_dim]` (model in `_routing.py`):

    z_r[t] = A_r z_r[t-1] + c_r + sum_{s != r} w_sr V^_sr tanh(z_s[t-1]) + innovation_r[t]

with one scalar edge strength `w_sr = softplus(u_sr) >= 0` per directed edge `s -> r` (the
unit-norm matrix `V^_sr` only chooses the direction of the message) and an L1 sparsity penalty
`edge_penalty * sum_{s != r} w_sr`. Each region's neurons read out its state with Poisson
log-rates; trained by gradient through `lj.fit`.

Examples:
    Training takes minutes, so doctests skip the lines that fit and infer:

    >>> import latentjax as lj
    >>> data = lj.datasets.multiregion(seed=0, num_trials=40, num_bins=50)
    >>> result = lj.fit(lj.multiregion.gnn.Config(), data.trials)         # doctest: +SKIP
    >>> lj.infer(result, data.trials).edge_strengths.shape                # doctest: +SKIP
    (3, 3)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from latentjax.multiregion import _routing
from latentjax.results import Posterior

__all__ = ["Config", "edge_strengths", "init", "loss", "posterior", "validation_loss"]


@dataclasses.dataclass(frozen=True)
class Config(_routing.RoutingConfig):
    """Graph routing model (fields of `_routing.RoutingConfig`: `latent_dim` per region,
    `edge_penalty` (knob, L1 on the edge strengths), `train`)."""


def edge_strengths(params: dict) -> jax.Array:
    """`[R, R]` edge strengths `w_sr` (row = source, column = target; zero diagonal)."""
    raw = params["routing"]["edges"]
    return jax.nn.softplus(raw) * (1.0 - jnp.eye(raw.shape[0]))


def _route(routing: dict, states):
    return edge_strengths({"routing": routing}), ()


def init(key, config: Config, trials) -> dict:
    """Parameters; every edge starts at strength `softplus(-1) ~ 0.31`."""
    _routing.check_trials("gnn.init", trials, config.latent_dim)
    params = _routing.init_shared(key, config, trials)
    num_regions = len(trials.region_names)
    params["routing"] = {"edges": -jnp.ones((num_regions, num_regions))}
    return params


def loss(params: dict, batch, key, config: Config, step) -> tuple:
    """Negative Poisson log-likelihood per observed bin and neuron + L1 on edge strengths."""

    def penalty(weights):
        return config.edge_penalty * jnp.sum(edge_strengths(params))

    return _routing.loss(params, batch, _route, penalty)


def validation_loss(params: dict, trials, key, config: Config, step) -> tuple:
    """Held-out negative Poisson log-likelihood per observed bin and neuron (no penalty)."""
    return _routing.validation_loss(params, trials, _route)


def posterior(params: dict, trials, config: Config, key=None) -> Posterior:
    """latents `[B, T, R * latent_dim]` (predicted states), rates `[B, T, N]`, extras
    `edge_strengths` `[R, R]` (source -> target) and `filtered_latents`."""
    _routing.check_posterior_trials("gnn.posterior", params, trials)
    strengths = edge_strengths(params)
    return _routing.posterior(params, trials, _route, lambda _: {"edge_strengths": strengths})
