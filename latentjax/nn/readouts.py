"""Observation models of LFADS, written from log-parameters so nothing overflows.

The read-out maps factors `[time, factors]` to `[time, P, neurons]` log-parameters, P per
neuron:
- "poisson": log rate (expected counts per bin).
- "gaussian": mean, log variance.
- "gamma": log concentration a, log rate b (mean a / b); for positive signals.
- "zero_inflated_gamma": log a, log b, logit q: y <= s is a zero with probability 1 - q,
  otherwise y - s ~ Gamma(a, b) (s = `zig_threshold`); mean q (s + a / b). For calcium, EMG.
Log-parameters are clipped to [-LOG_CLIP, LOG_CLIP] before any exponential.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from latentjax.nn.poisson import log_factorial

__all__ = ["READOUTS", "expected_value", "log_likelihood", "num_params"]

READOUTS = ("poisson", "gaussian", "gamma", "zero_inflated_gamma")
LOG_CLIP = 30.0
_NUM_PARAMS = {"poisson": 1, "gaussian": 2, "gamma": 2, "zero_inflated_gamma": 3}


def num_params(readout: str) -> int:
    """Log-parameters per neuron."""
    return _NUM_PARAMS[readout]


def _gamma_log_pdf(y, log_a, log_b):
    a = jnp.exp(log_a)
    y = jnp.maximum(y, 1e-8)
    return a * log_b - jax.scipy.special.gammaln(a) + (a - 1) * jnp.log(y) - jnp.exp(log_b) * y


def log_likelihood(readout: str, log_params, y, threshold: float = 0.0):
    """Elementwise log p(y): `log_params` `[..., P, neurons]`, `y` `[..., neurons]`."""
    p = jnp.clip(log_params, -LOG_CLIP, LOG_CLIP)
    if readout == "poisson":
        log_rate = p[..., 0, :]
        return y * log_rate - jnp.exp(log_rate) - log_factorial(y)
    if readout == "gaussian":
        mean, log_var = p[..., 0, :], p[..., 1, :]
        return -0.5 * (jnp.log(2 * jnp.pi) + log_var + (y - mean) ** 2 * jnp.exp(-log_var))
    if readout == "gamma":
        return _gamma_log_pdf(y, p[..., 0, :], p[..., 1, :])
    log_a, log_b, logit_q = p[..., 0, :], p[..., 1, :], p[..., 2, :]
    nonzero = y > threshold
    return jnp.where(
        nonzero,
        jax.nn.log_sigmoid(logit_q) + _gamma_log_pdf(y - threshold, log_a, log_b),
        jax.nn.log_sigmoid(-logit_q),
    )


def expected_value(readout: str, log_params, threshold: float = 0.0):
    """E[y] `[..., neurons]` from `log_params` `[..., P, neurons]` (rates for "poisson")."""
    p = jnp.clip(log_params, -LOG_CLIP, LOG_CLIP)
    if readout == "poisson":
        return jnp.exp(p[..., 0, :])
    if readout == "gaussian":
        return p[..., 0, :]
    gamma_mean = jnp.exp(p[..., 0, :] - p[..., 1, :])
    if readout == "gamma":
        return gamma_mean
    return jax.nn.sigmoid(p[..., 2, :]) * (threshold + gamma_mean)
