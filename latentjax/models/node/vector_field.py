"""The learned vector field: an MLP `dz/ds = f(z)` with tanh hidden layers.

    h_0 = z,   h_l = tanh(W_l h_{l-1} + b_l)  (l = 1..depth),   f(z) = W_out h_depth + b_out

The output layer starts small (scaled by 0.1) so the initial flow is slow and smooth.
Parameters are a dict `{"layers": ({"kernel", "bias"}, ...)}`; `apply_field(params, z)` is
pure, so the solver receives the parameters as `args` (what the adjoint method needs).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from latentjax.models.node.config import Config

__all__ = ["apply_field", "init_field", "scaled_field", "vector_field"]


def init_field(key, config: Config) -> dict:
    """MLP parameters: `depth` hidden layers of `hidden_dim`, then `latent_dim` outputs."""
    sizes = [config.latent_dim] + [config.hidden_dim] * config.depth + [config.latent_dim]
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for index, (key_l, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        scale = (0.1 if index == len(sizes) - 2 else 1.0) / jnp.sqrt(fan_in)
        kernel = scale * jax.random.normal(key_l, (fan_in, fan_out))
        layers.append({"kernel": kernel, "bias": jnp.zeros(fan_out)})
    return {"layers": tuple(layers)}


def apply_field(params: dict, state):
    """`dz/ds` `[latent_dim]` at `state` `[latent_dim]` (ODE time units)."""
    hidden = state
    *inner, last = params["layers"]
    for layer in inner:
        hidden = jnp.tanh(hidden @ layer["kernel"] + layer["bias"])
    return hidden @ last["kernel"] + last["bias"]


def scaled_field(state, field_params: dict, time_scale):
    """`dz/dt` `[latent_dim]` per second of `Trials.times` (the field times `time_scale`)."""
    return time_scale * apply_field(field_params, state)


def vector_field(params: dict, config: Config) -> Callable:
    """The learned field as a pure function `state [latent_dim] -> dz/dt [latent_dim]`.

    In units per second of `Trials.times` (the solve's `time_scale` folded in), usable by
    `lj.geometry.fixed_points`.

    Args:
      params: fitted parameters (`FitResult.params`), or their `"field"` entry.
      config: the model's `Config`.

    Examples:
      With `result = lj.fit(node.Config(), trials)` and `post = lj.infer(result, trials)`
      (minutes of training, so doctests skip these lines):

      >>> field = vector_field(result.params, result.config)     # doctest: +SKIP
      >>> found = lj.geometry.fixed_points(field, post.latents)  # doctest: +SKIP
    """
    if not isinstance(config, Config):
        raise ValueError(f"node.vector_field: `config` must be a node.Config, got {config!r}")
    if not isinstance(params, dict) or ("field" not in params and "layers" not in params):
        raise ValueError("node.vector_field: `params` must be the node model's parameters")
    field_params = params.get("field", params)

    def flow(state):
        return scaled_field(state, field_params, config.time_scale)

    return flow
