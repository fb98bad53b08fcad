"""The latent-ODE family contract: `init`, `loss`, `posterior`.

Generative model of one trial, observed at irregular times `t_1 < ... < t_M`. With one
segment (the default) the state at one anchor time `t_a` (`Config.anchor`: the first
observed time, or the middle one) sets the whole trajectory:

    z(t_a) ~ N(0, I),   dz/ds = f_theta(z)  (s = time_scale * (t - t_a)),
    y(t_i) ~ Poisson(exp(C z(t_i) + d))   or   N(C z(t_i) + d, diag(exp(log_var)))

With `segments = S > 1` (multiple shooting; Iakovlev et al. 2023, "Latent neural ODEs with
sparse Bayesian multiple shooting") the observations are cut into S chunks with anchors
`t_a1 < ... < t_aS`, each anchor has its own state, each time is read from the solve of its
nearest anchor, and consecutive anchor states are tied by the continuity prior

    z(t_a1) ~ N(0, I),   z(t_ak) ~ N(phi(z(t_a(k-1)), t_ak - t_a(k-1)), continuity_std² I)

(`phi`: the flow of `f_theta`), so no solve spans more than about two chunks and errors in a
state grow over a short horizon only. `f_theta` is an MLP (`vector_field`) solved by diffrax
(`solve`); the mean-field posterior `q(z(t_ak) | y)` comes from GRUs over (observation, time
gap) pairs (`encoder`).

Parameters: `{"encoder": ..., "field": {"layers": ...}, "readout": {"kernel" [K, N],
"bias" [N] (, "log_var" [N] for the Gaussian read-out)}}`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from latentjax.data import Trials
from latentjax.models.node.config import Config
from latentjax.models.node.encoder import encode, init_encoder
from latentjax.models.node.solve import fill_times, integrate_segments, raise_on_failure
from latentjax.models.node.vector_field import apply_field, init_field, scaled_field
from latentjax.nn import readouts
from latentjax.nn.bin_dropout import bin_dropout
from latentjax.nn.linear_readout import init_readout, readout_log_params
from latentjax.nn.priors import gaussian_kl, gaussian_log_prob
from latentjax.nn.refine import check_refine_options, refine_to_map
from latentjax.results import LearnedDynamics, Posterior
from latentjax.train.schedules import ramp

__all__ = ["adapt", "dynamics", "init", "loss", "posterior", "validation_loss"]

SPAN_IN_ODE_TIME = 10.0
"""ODE time units that the median trial spans when `Config.time_scale` is None (the value
the Lorenz benchmark was tuned at, for 1 s trials; in a one-off run on 100 of those trials
with 70% of bins dropped, the rate R² at dropped bins after 2000 steps was 0.32 at time
scale 1, the old default, and 0.55 at 10)."""


def _check_trials(config: Config, trials: Trials, where: str) -> None:
    if not isinstance(trials, Trials):
        raise ValueError(f"node.{where}: `trials` must be a Trials, got {type(trials).__name__}")
    if trials.continuous and config.readout == "poisson":
        raise ValueError(f"node.{where}: continuous signals need readout='gaussian', not 'poisson'")


def _check_time_scale(config: Config, where: str) -> None:
    if config.time_scale is None:
        raise ValueError(
            f"node.{where}: `time_scale` is None (set from the data by lj.fit); give a number "
            "or call lj.models.node.adapt(config, trials) first"
        )


def adapt(config: Config, trials: Trials) -> Config:
    """`config` with `time_scale` None set from the data: the median span of the trials'
    observed times becomes `SPAN_IN_ODE_TIME` ODE time units (so the field's speed is of
    order one whatever the trial length); a given `time_scale` is kept.

    Examples:
      >>> import numpy as np, latentjax as lj
      >>> trials = lj.Trials(np.zeros((2, 51, 3)), dt=0.01)    # trials of 0.5 s
      >>> adapt(lj.models.node.Config(), trials).time_scale
      20.0
    """
    if config.time_scale is not None:
        return config
    _check_trials(config, trials, "adapt")
    times, mask = np.asarray(trials.times), np.asarray(trials.mask)
    spans = [t[m].max() - t[m].min() for t, m in zip(times, mask, strict=True) if m.sum() > 1]
    span = float(np.median(spans)) if spans else 0.0
    if not span > 0:
        raise ValueError(
            "node.adapt: no trial has two observed bins to set `time_scale` from; give it"
        )
    return dataclasses.replace(config, time_scale=float(f"{SPAN_IN_ODE_TIME / span:.3g}"))


def init(key, config: Config, trials: Trials) -> dict:
    """Parameters; the read-out bias starts at each neuron's marginal mean (and variance)."""
    _check_trials(config, trials, "init")
    _check_time_scale(config, "init")
    encoder_key, field_key, readout_key = jax.random.split(key, 3)
    readout = init_readout(readout_key, config.latent_dim, trials, config.readout)
    return {
        "encoder": init_encoder(encoder_key, config, trials.num_neurons),
        "field": init_field(field_key, config),
        "readout": readout,
    }


