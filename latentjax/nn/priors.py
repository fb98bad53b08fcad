"""Priors of LFADS and their KL terms.

Initial condition: q(z0) = N(mean, diag var) against a learned Gaussian prior N(m, diag v);
the KL is analytic.

Inferred inputs u_t `[time, co_dim]`, q(u_t) = N(mean_t, var_t) given the controller:
- "gaussian" prior: u_t ~ N(m, v) independently over time; analytic KL summed over time.
- "ar1" prior (per input dimension, learned timescale tau and process variance v):
  u_1 ~ N(0, v), u_t | u_{t-1} ~ N(a u_{t-1}, v (1 - a^2)), a = exp(-1 / tau);
  the KL is the one-sample estimate log q(u) - log p(u) at the posterior sample.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["ar1_log_prob", "co_kl", "gaussian_kl", "gaussian_log_prob", "init_priors"]

_LOG_2PI = float(jnp.log(2 * jnp.pi))


def init_priors(ic_dim: int, co_dim: int, co_prior: str) -> dict:
    """Prior parameters: `ic` mean/log-variance and the inputs' prior (`co`)."""
    priors = {"ic": {"mean": jnp.zeros(ic_dim), "log_var": jnp.full(ic_dim, jnp.log(0.1))}}
    if co_dim:
        if co_prior == "ar1":
            priors["co"] = {
                "log_tau": jnp.full(co_dim, jnp.log(10.0)),
                "log_var": jnp.full(co_dim, jnp.log(0.1)),
            }
        else:
            priors["co"] = {"mean": jnp.zeros(co_dim), "log_var": jnp.full(co_dim, jnp.log(0.1))}
    return priors


def gaussian_log_prob(x, mean, var):
    """Elementwise log N(x; mean, var)."""
    return -0.5 * (_LOG_2PI + jnp.log(var) + (x - mean) ** 2 / var)


def gaussian_kl(mean_q, var_q, mean_p, log_var_p):
    """KL(N(mean_q, var_q) || N(mean_p, exp(log_var_p))), summed over all elements."""
    var_p = jnp.exp(log_var_p)
    kl = 0.5 * (log_var_p - jnp.log(var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1.0)
    return jnp.sum(kl)


def ar1_log_prob(u, log_tau, log_var):
    """log p(u) under the AR(1) prior, summed; `u` `[time, co_dim]`."""
    alpha = jnp.exp(-jnp.exp(-log_tau))
    var = jnp.exp(log_var)
    first = gaussian_log_prob(u[0], 0.0, var)
    rest = gaussian_log_prob(u[1:], alpha * u[:-1], var * (1 - alpha**2))
    return jnp.sum(first) + jnp.sum(rest)


def co_kl(prior: dict, co_prior: str, mean, var, sample):
    """KL of the inferred inputs `[time, co_dim]` (posterior mean, variance, sample)."""
    if co_prior == "gaussian":
        return gaussian_kl(mean, var, prior["mean"], prior["log_var"])
    log_q = jnp.sum(gaussian_log_prob(sample, mean, var))
    return log_q - ar1_log_prob(sample, prior["log_tau"], prior["log_var"])
