"""Shared machinery of the routing models `gnn` and `attention`: region states, messages,
per-region Poisson read-out, loss and posterior.

One trial, regions `r = 0..R-1`, each with a state `z_r` `[K]` (`K = latent_dim`). At every bin
each region predicts its state from its own past and from messages sent by the other regions,
then corrects it with an innovation read from its own neurons only:

    m_r[t] = sum_{s != r} a_sr[t] * V^_sr tanh(z_s[t-1])       message into r  [K]
    p_r[t] = A_r z_r[t-1] + c_r + m_r[t]                      prediction      [K]
    z_r[t] = p_r[t] + mask[t] * E_r^T (sqrt(y_r[t]) - o_r)    correction      [K]
    log lambda_i[t] = C_i . p_{r(i)}[t] + d_i                 neuron i of region r(i)

with `z[-1] = 0` (the first bin's innovation is the encoder of the initial state). `V^_sr =
V_sr / ||V_sr||_F` `[K_target, K_source]` has unit norm and the message is bounded (`tanh`), so
the routing weight `a_sr[t] >= 0` alone sets how much of region `s` reaches region `r`: `gnn`
learns one scalar per edge, `attention` computes them per bin from the states. The rates of
bin `t` depend on the spikes of bins `< t` only (one-step-ahead prediction), and region `s`'s
spikes reach region `r`'s prediction only through `a_sr`: an edge is used where the source's
past improves the target's prediction (Granger causality between latent states).

Parameters: `{"dynamics": [R, K, K], "state_bias": [R, K], "messages": [R, R, K, K] (V_sr at
[s, r]), "readin": [N, K], "readin_offset": [N], "readout": [N, K], "readout_bias": [N],
"routing": family parameters}`. Per-neuron read-in and read-out rows act on the neuron's own
region only (`membership` `[N, R]`, one-hot, from `trials.regions`).

Convention: `[..., s, r]` is the edge from source region `s` to target region `r`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from latentjax.data import Trials
from latentjax.multiregion import _regions
from latentjax.nn.readouts import log_likelihood
from latentjax.results import Posterior
from latentjax.train.config import TrainConfig, knob

__all__ = [
    "RoutingConfig",
    "init_shared",
    "loss",
    "membership",
    "posterior",
    "predict",
    "validation_loss",
]

# route(routing_params, states [R, K]) -> (weights [R, R] >= 0 (s -> r), record per bin)
Route = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


@dataclasses.dataclass(frozen=True)
class RoutingConfig:
    """Settings shared by the routing families.

    Attributes:
      latent_dim: state size `K` of every region.
      edge_penalty: weight of the sparsity penalty on the routing weights (knob).
      train: optimiser and loop settings (full batch Adam by default).
    """

    latent_dim: int = 2
    edge_penalty: float = knob(1e-3, "nonnegative")
    train: TrainConfig = TrainConfig(steps=600, learning_rate=2e-2, chunk_size=100)

    def __post_init__(self):
        name = f"{type(self).__module__.rsplit('.', 1)[-1]}.Config"
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (
                not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"{name}: `{field.name}` must be a positive int, got {value!r}")
        if not self.edge_penalty >= 0:
            raise ValueError(f"{name}: `edge_penalty` must be >= 0, got {self.edge_penalty!r}")


def check_trials(caller: str, trials, latent_dim: int) -> None:
    """Validate user trials (outside jit): Trials, >= 2 regions of >= latent_dim neurons,
    spike counts."""
    _regions.check_regions(caller, trials, latent_dim, "pca")
    if trials.continuous:
        raise ValueError(
            f"{caller}: `trials` must hold spike counts (Poisson read-out), not continuous signals"
        )


def membership(trials) -> np.ndarray:
    """`[neurons, regions]` one-hot region of each neuron (regions in order of appearance)."""
    labels = np.asarray(trials.regions)
    return (labels[:, None] == np.asarray(trials.region_names)[None, :]).astype(np.float32)


def init_shared(key, config: RoutingConfig, trials: Trials) -> dict:
    """Shared parameters; read-ins start at each region's standardised principal components,
    read-out biases at each neuron's mean log count."""
    latent_dim = config.latent_dim
    num_regions = len(trials.region_names)
    projection = _regions.fit_projection(trials, latent_dim, "pca")
    region_of = membership(trials).argmax(axis=1)
    columns = region_of[:, None] * latent_dim + np.arange(latent_dim)  # [N, K]
    components = np.take_along_axis(np.asarray(projection.components), columns, axis=1)
    readin = components / np.asarray(projection.scales)[columns]
    counts = np.asarray(trials.spikes, np.float64)[np.asarray(trials.mask)]
    readout_key, message_key = jax.random.split(key)
    num_neurons = trials.num_neurons
    return {
        "dynamics": 0.5 * jnp.tile(jnp.eye(latent_dim), (num_regions, 1, 1)),
        "state_bias": jnp.zeros((num_regions, latent_dim)),
        "messages": jax.random.normal(
            message_key, (num_regions, num_regions, latent_dim, latent_dim)
        ),
        "readin": jnp.asarray(readin, jnp.float32),
        "readin_offset": projection.mean,
        "readout": 0.1 * jax.random.normal(readout_key, (num_neurons, latent_dim)),
        "readout_bias": jnp.asarray(np.log(counts.mean(axis=0) + 1e-3), jnp.float32),
    }


