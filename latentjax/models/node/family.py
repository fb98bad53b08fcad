"""The latent-ODE family contract: `init`, `loss`, `posterior`.

Generative model of one trial, observed at irregular times `t_1 < ... < t_M`, with anchor
time `t_a` (`Config.anchor`: the first observed time `t_1`, or the middle one):

    z(t_a) ~ N(0, I),   dz/ds = f_theta(z)  (s = time_scale * (t - t_a)),
    y(t_i) ~ Poisson(exp(C z(t_i) + d))   or   N(C z(t_i) + d, diag(exp(log_var)))

with `f_theta` an MLP (`vector_field`) solved by diffrax forward and backward from `t_a`
(`solve`) and the posterior `q(z(t_a) | y)` from GRUs over (observation, time gap) pairs
(`encoder`).

Parameters: `{"encoder": ..., "field": {"layers": ...}, "readout": {"kernel" [K, N],
"bias" [N] (, "log_var" [N] for the Gaussian read-out)}}`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from latentjax.data import Trials
from latentjax.models._bin_dropout import bin_dropout
from latentjax.models._linear_readout import init_readout, readout_log_params
from latentjax.models.lfads import readouts
from latentjax.models.lfads.priors import gaussian_kl
from latentjax.models.node.config import Config
from latentjax.models.node.encoder import encode, init_encoder
from latentjax.models.node.solve import fill_times, integrate_both_ways, raise_on_failure
from latentjax.models.node.vector_field import apply_field, init_field
from latentjax.results import Posterior
from latentjax.train.schedules import ramp

__all__ = ["init", "loss", "posterior", "validation_loss"]


def _check_trials(config: Config, trials: Trials, where: str) -> None:
    if not isinstance(trials, Trials):
        raise ValueError(f"node.{where}: `trials` must be a Trials, got {type(trials).__name__}")
    if trials.continuous and config.readout == "poisson":
        raise ValueError(f"node.{where}: continuous signals need readout='gaussian', not 'poisson'")


def init(key, config: Config, trials: Trials) -> dict:
    """Parameters; the read-out bias starts at each neuron's marginal mean (and variance)."""
    _check_trials(config, trials, "init")
    encoder_key, field_key, readout_key = jax.random.split(key, 3)
    readout = init_readout(readout_key, config.latent_dim, trials, config.readout)
    return {
        "encoder": init_encoder(encoder_key, config, trials.num_neurons),
        "field": init_field(field_key, config),
        "readout": readout,
    }


def _encoder_inputs(config: Config, spikes):
    return jnp.log1p(spikes) if config.readout == "poisson" else spikes


def _trial_terms(params, spikes, times, mask, key, config: Config, training: bool) -> dict:
    """Loss terms of one trial `[time, neurons]`; a failed solve contributes nothing.

    `training` with `cd_rate > 0` (coordinated dropout over bins): a random `cd_rate` of the
    observed bins is hidden from the encoder and only those bins are scored (weight
    `1 / cd_rate`); otherwise the encoder sees and the loss scores every observed bin."""
    hidden_key, noise_key = jax.random.split(key)
    seen, weight = bin_dropout(hidden_key, mask, config.cd_rate, training)
    filled, _ = fill_times(times, mask)
    inputs = _encoder_inputs(config, spikes)
    mean, var, anchor = encode(params["encoder"], config, inputs, filled, seen)
    initial = mean + jnp.sqrt(var) * jax.random.normal(noise_key, mean.shape)
    t_anchor = filled[anchor]
    solution = integrate_both_ways(
        apply_field, params["field"], initial, config.time_scale * (filled - t_anchor), config
    )
    log_params = readout_log_params(params["readout"], config.readout, solution.states)
    log_lik = readouts.log_likelihood(config.readout, log_params, spikes)
    kept = ~solution.failed
    zeros = jnp.zeros_like(mean)
    return {
        "recon": jnp.where(kept, -jnp.sum(log_lik * weight[:, None]), 0.0),
        "kl": jnp.where(kept, gaussian_kl(mean, var, zeros, zeros), 0.0),
        "entries": jnp.where(kept, jnp.sum(mask) * spikes.shape[-1], 0.0),
        "failed": solution.failed,
        "max_steps_reached": solution.max_steps_reached,
        "reached": t_anchor + solution.reached / config.time_scale,
        "end": t_anchor + solution.end / config.time_scale,
    }


def _loss(params, batch: Trials, key, config: Config, kl_weight, training: bool):
    keys = jax.random.split(key, batch.spikes.shape[0])
    terms = jax.vmap(_trial_terms, in_axes=(None, 0, 0, 0, 0, None, None))(
        params,
        jnp.asarray(batch.spikes, jnp.float32),
        jnp.asarray(batch.times, jnp.float32),
        jnp.asarray(batch.mask),
        keys,
        config,
        training,
    )
    if config.throw:
        raise_failed = functools.partial(
            raise_on_failure, max_steps=config.max_steps, solver=config.solver,
            where="minibatch trial",
        )  # fmt: skip
        jax.debug.callback(
            raise_failed,
            terms["failed"],
            terms["reached"],
            terms["end"],
            terms["max_steps_reached"],
        )
    entries = jnp.maximum(jnp.sum(terms["entries"]), 1.0)
    recon = jnp.sum(terms["recon"]) / entries
    kl = jnp.sum(terms["kl"]) / entries
    aux = {
        "recon": recon,
        "kl": kl,
        "solver_failures": jnp.mean(terms["failed"].astype(jnp.float32)),
    }
    return recon + config.kl_scale * kl_weight * kl, aux


