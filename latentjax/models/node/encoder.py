"""Encoder of the latent ODE: a GRU run backward in time over (observation, time gap) pairs.

For the observed bins `t_1 < ... < t_M` of one trial, from the last to the first:

    h_M = GRU([x_M, 0], 0),   h_i = GRU([x_i, time_scale * (t_{i+1} - t_i)], h_{i+1})

(unobserved bins leave `h` unchanged), then `[mean, log var] = W h_1 + b` is the Gaussian
posterior `q(z(t_1)) = N(mean, exp(log var) + VAR_MIN)` over the initial latent state at the
first observed time. `x` is `log1p(counts)` for the Poisson read-out and the raw signal for the
Gaussian one. The GRU is LFADS's (`latentjax.models.lfads.network`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from latentjax.models.lfads.network import GRU, gru_step
from latentjax.models.node.config import Config

__all__ = ["VAR_MIN", "encode", "init_encoder"]

VAR_MIN = 1e-4


def init_encoder(key, config: Config, num_neurons: int) -> dict:
    """Parameters: `{"gru": GRU weights (input: neurons + 1 gap), "head": {"kernel", "bias"}}`."""
    gru_key, head_key = jax.random.split(key)
    gru = GRU(config.encoder_dim, learned_initial_state=False).init(gru_key, num_neurons + 1)
    head = jax.random.normal(head_key, (config.encoder_dim, 2 * config.latent_dim))
    return {
        "gru": gru["params"],
        "head": {
            "kernel": head / jnp.sqrt(config.encoder_dim),
            "bias": jnp.zeros(2 * config.latent_dim),
        },
    }


def encode(params: dict, config: Config, inputs, filled_times, mask):
    """Posterior mean and variance `[latent_dim]` of the initial state of one trial.

    Args:
      params: the encoder's parameters (`init_encoder`).
      config: the model's `Config`.
      inputs: `[time, neurons]` encoder inputs (see the module doc).
      filled_times: `[time]` seconds, non-decreasing (`solve.fill_times`).
      mask: `[time]` bool, True where observed.
    """
    num_neurons = inputs.shape[-1]
    weights = GRU(config.encoder_dim, learned_initial_state=False).apply(
        {"params": params["gru"]}, num_neurons + 1
    )
    input_gates = inputs @ weights.input_kernel[:num_neurons] + weights.input_bias
    gap_kernel = weights.input_kernel[num_neurons]

    def step(carry, observation):
        h, t_next = carry
        gates, t, observed = observation
        gap = config.time_scale * (t_next - t)
        h_new = gru_step(weights, gates + gap * gap_kernel, h, jnp.inf)
        h = jnp.where(observed, h_new, h)
        return (h, jnp.where(observed, t, t_next)), None

    initial = (jnp.zeros(config.encoder_dim), filled_times[-1])
    (h, _), _ = jax.lax.scan(step, initial, (input_gates, filled_times, mask), reverse=True)
    mean, log_var = jnp.split(h @ params["head"]["kernel"] + params["head"]["bias"], 2)
    return mean, jnp.exp(log_var) + VAR_MIN