def _encoder_inputs(config: Config, spikes):
    return jnp.log1p(spikes) if config.readout == "poisson" else spikes


def _solve(params, states, t_anchors, active, times, config: Config):
    """Trajectory `[time, latent_dim]` at `times` (seconds) from the anchor states `[segments,
    latent_dim]` at `t_anchors` (seconds), and each segment's state carried to the next anchor
    (`solve.integrate_segments`); ODE time counts from the first anchor. Returns
    `(solution, ends, t_first_anchor)`."""
    t_first = t_anchors[0]
    solution, ends = integrate_segments(
        apply_field,
        params["field"],
        states,
        config.time_scale * (t_anchors - t_first),
        active,
        config.time_scale * (times - t_first),
        config,
    )
    return solution, ends, t_first


_segment_kl = jax.vmap(gaussian_kl, in_axes=(0, 0, 0, None))


def _anchor_kl(mean, var, ends, active, config: Config):
    """KL of `q(z(t_k))` `[segments, latent_dim]` from the prior: N(0, I) at the first anchor,
    N(ends[k - 1], continuity_std² I) at each later active one (`ends`: the previous segment's
    drawn state carried to this anchor)."""
    first = gaussian_kl(mean[0], var[0], 0.0, 0.0)
    log_var = 2.0 * jnp.log(config.continuity_std)
    later = _segment_kl(mean[1:], var[1:], ends[:-1], log_var)
    return first + jnp.sum(jnp.where(active[1:], later, 0.0))


def _continuity_penalty(states, ends, active, config: Config):
    """`-log` of the multiple-shooting prior of the anchor states (that of `_anchor_kl`)."""
    first = jnp.sum(gaussian_log_prob(states[0], 0.0, 1.0))
    later = jnp.sum(gaussian_log_prob(states[1:], ends[:-1], config.continuity_std**2), axis=-1)
    return -first - jnp.sum(jnp.where(active[1:], later, 0.0))