def loss(params, batch: Trials, key, config: Config, step) -> tuple[jax.Array, dict]:
    """Negative ELBO per observed entry with a KL ramp (see `Config`), under coordinated
    dropout when `cd_rate > 0`.

    Returns (scalar, aux) with aux `recon` and `kl` (per entry, unweighted) and
    `solver_failures` (fraction of the minibatch whose solve failed; those trials are left
    out). With `config.throw` a failed solve raises `SolverError` instead.
    """
    kl_weight = ramp(step, start=0, length=config.kl_ramp_steps)
    return _loss(params, batch, key, config, kl_weight, training=True)


def validation_loss(params, batch: Trials, key, config: Config, step) -> tuple[jax.Array, dict]:
    """`loss` with the KL at its full weight, whatever the step (validation values stay
    comparable across the KL ramp, so early stopping does not pick a step inside it), and
    without coordinated dropout (every observed bin seen and scored)."""
    del step
    return _loss(params, batch, key, config, 1.0, training=False)


def _refine_anchor(params, spikes, filled, mask, t_anchor, mean, config: Config, steps, lr):
    """MAP estimate `[latent_dim]` of one trial's anchor state: `steps` Adam steps (learning
    rate `lr`) on `-log p(y | z) - log N(z; 0, I)` over the observed bins, from the encoder's
    mean `mean` (semi-amortised inference: closes part of the encoder's amortisation gap).
    Falls back to `mean` if the refined state or its trajectory is not finite."""
    s = config.time_scale * (filled - t_anchor)

    def objective(state):
        solution = integrate_both_ways(apply_field, params["field"], state, s, config)
        log_params = readout_log_params(params["readout"], config.readout, solution.states)
        log_lik = readouts.log_likelihood(config.readout, log_params, spikes)
        value = -jnp.sum(log_lik * mask[:, None]) + 0.5 * jnp.sum(state**2)
        return jnp.where(solution.failed, jnp.inf, value)

    optimizer = optax.adam(lr)

    def step(carry, _):
        state, opt_state = carry
        updates, opt_state = optimizer.update(jax.grad(objective)(state), opt_state)
        return (optax.apply_updates(state, updates), opt_state), None

    (refined, _), _ = jax.lax.scan(step, (mean, optimizer.init(mean)), length=steps)
    keep = jnp.isfinite(objective(refined)) & (objective(refined) <= objective(mean))
    return jnp.where(keep, refined, mean)


def _trial_posterior(
    params, spikes, times, mask, query_times, noise, refine_lr, config: Config, refine_steps: int
) -> dict:
    """Latents and read-out means at `query_times` `[Q]` (any increasing times, seconds) of
    one trial, averaged over anchor states `mean + sqrt(var) * noise` (`noise` `[S, K]`;
    zeros: the posterior mean; `mean` refined by `_refine_anchor` if `refine_steps > 0`).

    Times before the anchor observation are reached by a backward solve, times after it by a
    forward one."""
    filled, _ = fill_times(times, mask)
    mean, var, anchor = encode(
        params["encoder"], config, _encoder_inputs(config, spikes), filled, mask
    )
    t_anchor = filled[anchor]
    if refine_steps:
        mean = _refine_anchor(
            params, spikes, filled, mask, t_anchor, mean, config, refine_steps, refine_lr
        )
    s = config.time_scale * (query_times - t_anchor)

    def sample_path(state):
        solution = integrate_both_ways(apply_field, params["field"], state, s, config)
        log_params = readout_log_params(params["readout"], config.readout, solution.states)
        return solution, readouts.expected_value(config.readout, log_params)

    solutions, rates = jax.vmap(sample_path)(mean + jnp.sqrt(var) * noise)
    failed = jnp.any(solutions.failed)
    first_failed = jnp.argmax(solutions.failed)
    return {
        "latents": jnp.where(failed, jnp.nan, solutions.states.mean(0)),
        "rates": jnp.where(failed, jnp.nan, rates.mean(0)),
        "initial_mean": mean,
        "initial_var": var,
        "anchor_time": t_anchor,
        "failed": failed,
        "max_steps_reached": solutions.max_steps_reached[first_failed],
        "reached": t_anchor + solutions.reached[first_failed] / config.time_scale,
        "end": t_anchor + solutions.end[first_failed] / config.time_scale,
    }


