"""Attention routing model: each target region attends over the other regions' states.

Each region `r` has a latent state `z_r` `[latent_dim]` (model in `_routing.py`):

    z_r[t] = A_r z_r[t-1] + c_r + g_r sum_{s != r} a_sr[t] V^_sr tanh(z_s[t-1]) + innovation_r[t]

    q_r = Q_r^T z_r[t-1],  k_s = K_s^T z_s[t-1]                        [key_dim]
    a_.r[t] = softmax over {s != r} and a null source of (k_s . q_r / sqrt(key_dim), b_r)

The query comes from the target's previous state, keys and values from the sources' previous
states; the null source (logit `b_r`, no value) lets a region attend to nobody, so the
attention on real sources sums to at most 1. `g_r = softplus(.)` is the target's input gain.
Penalty: `edge_penalty` times the mean over bins of `sum_{s != r} g_r a_sr[t]`. Poisson
read-out per region; trained by gradient through `lj.fit`.

Posterior extras: `attention` `[B, T, R, R]` (`a_sr[t]`, source s -> target r, zero diagonal),
`edge_strengths` `[R, R]` its average over trials and observed bins.

Examples:
    Training takes minutes, so doctests skip the lines that fit and infer:

    >>> import latentjax as lj
    >>> data = lj.datasets.multiregion(seed=0, num_trials=40, num_bins=50)
    >>> result = lj.fit(lj.multiregion.attention.Config(), data.trials)    # doctest: +SKIP
    >>> lj.infer(result, data.trials).attention.shape                      # doctest: +SKIP
    (40, 50, 3, 3)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from latentjax.multiregion import _routing
from latentjax.results import Posterior

__all__ = ["Config", "init", "loss", "posterior", "validation_loss"]


@dataclasses.dataclass(frozen=True)
class Config(_routing.RoutingConfig):
    """Attention routing model (fields of `_routing.RoutingConfig`: `latent_dim` per region,
    `edge_penalty` (knob, on the gated attention mass), `train`).

    Attributes:
      key_dim: size of queries and keys.
    """

    key_dim: int = 4


def _attention(routing: dict, states):
    """`states` `[R, K]` -> attention `[R, R]` (s -> r, zero diagonal; columns sum to <= 1)."""
    queries = jnp.einsum("rkd,rk->rd", routing["queries"], states)
    keys = jnp.einsum("skd,sk->sd", routing["keys"], states)
    scores = keys @ queries.T / np.sqrt(queries.shape[-1])  # [s, r]
    num_regions = states.shape[0]
    scores = jnp.where(jnp.eye(num_regions, dtype=bool), -jnp.inf, scores)
    with_null = jnp.concatenate([scores, routing["null_logits"][None]], axis=0)
    return jax.nn.softmax(with_null, axis=0)[:num_regions]


def _route(routing: dict, states):
    attention = _attention(routing, states)
    return attention * jax.nn.softplus(routing["gains"]), attention


def init(key, config: Config, trials) -> dict:
    """Parameters; queries and keys random, null logits 0, gains `softplus(0)`."""
    _routing.check_trials("attention.init", trials, config.latent_dim)
    shared_key, query_key, key_key = jax.random.split(key, 3)
    params = _routing.init_shared(shared_key, config, trials)
    num_regions = len(trials.region_names)
    shape = (num_regions, config.latent_dim, config.key_dim)
    scale = 1.0 / np.sqrt(config.latent_dim)
    params["routing"] = {
        "queries": scale * jax.random.normal(query_key, shape),
        "keys": scale * jax.random.normal(key_key, shape),
        "null_logits": jnp.zeros(num_regions),
        "gains": jnp.zeros(num_regions),
    }
    return params


def loss(params: dict, batch, key, config: Config, step) -> tuple:
    """Negative Poisson log-likelihood per observed bin and neuron + gated-attention penalty."""

    def penalty(weights):
        mask = jnp.asarray(batch.mask, jnp.float32)
        per_bin = jnp.sum(weights, axis=(-2, -1))
        return config.edge_penalty * jnp.sum(per_bin * mask) / jnp.sum(mask)

    return _routing.loss(params, batch, _route, penalty)


def validation_loss(params: dict, trials, key, config: Config, step) -> tuple:
    """Held-out negative Poisson log-likelihood per observed bin and neuron (no penalty)."""
    return _routing.validation_loss(params, trials, _route)


def posterior(params: dict, trials, config: Config, key=None) -> Posterior:
    """latents `[B, T, R * latent_dim]` (predicted states), rates `[B, T, N]`, extras
    `attention` `[B, T, R, R]`, `edge_strengths` `[R, R]` (its mean over observed bins)
    and `filtered_latents`."""
    _routing.check_posterior_trials("attention.posterior", params, trials)
    mask = jnp.asarray(trials.mask, jnp.float32)[..., None, None]

    def summarise(attention):
        strengths = jnp.sum(attention * mask, axis=(0, 1)) / jnp.sum(mask, axis=(0, 1))
        return {"attention": attention, "edge_strengths": strengths}

    return _routing.posterior(params, trials, _route, summarise)