def _trial_terms(params, spikes, times, mask, key, config: Config, training: bool) -> dict:
    """Loss terms of one trial `[time, neurons]`; a failed solve contributes nothing.

    `training` with `cd_rate > 0` (coordinated dropout over bins): a random `cd_rate` of the
    observed bins is hidden from the encoder and only those bins are scored (weight
    `1 / cd_rate`); otherwise the encoder sees and the loss scores every observed bin."""
    hidden_key, noise_key = jax.random.split(key)
    seen, weight = bin_dropout(hidden_key, mask, config.cd_rate, training)
    filled, _ = fill_times(times, mask)
    inputs = _encoder_inputs(config, spikes)
    mean, var, anchors, active = encode(params["encoder"], config, inputs, filled, seen)
    states = mean + jnp.sqrt(var) * jax.random.normal(noise_key, mean.shape)
    solution, ends, t_first = _solve(params, states, filled[anchors], active, filled, config)
    log_params = readout_log_params(params["readout"], config.readout, solution.states)
    log_lik = readouts.log_likelihood(config.readout, log_params, spikes)
    kept = ~solution.failed
    return {
        "recon": jnp.where(kept, -jnp.sum(log_lik * weight[:, None]), 0.0),
        "kl": jnp.where(kept, _anchor_kl(mean, var, ends, active, config), 0.0),
        "entries": jnp.where(kept, jnp.sum(mask) * spikes.shape[-1], 0.0),
        "failed": solution.failed,
        "max_steps_reached": solution.max_steps_reached,
        "reached": t_first + solution.reached / config.time_scale,
        "end": t_first + solution.end / config.time_scale,
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
    entries = jnp.maximum(jnp.sum(terms["entries"]), 1.0)
    recon = jnp.sum(terms["recon"]) / entries
    kl = jnp.sum(terms["kl"]) / entries
    aux = {
        "recon": recon,
        "kl": kl,
        "solver_failures": jnp.mean(terms["failed"].astype(jnp.float32)),
    }
    value = recon + config.kl_scale * kl_weight * kl
    if config.throw:  # a failed step: the engine skips it and stops the member
        value = jnp.where(jnp.any(terms["failed"]), jnp.nan, value)
    return value, aux


def loss(params, batch: Trials, key, config: Config, step) -> tuple[jax.Array, dict]:
    """Negative ELBO per observed entry with a KL ramp (see `Config`), under coordinated
    dropout when `cd_rate > 0`.

    Returns (scalar, aux) with aux `recon` and `kl` (per entry, unweighted) and
    `solver_failures` (fraction of the minibatch whose solve failed). Without
    `config.throw` the failed trials are left out; with it the loss is NaN, and a NaN loss
    with `solver_failures` > 0 makes the engine skip the step and mark the member failed at
    once, with the reason in `metrics.jsonl` (a population's other members go on; a single
    fit stops with `NonFiniteError`). Raising from inside the compiled step would stop a
    whole population.
    """
    if config.adjoint == "forward":
        raise ValueError(
            "node.loss: adjoint='forward' gives forward-mode derivatives only and cannot train; "
            "use adjoint='recursive' or 'backsolve'"
        )
    kl_weight = ramp(step, start=0, length=config.kl_ramp_steps)
    return _loss(params, batch, key, config, kl_weight, training=True)


def validation_loss(params, batch: Trials, key, config: Config, step) -> tuple[jax.Array, dict]:
    """`loss` with the KL at its full weight, whatever the step (validation values stay
    comparable across the KL ramp, so early stopping does not pick a step inside it), and
    without coordinated dropout (every observed bin seen and scored)."""
    del step
    return _loss(params, batch, key, config, 1.0, training=False)


def _neg_log_joint(params, spikes, filled, mask, t_anchors, active, states, config: Config):
    """`-log p(y, z)` of one trial's observed bins and anchor states `z` `[segments,
    latent_dim]` (`p(z)`: the prior of `_anchor_kl`); inf where the solve fails."""
    solution, ends, _ = _solve(params, states, t_anchors, active, filled, config)
    log_params = readout_log_params(params["readout"], config.readout, solution.states)
    log_lik = readouts.log_likelihood(config.readout, log_params, spikes)
    value = -jnp.sum(log_lik * mask[:, None]) + _continuity_penalty(states, ends, active, config)
    return jnp.where(solution.failed, jnp.inf, value)


def _laplace_draws(objective, hessian_objective, mean, active, noise):
    """Anchor-state draws `[samples, segments, latent_dim]` from the Laplace approximation
    N(mean, H^-1) of the posterior (`H`: the Hessian of `objective`, `-log p(y, z)`, at
    `mean`, taken of `hessian_objective`, the same function solved with forward-mode
    derivatives; eigenvalues below 1, the first anchor's prior precision, are raised to 1 so a
    saddle or a flat direction still gives a proper proposal), and their self-normalised
    importance weights `p(y, z) / N(z; mean, H^-1)` `[samples]`. `noise` `[samples,
    segments, latent_dim]` are standard-normal draws.

    Inactive anchors do not enter `p(y, z)`; N(mean, I) stands in for them on both sides of
    the ratio, so they neither move the weights nor mix into the active directions."""

    def target(function):
        def value(flat):
            states = flat.reshape(mean.shape)
            inactive = jnp.where(active[:, None], 0.0, states - mean)
            return function(states) + 0.5 * jnp.sum(inactive**2)

        return value

    hessian = jax.jacfwd(jax.jacfwd(target(hessian_objective)))(mean.reshape(-1))
    eigenvalues, eigenvectors = jnp.linalg.eigh(0.5 * (hessian + hessian.T))
    scale = eigenvectors / jnp.sqrt(jnp.maximum(eigenvalues, 1.0))  # H^-1 = scale @ scale.T
    flat_noise = noise.reshape(noise.shape[0], -1)
    flat_states = mean.reshape(-1) + flat_noise @ scale.T
    # log N(z; mean, H^-1) = -|noise|² / 2 + a constant shared by the draws
    log_weights = -jax.vmap(target(objective))(flat_states) + 0.5 * jnp.sum(flat_noise**2, -1)
    return flat_states.reshape(noise.shape), jax.nn.softmax(log_weights)


def _trial_posterior(
    params, spikes, times, mask, query_times, noise, refine_lr, config: Config, refine_steps: int,
    importance: bool,
) -> dict:  # fmt: skip
    """Latents and read-out means at `query_times` `[Q]` (any increasing times, seconds) of
    one trial, averaged over anchor states drawn with `noise` `[S, segments, K]` (zeros: the
    posterior mean): `mean + sqrt(var) * noise` with equal weights, or with `importance` the
    Laplace draws and importance weights of `_laplace_draws` (`mean` refined by
    `refine_to_map` if `refine_steps > 0`).

    Each time is read from the solve of its nearest anchor: backward before it, forward after
    it."""
    filled, _ = fill_times(times, mask)
    mean, var, anchors, active = encode(
        params["encoder"], config, _encoder_inputs(config, spikes), filled, mask
    )
    t_anchors = filled[anchors]
    objective = functools.partial(
        _neg_log_joint, params, spikes, filled, mask, t_anchors, active, config=config
    )
    if refine_steps:
        mean = refine_to_map(objective, mean, refine_steps, refine_lr)

    def sample_path(states):
        solution, _, t_first = _solve(params, states, t_anchors, active, query_times, config)
        log_params = readout_log_params(params["readout"], config.readout, solution.states)
        return solution, readouts.expected_value(config.readout, log_params), t_first

    if importance:
        # The Hessian is forward over forward mode: the default adjoint is reverse mode only.
        forward = dataclasses.replace(config, adjoint="forward")
        hessian_objective = functools.partial(objective, config=forward)
        states, weights = _laplace_draws(objective, hessian_objective, mean, active, noise)
    else:
        states = mean + jnp.sqrt(var) * noise
        weights = jnp.full(noise.shape[0], 1.0 / noise.shape[0])
    solutions, rates, t_first = jax.vmap(sample_path)(states)
    failed = jnp.any(solutions.failed)
    first_failed = jnp.argmax(solutions.failed)
    return {
        "latents": jnp.where(failed, jnp.nan, jnp.tensordot(weights, solutions.states, 1)),
        "rates": jnp.where(failed, jnp.nan, jnp.tensordot(weights, rates, 1)),
        "anchor_mean": mean,
        "anchor_var": var,
        "anchor_time": t_anchors,
        "anchor_active": active,
        "effective_samples": 1.0 / jnp.sum(weights**2),
        "failed": failed,
        "max_steps_reached": solutions.max_steps_reached[first_failed],
        "reached": t_first[0] + solutions.reached[first_failed] / config.time_scale,
        "end": t_first[0] + solutions.end[first_failed] / config.time_scale,
    }


ANCHOR_EXTRAS = ("anchor_mean", "anchor_var", "anchor_time", "anchor_active")
POSTERIOR_CHUNK = 256  # trials per compiled call (bounds memory with many samples)

_batched_posterior = jax.jit(
    jax.vmap(_trial_posterior, in_axes=(None, 0, 0, 0, 0, 0, None, None, None, None)),
    static_argnames=("config", "refine_steps", "importance"),
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
    importance: bool = False,
) -> Posterior:
    """Latent trajectories and rates of `trials`, at their own bins or at any `times`.

    The trajectory starts from the posterior means of the anchor states (deterministic; `key`
    is unused), or, with `num_samples > 1`, latents and rates are averaged over that many
    trajectories from anchor states drawn from `q(z(t_k) | y)` (the posterior predictive
    mean under the encoder's approximation), or with `importance` drawn from the Laplace
    approximation N(m, H^-1) at the anchor means m (refined or not; H the Hessian of `-log
    p(y, z)` there) and weighted by `p(y, z) / N(z; m, H^-1)` (self-normalised importance
    sampling: the posterior predictive mean under the model itself, which for a chaotic flow
    is not the flow of the mean). Each time is read
    from the solve of its nearest anchor, forward or backward, so `times` may interpolate
    between observations and extrapolate before and after them.

    Args:
      params: a fitted model's parameters (`FitResult.params`).
      config: its config (`FitResult.config`).
      trials: `Trials` `[trials, time, neurons]` (irregular `times` and `mask` allowed).
      key: draws the initial states when `num_samples > 1` (unused otherwise).
      times: None (each trial's own `Trials.times`; unobserved bins get the last observed
        time before them), `[query]` seconds shared by all trials, or `[trials, query]`;
        strictly increasing.
      num_samples: anchor states to average over; 1 uses the posterior means.
      refine_steps: Adam steps that refine each trial's anchor states from the encoder's
        means to the MAP of `p(y | z) p(z)` on the trial's observed bins (`p(z)`: N(0, I) at
        the first anchor, the continuity prior at later ones; 0: the encoder's means, fully
        amortised); `refine_lr` is their learning rate. With `num_samples > 1` the draws are
        centred on the refined states.
      importance: draw the `num_samples` anchor states from the Laplace approximation and
        weight them by importance (see above; best with `refine_steps`, so `m` is the MAP).

    Returns:
      `Posterior` with `latents` `[trials, query, latent_dim]`, `rates` `[trials, query,
      neurons]` (expected counts per bin; the mean signal for the Gaussian read-out), extras
      `times` `[trials, query]`, `anchor_mean` (refined, with `refine_steps`) and
      `anchor_var` `[trials, segments, latent_dim]` of the anchor states, `anchor_time`
      `[trials, segments]` (seconds), `anchor_active` `[trials, segments]` (False for the
      repeated anchors of a trial with fewer observations than segments),
      `effective_samples` `[trials]` (`1 / sum(w²)` of the normalised sample weights `w`:
      `num_samples` for equal weights, near 1 when one draw dominates), `failed` `[trials]`
      (with `throw=False`: failed trials hold NaN).

    Raises:
      SolverError: a solve failed and `config.throw` is True.
    """
    _check_trials(config, trials, "posterior")
    _check_time_scale(config, "posterior")
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"node.posterior: `num_samples` must be an int >= 1, got {num_samples!r}")
    num_neurons = params["readout"]["bias"].shape[0]
    if trials.num_neurons != num_neurons:
        raise ValueError(
            f"node.posterior: `trials` has {trials.num_neurons} neurons, the model {num_neurons}"
        )
    check_refine_options("node.posterior", refine_steps, refine_lr)
    if not isinstance(importance, bool):
        raise ValueError(f"node.posterior: `importance` must be a bool, got {importance!r}")
    query = _query_times(trials, times)
    noise_shape = (trials.num_trials, num_samples, config.segments, config.latent_dim)
    if num_samples == 1:
        noise = np.zeros(noise_shape, np.float32)
    else:
        noise = np.asarray(jax.random.normal(key, noise_shape))
    inputs = (
        np.asarray(trials.spikes, np.float32),
        np.asarray(trials.times, np.float32),
        np.asarray(trials.mask),
        np.asarray(query, np.float32),
        noise,
    )
    # Equal chunks of trials (the last padded by repeating its final trial): memory stays
    # bounded with many samples and every chunk reuses one compiled program.
    chunk = min(POSTERIOR_CHUNK, trials.num_trials)
    chunks = []
    for start in range(0, trials.num_trials, chunk):
        rows = np.minimum(np.arange(start, start + chunk), trials.num_trials - 1)
        out = _batched_posterior(
            params, *(x[rows] for x in inputs), jnp.float32(refine_lr), config, refine_steps,
            importance,
        )  # fmt: skip
        chunks.append(jax.tree.map(np.asarray, out))
    out = jax.tree.map(lambda *parts: np.concatenate(parts)[: trials.num_trials], *chunks)
    if config.throw:
        raise_on_failure(
            out["failed"], out["reached"], out["end"], out["max_steps_reached"],
            max_steps=config.max_steps, solver=config.solver, where="trial",
        )  # fmt: skip
    extras = {"times": query, "failed": out["failed"]}
    extras.update({name: out[name] for name in (*ANCHOR_EXTRAS, "effective_samples")})
    return Posterior(latents=out["latents"], rates=out["rates"], extras=extras)


def dynamics(params, config: Config, posterior: Posterior) -> LearnedDynamics:
    """The learned flow `dz/dt` (per second of `Trials.times`) on the latent state, with the
    latent trajectories of `posterior` (from `lj.infer`) as visited states."""
    return LearnedDynamics(
        function=scaled_field,
        kind="flow",
        args=(params["field"], config.time_scale),
        states=jnp.asarray(posterior.latents),
        latents=lambda points: points,
    )