_batched_posterior = jax.jit(
    jax.vmap(_trial_posterior, in_axes=(None, 0, 0, 0, 0, 0, None, None, None)),
    static_argnames=("config", "refine_steps"),
)


def _query_times(trials: Trials, times) -> np.ndarray:
    if times is None:
        filled, _ = jax.vmap(fill_times)(jnp.asarray(trials.times), jnp.asarray(trials.mask))
        return np.asarray(filled, np.float64)
    times = np.asarray(times, np.float64)
    if times.ndim == 1:
        times = np.broadcast_to(times, (trials.num_trials, times.shape[0]))
    if times.ndim != 2 or times.shape[0] != trials.num_trials or times.shape[1] == 0:
        raise ValueError(
            f"node.posterior: `times` must be [time] or [trials, time] = "
            f"[{trials.num_trials}, time] seconds, got shape {times.shape}"
        )
    if not np.isfinite(times).all():
        raise ValueError("node.posterior: `times` holds NaN or Inf")
    if (np.diff(times, axis=1) <= 0).any():
        trial = int(np.argwhere((np.diff(times, axis=1) <= 0).any(1))[0, 0])
        raise ValueError(f"node.posterior: `times` must increase strictly; trial {trial} does not")
    return times


def posterior(
    params,
    trials: Trials,
    config: Config,
    key,
    *,
    times=None,
    num_samples: int = 1,
    refine_steps: int = 0,
    refine_lr: float = 0.05,
) -> Posterior:
    """Latent trajectories and rates of `trials`, at their own bins or at any `times`.

    The trajectory starts from the posterior mean of the initial state (deterministic; `key`
    is unused), or, with `num_samples > 1`, latents and rates are averaged over that many
    trajectories from anchor states drawn from `q(z(t_a) | y)` (the posterior predictive
    mean). Each is solved forward and backward from the anchor observation, so `times` may
    interpolate between observations and extrapolate before and after them.

    Args:
      params, config: a fitted model (`FitResult.params`, `FitResult.config`).
      trials: `Trials` `[trials, time, neurons]` (irregular `times` and `mask` allowed).
      key: draws the initial states when `num_samples > 1` (unused otherwise).
      times: None (each trial's own `Trials.times`; unobserved bins get the last observed
        time before them), `[query]` seconds shared by all trials, or `[trials, query]`;
        strictly increasing.
      num_samples: initial states to average over; 1 uses the posterior mean.
      refine_steps: Adam steps that refine each trial's anchor state from the encoder's mean
        to the MAP of `p(y | z) N(z; 0, I)` on the trial's observed bins (0: the encoder's
        mean, fully amortised); `refine_lr` is their learning rate.

    Returns:
      `Posterior` with `latents` `[trials, query, latent_dim]`, `rates` `[trials, query,
      neurons]` (expected counts per bin; the mean signal for the Gaussian read-out), extras
      `times` `[trials, query]`, `initial_mean` (refined, with `refine_steps`) and
      `initial_var` `[trials, latent_dim]` of the anchor state, `anchor_time` `[trials]`
      (seconds),
      `failed` `[trials]` (with `throw=False`: failed trials hold NaN).

    Raises:
      SolverError: a solve failed and `config.throw` is True.
    """
    _check_trials(config, trials, "posterior")
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"node.posterior: `num_samples` must be an int >= 1, got {num_samples!r}")
    num_neurons = params["readout"]["bias"].shape[0]
    if trials.num_neurons != num_neurons:
        raise ValueError(
            f"node.posterior: `trials` has {trials.num_neurons} neurons, the model {num_neurons}"
        )
    if not isinstance(refine_steps, int) or isinstance(refine_steps, bool) or refine_steps < 0:
        raise ValueError(
            f"node.posterior: `refine_steps` must be an int >= 0, got {refine_steps!r}"
        )
    if not refine_lr > 0:
        raise ValueError(f"node.posterior: `refine_lr` must be > 0, got {refine_lr!r}")
    query = _query_times(trials, times)
    noise_shape = (trials.num_trials, num_samples, config.latent_dim)
    if num_samples == 1:
        noise = jnp.zeros(noise_shape)
    else:
        noise = jax.random.normal(key, noise_shape)
    out = _batched_posterior(
        params,
        jnp.asarray(trials.spikes, jnp.float32),
        jnp.asarray(trials.times, jnp.float32),
        jnp.asarray(trials.mask),
        jnp.asarray(query, jnp.float32),
        noise,
        jnp.float32(refine_lr),
        config,
        refine_steps,
    )
    out = jax.tree.map(np.asarray, out)
    if config.throw:
        raise_on_failure(
            out["failed"], out["reached"], out["end"], out["max_steps_reached"],
            max_steps=config.max_steps, solver=config.solver, where="trial",
        )  # fmt: skip
    extras = {
        "times": query,
        "initial_mean": out["initial_mean"],
        "initial_var": out["initial_var"],
        "anchor_time": out["anchor_time"],
        "failed": out["failed"],
    }
    return Posterior(latents=out["latents"], rates=out["rates"], extras=extras)
