"""The LFADS network for one trial (Flax linen); the family vmaps it over trials.

Given encoder inputs x `[enc_bins, input_dim]` and explicit noise (posterior draws and dropout
multipliers, see `Noise`), so that the network is a deterministic function:

    e_fwd, e_bwd = GRU_ic_fwd(x), GRU_ic_bwd(x)                    initial-condition encoder
    ic_mean, ic_logvar = W_ic [e_fwd(T_enc), e_bwd(1)] + b_ic
    z0 = ic_mean + sqrt(exp(ic_logvar) + ic_var_min) * eps_ic;  g_0 = W_g0 z0 + b_g0
    c_t = [c_fwd(t - lag), c_bwd(t + lag)]                         controller-input encoder
    f_0 = W_fac g_0
    for t = 1..T (a lax.scan):
        h_t = GRU_con([c_t, f_{t-1}], h_{t-1})                     controller
        co_mean_t, co_logvar_t = W_co h_t + b_co
        u_t = co_mean_t + sqrt(exp(co_logvar_t) + co_var_min) * eps_co_t   inferred input
        g_t = clip(GRU_gen([u_t, ext_t], g_{t-1}))                 generator
        f_t = W_fac g_t                                            factors

GRU (input gates precomputed for whole sequences outside the scan):
    r = sigma(W_r x + b_r + U_r h + c_r),  z = sigma(W_z x + b_z + U_z h + c_z)
    n = tanh(W_n x + b_n + r * (U_n h + c_n)),  h' = clip(z h + (1 - z) n, -clip, clip)
`W_fac` has unit-norm columns (one column per factor), no bias.

Causal variant (`Architecture.causal`, `lfads.Config(causal=True)`): no initial-condition
encoder (the posterior of z0 is a learned Gaussian, so g_0 knows nothing of the trial) and a
forward-only controller-input encoder, c_t = c_fwd(t - lag): every factor f_t depends on bins
up to t only, and the network runs one bin at a time (`lfads.causal_filter`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from latentjax.nn.recurrent import GRU, add_gates, gru_step, run_gru, split_gates

__all__ = ["Architecture", "Core", "CoreOutputs", "Noise"]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The static sizes of the shared core (derived from `Config`)."""

    input_dim: int
    ext_dim: int
    ic_enc_dim: int
    ci_enc_dim: int
    con_dim: int
    co_dim: int
    ic_dim: int
    gen_dim: int
    fac_dim: int
    ci_lag: int
    cell_clip: float
    ic_post_var_min: float
    co_post_var_min: float
    causal: bool = False

    @property
    def ci_width(self) -> int:
        """Width of the controller's encoder input: both directions, or forward only."""
        return self.ci_enc_dim if self.causal else 2 * self.ci_enc_dim


class Noise(NamedTuple):
    """Posterior draws and dropout multipliers for one trial (ones: no dropout)."""

    ic: jax.Array  # [ic_dim] standard normal
    co: jax.Array  # [bins, co_dim] standard normal
    input_keep: jax.Array  # [enc_bins, input_dim]
    ic_keep: jax.Array  # [2 * ic_enc_dim]
    ci_keep: jax.Array  # [enc_bins, 2 * ci_enc_dim]
    gen_keep: jax.Array  # [bins, gen_dim]


class CoreOutputs(NamedTuple):
    factors: jax.Array  # [bins, fac_dim]
    ic_mean: jax.Array  # [ic_dim]
    ic_var: jax.Array  # [ic_dim]
    initial_state: jax.Array  # [gen_dim] g_0
    co_mean: jax.Array  # [bins, co_dim]
    co_var: jax.Array  # [bins, co_dim]
    inputs: jax.Array  # [bins, co_dim] sampled u_t


def _dense(module: nn.Module, name: str, in_dim: int, out_dim: int, bias: bool = True):
    kernel = module.param(f"{name}_kernel", nn.initializers.lecun_normal(), (in_dim, out_dim))
    if not bias:
        return kernel, jnp.zeros(out_dim, kernel.dtype)
    return kernel, module.param(f"{name}_bias", nn.initializers.zeros, (out_dim,))


def _shift(states, lag: int, forward: bool):
    """Delay (forward) or advance (backward) a `[time, dims]` sequence by `lag` bins."""
    if lag == 0:
        return states
    pad = jnp.zeros((lag, states.shape[-1]), states.dtype)
    if forward:
        return jnp.concatenate([pad, states[:-lag]])
    return jnp.concatenate([states[lag:], pad])