def _trial(params: dict, route: Route, spikes, mask, members):
    """One trial: `spikes` `[T, N]`, `mask` `[T]` -> log rates `[T, N]`, predicted and
    corrected states `[T, R, K]`, routing weights `[T, R, R]` and the route's records."""
    num_regions = members.shape[1]
    off_diagonal = 1.0 - jnp.eye(num_regions)
    messages = params["messages"]
    unit_messages = messages / jnp.sqrt(jnp.sum(messages**2, axis=(2, 3), keepdims=True) + 1e-8)
    signals = jnp.sqrt(spikes) - params["readin_offset"]
    innovations = jnp.einsum("nr,nk,tn->trk", members, params["readin"], signals)

    def step(previous, inputs):
        innovation, observed = inputs
        weights, record = route(params["routing"], previous)
        weights = weights * off_diagonal
        message = jnp.einsum("sr,srkl,sl->rk", weights, unit_messages, jnp.tanh(previous))
        prediction = (
            jnp.einsum("rkl,rl->rk", params["dynamics"], previous) + params["state_bias"] + message
        )
        state = prediction + observed * innovation
        return state, (prediction, state, weights, record)

    initial = jnp.zeros((num_regions, params["dynamics"].shape[-1]))
    _, (predictions, states, weights, records) = jax.lax.scan(
        step, initial, (innovations, mask.astype(jnp.float32)[:, None, None])
    )
    log_rates = jnp.einsum("nr,trk,nk->tn", members, predictions, params["readout"])
    return log_rates + params["readout_bias"], predictions, states, weights, records


def predict(params: dict, trials: Trials, route: Route):
    """All trials: log rates `[B, T, N]`, predicted and corrected states `[B, T, R, K]`,
    routing weights `[B, T, R, R]` (s -> r) and the route's records (trials, time first)."""
    members = jnp.asarray(membership(trials))
    spikes = jnp.asarray(trials.spikes, jnp.float32)
    return jax.vmap(lambda s, m: _trial(params, route, s, m, members))(
        spikes, jnp.asarray(trials.mask)
    )


def _nll(params: dict, batch: Trials, route: Route):
    """Mean negative Poisson log-likelihood per observed bin and neuron, and the weights."""
    log_rates, _, _, weights, _ = predict(params, batch, route)
    spikes = jnp.asarray(batch.spikes, jnp.float32)
    mask = jnp.asarray(batch.mask, jnp.float32)[..., None]
    ll = log_likelihood("poisson", log_rates[..., None, :], spikes)
    return -jnp.sum(ll * mask) / (jnp.sum(mask) * spikes.shape[-1]), weights


def loss(params: dict, batch: Trials, route: Route, penalty: Callable) -> tuple:
    """Mean negative Poisson log-likelihood per observed bin and neuron, plus
    `penalty(weights [B, T, R, R])`; aux `{"nll", "penalty"}`."""
    nll, weights = _nll(params, batch, route)
    edge_penalty = penalty(weights)
    return nll + edge_penalty, {"nll": nll, "penalty": edge_penalty}


def validation_loss(params: dict, trials: Trials, route: Route) -> tuple:
    """The held-out negative Poisson log-likelihood per observed bin and neuron (no edge
    penalty: that is a training-only term); aux `{"nll"}`."""
    nll, _ = _nll(params, trials, route)
    return nll, {"nll": nll}


def check_posterior_trials(caller: str, params: dict, trials) -> None:
    """`trials` must have the neurons and regions `params` were fitted to."""
    num_regions, latent_dim = params["state_bias"].shape
    check_trials(caller, trials, latent_dim)
    if trials.num_neurons != params["readout"].shape[0] or len(trials.region_names) != num_regions:
        raise ValueError(
            f"{caller}: `trials` has {trials.num_neurons} neurons in "
            f"{len(trials.region_names)} regions; the fit has {params['readout'].shape[0]} in "
            f"{num_regions}"
        )


def posterior(params: dict, trials: Trials, route: Route, summarise: Callable) -> Posterior:
    """Posterior: latents = predicted states `[B, T, R * K]`, rates `[B, T, N]` (expected
    counts per bin, one step ahead), extras `filtered_latents` `[B, T, R * K]` and
    `summarise(records)` (a dict holding `edge_strengths` `[R, R]`; records as `predict`)."""
    log_rates, predictions, states, _, records = predict(params, trials, route)
    flat = predictions.shape[:2] + (-1,)
    return Posterior(
        latents=predictions.reshape(flat),
        rates=jnp.exp(jnp.clip(log_rates, -30.0, 30.0)),
        extras={"filtered_latents": states.reshape(flat), **summarise(records)},
    )
