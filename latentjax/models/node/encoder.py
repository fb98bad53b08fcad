"""Encoder of the latent ODE: GRUs over (observation, time gap) pairs give q(z(t_anchor)).

For the observed bins `t_1 < ... < t_M` of one trial, a backward GRU runs from the last to the
first observation,

    b_M = GRU_b([x_M, 0], 0),   b_i = GRU_b([x_i, time_scale * (t_{i+1} - t_i)], b_{i+1}),

and, for `anchor="middle"`, a forward GRU from the first to the last,

    f_1 = GRU_f([x_1, 0], 0),   f_i = GRU_f([x_i, time_scale * (t_i - t_{i-1})], f_{i-1})

(unobserved bins leave the states unchanged). The Gaussian posterior over the latent state at
an anchor time is `[mean, log var] = W h + b`, `q(z(t_a)) = N(mean, exp(log var) + VAR_MIN)`:

- `anchor="first"`: `t_a = t_1`, `h = b_1` (the whole trial, read backward);
- `anchor="middle"`: `t_a = t_m`, the middle observation (`m = floor(M / 2) + 1`), and
  `h = [f_m, b_m]` (the past and the future of the anchor).

With `segments > 1` the same GRUs and head give one posterior per chunk of observations, at
the chunk's first or middle observation (`anchor_indices`).

`x` is `log1p(counts)` for the Poisson read-out and the raw signal for the Gaussian one. The
GRU is LFADS's (`latentjax.models.lfads.network`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from latentjax.models.node.config import Config
from latentjax.nn.recurrent import GRU, add_gates, gru_step, split_gates

__all__ = ["VAR_MIN", "encode", "init_encoder"]

VAR_MIN = 1e-4


def _directions(config: Config) -> tuple[str, ...]:
    return ("gru",) if config.anchor == "first" else ("gru", "gru_forward")


def init_encoder(key, config: Config, num_neurons: int) -> dict:
    """Parameters: `{"gru": backward GRU weights (input: neurons + 1 gap), ("gru_forward":
    the forward GRU, for anchor="middle"), "head": {"kernel", "bias"}}`."""
    directions = _directions(config)
    *gru_keys, head_key = jax.random.split(key, len(directions) + 1)
    params = {
        name: GRU(config.encoder_dim, learned_initial_state=False).init(k, num_neurons + 1)[
            "params"
        ]
        for name, k in zip(directions, gru_keys, strict=True)
    }
    features = config.encoder_dim * len(directions)
    head = jax.random.normal(head_key, (features, 2 * config.latent_dim))
    params["head"] = {
        "kernel": head / jnp.sqrt(features),
        "bias": jnp.zeros(2 * config.latent_dim),
    }
    return params


def _gru_states(gru_params, config: Config, inputs, filled_times, mask, reverse: bool):
    """GRU states `[time, encoder_dim]` after each bin, over the observed bins in one
    direction; the gap input is the time since the previous observation in that direction."""
    num_neurons = inputs.shape[-1]
    weights = GRU(config.encoder_dim, learned_initial_state=False).apply(
        {"params": gru_params}, num_neurons + 1
    )
    input_gates = split_gates(inputs @ weights.input_kernel[:num_neurons] + weights.input_bias)
    gap_kernel = weights.input_kernel[num_neurons]

    def step(carry, observation):
        h, t_previous = carry
        gates, t, observed = observation
        gap = config.time_scale * jnp.abs(t - t_previous)
        stepped = gru_step(weights, add_gates(gates, gap * gap_kernel), h, jnp.inf)
        h = jnp.where(observed, stepped, h)
        return (h, jnp.where(observed, t, t_previous)), h

    start = filled_times[-1] if reverse else filled_times[0]
    initial = (jnp.zeros(config.encoder_dim), start)
    _, states = jax.lax.scan(step, initial, (input_gates, filled_times, mask), reverse=reverse)
    return states


def anchor_indices(config: Config, mask):
    """Anchor bins of one trial (`mask` `[time]`): `(indices [segments], active [segments])`.

    The M observed bins are cut into `min(segments, M)` consecutive chunks of (nearly) equal
    counts; each chunk's anchor is its first observed bin, or its middle one
    (`anchor="middle"`). Chunks beyond M (a trial with fewer observations than segments) are
    inactive and repeat the last anchor; a trial with nothing observed gets bin 0."""
    count = jnp.cumsum(mask)
    num_observed = count[-1]
    chunks = jnp.maximum(jnp.minimum(config.segments, num_observed), 1)
    segment = jnp.arange(config.segments)
    active = segment < chunks
    chunk = jnp.minimum(segment, chunks - 1)
    start = chunk * num_observed // chunks
    size = (chunk + 1) * num_observed // chunks - start
    rank = start + (size // 2 if config.anchor == "middle" else 0)
    indices = jnp.argmax(mask[None] & (count[None] == rank[:, None] + 1), axis=1)
    return indices, active


def encode(params: dict, config: Config, inputs, filled_times, mask):
    """Posterior means and variances `[segments, latent_dim]` of the states at the anchors.

    Args:
      params: the encoder's parameters (`init_encoder`).
      config: the model's `Config`.
      inputs: `[time, neurons]` encoder inputs (see the module doc).
      filled_times: `[time]` seconds, non-decreasing (`solve.fill_times`).
      mask: `[time]` bool, True where observed.

    Returns:
      `(mean, var, anchors, active)`: `anchors` `[segments]` are the anchor bins and
      `active` `[segments]` flags the anchors in use (`anchor_indices`).
    """
    anchors, active = anchor_indices(config, mask)
    features = [_gru_states(params["gru"], config, inputs, filled_times, mask, True)[anchors]]
    if config.anchor == "middle":
        forward = _gru_states(params["gru_forward"], config, inputs, filled_times, mask, False)
        features.insert(0, forward[anchors])
    h = jnp.concatenate(features, axis=-1)
    mean, log_var = jnp.split(h @ params["head"]["kernel"] + params["head"]["bias"], 2, axis=-1)
    return mean, jnp.exp(log_var) + VAR_MIN, anchors, active