class Core(nn.Module):
    """Encoders, controller and generator shared by all sessions (one trial, no batch axis)."""

    arch: Architecture

    @nn.compact
    def __call__(self, x, ext, noise: Noise) -> CoreOutputs:
        """`x` `[enc_bins, input_dim]`, `ext` `[bins, ext_dim]`; bins >= enc_bins."""
        a = self.arch
        num_bins = noise.gen_keep.shape[0]
        clip = a.cell_clip
        x = x * noise.input_keep

        if a.causal:  # no initial condition from the data (it would come from the future)
            ic_params = self.param("ic_causal", nn.initializers.zeros, (2 * a.ic_dim,))
            ic_mean, ic_logvar = jnp.split(ic_params, 2)
        else:
            ic_fwd = run_gru(GRU(a.ic_enc_dim, name="ic_enc_fwd")(a.input_dim), x, clip)
            ic_bwd = run_gru(GRU(a.ic_enc_dim, name="ic_enc_bwd")(a.input_dim), x, clip, True)
            ic_enc = jnp.concatenate([ic_fwd[-1], ic_bwd[0]]) * noise.ic_keep
            w_ic, b_ic = _dense(self, "ic", 2 * a.ic_enc_dim, 2 * a.ic_dim)
            ic_mean, ic_logvar = jnp.split(ic_enc @ w_ic + b_ic, 2)
        ic_var = jnp.exp(ic_logvar) + a.ic_post_var_min
        w_g0, b_g0 = _dense(self, "ic_to_g0", a.ic_dim, a.gen_dim)
        g0 = (ic_mean + jnp.sqrt(ic_var) * noise.ic) @ w_g0 + b_g0

        w_fac, _ = _dense(self, "factors", a.gen_dim, a.fac_dim, bias=False)
        w_fac = w_fac / jnp.linalg.norm(w_fac, axis=0, keepdims=True)
        gen = GRU(a.gen_dim, False, name="generator")(a.co_dim + a.ext_dim)
        ext_gates = jnp.zeros((num_bins, 3 * a.gen_dim)) + gen.input_bias
        if a.ext_dim:
            ext_gates = ext_gates + ext @ gen.input_kernel[a.co_dim :]
        f0 = (g0 * noise.gen_keep[0]) @ w_fac

        if a.co_dim == 0:

            def step(g, inputs):
                gates, keep = inputs
                g = gru_step(gen, gates, g, clip)
                return g, (g, (g * keep) @ w_fac)

            _, (_, factors) = jax.lax.scan(step, g0, (split_gates(ext_gates), noise.gen_keep))
            empty = jnp.zeros((num_bins, 0))
            return CoreOutputs(factors, ic_mean, ic_var, g0, empty, empty, empty)

        ci_fwd = run_gru(GRU(a.ci_enc_dim, name="ci_enc_fwd")(a.input_dim), x, clip)
        if a.causal:  # forward encoder only: the controller at t sees bins up to t - lag
            ci = _shift(ci_fwd, a.ci_lag, True) * noise.ci_keep[:, : a.ci_width]
        else:
            ci_bwd = run_gru(GRU(a.ci_enc_dim, name="ci_enc_bwd")(a.input_dim), x, clip, True)
            ci = jnp.concatenate(
                [_shift(ci_fwd, a.ci_lag, True), _shift(ci_bwd, a.ci_lag, False)], axis=-1
            )
            ci = ci * noise.ci_keep
        ci = jnp.concatenate([ci, jnp.zeros((num_bins - ci.shape[0], ci.shape[1]))])
        con = GRU(a.con_dim, name="controller")(a.ci_width + a.fac_dim)
        ci_gates = ci @ con.input_kernel[: a.ci_width] + con.input_bias
        w_fac_to_con = con.input_kernel[a.ci_width :]
        w_co, b_co = _dense(self, "co", a.con_dim, 2 * a.co_dim)
        w_u_to_gen = gen.input_kernel[: a.co_dim]

        def step(carry, inputs):
            h, g, f = carry
            ci_gates_t, ext_gates_t, eps, keep = inputs
            h = gru_step(con, add_gates(ci_gates_t, f @ w_fac_to_con), h, clip)
            co_mean, co_logvar = jnp.split(h @ w_co + b_co, 2)
            co_var = jnp.exp(co_logvar) + a.co_post_var_min
            u = co_mean + jnp.sqrt(co_var) * eps
            g = gru_step(gen, add_gates(ext_gates_t, u @ w_u_to_gen), g, clip)
            f = (g * keep) @ w_fac
            return (h, g, f), (f, co_mean, co_var, u)

        carry = (con.initial_state, g0, f0)
        xs = (split_gates(ci_gates), split_gates(ext_gates), noise.co, noise.gen_keep)
        _, (factors, co_mean, co_var, inputs) = jax.lax.scan(step, carry, xs)
        return CoreOutputs(factors, ic_mean, ic_var, g0, co_mean, co_var, inputs)
