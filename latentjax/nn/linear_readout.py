"""The linear read-out shared by the sequential VAE and the latent neural ODE.

log-rate (Poisson) or mean (Gaussian) = latents @ kernel + bias,  Gaussian log-variance
per neuron; parameters `{"kernel": [K, N], "bias": [N](, "log_var": [N])}`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["init_readout", "readout_log_params"]


def init_readout(key, latent_dim: int, trials, readout: str) -> dict:
    """Read-out parameters; the bias starts at each neuron's marginal mean (and variance)."""
    observed = np.asarray(trials.spikes)[np.asarray(trials.mask)]  # [observed bins, N]
    mean = observed.mean(0)
    kernel = 0.3 * jax.random.normal(key, (latent_dim, trials.num_neurons)) / np.sqrt(latent_dim)
    params = {"kernel": kernel}
    if readout == "poisson":
        params["bias"] = jnp.asarray(np.log(mean + 1e-3), jnp.float32)
    else:
        params["bias"] = jnp.asarray(mean, jnp.float32)
        params["log_var"] = jnp.asarray(np.log(observed.var(0) + 1e-3), jnp.float32)
    return params


def readout_log_params(params: dict, readout: str, latents):
    """Read-out log-parameters `[time, P, neurons]` (the layout of `lfads.readouts`)."""
    mean = latents @ params["kernel"] + params["bias"]
    if readout == "poisson":
        return mean[:, None, :]
    return jnp.stack([mean, jnp.broadcast_to(params["log_var"], mean.shape)], axis=1)
