"""The LFADS family contract: `init`, `loss`, `validation_loss`, `posterior`.

Parameters: `{"core": Flax params of network.Core, "priors": ..., "sessions": (per session
{"readin": {"kernel", "bias"} (with `readin_dim`), "readout": {"kernel", "bias"}}, ...)}`.

Sessions: `trials` is one `Trials` (one session) or a sequence of `Trials`, one per session
(different neurons, one shared generator). A minibatch for `loss` has the same form; the loss
is the mean of the sessions' losses. `posterior(..., session=s)` reads session s.

Held-out neurons: with `Config(n_heldout=H)` the last H columns of `spikes` are held out: the
encoders never see them, the read-out predicts them. `posterior` accepts trials with all
columns or with the held-in columns only, and returns rates for all of them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from latentjax.data import Trials
from latentjax.models.lfads import augment
from latentjax.models.lfads.config import Config
from latentjax.models.lfads.network import Architecture, Core, Noise
from latentjax.nn import priors, readouts
from latentjax.nn.recurrent import GRU, GRUWeights, autonomous_gru_step, gru_step, run_gru
from latentjax.results import CausalFilter, LearnedDynamics, Posterior
from latentjax.train.schedules import ramp

__all__ = [
    "StreamConstants",
    "causal_filter",
    "dynamics",
    "heldin_neurons",
    "init",
    "loss",
    "posterior",
    "validation_loss",
]


# ----------------------------------------------------------------------------- validation


def _as_sessions(trials, where: str) -> tuple[Trials, ...]:
    sessions = (trials,) if isinstance(trials, Trials) else tuple(trials)
    if not sessions or not all(isinstance(t, Trials) for t in sessions):
        raise ValueError(f"lfads.{where}: `trials` must be a Trials or a sequence of Trials")
    return sessions


def _check_sessions(config: Config, sessions: tuple[Trials, ...]) -> None:
    if len(sessions) > 1 and config.readin_dim is None:
        raise ValueError(
            "lfads.init: several sessions need `Config.readin_dim` (the shared input width)"
        )
    for s, trials in enumerate(sessions):
        name = f"lfads.init: session {s}"
        if trials.num_neurons <= config.n_heldout:
            raise ValueError(
                f"{name}: `n_heldout` ({config.n_heldout}) must be below the number of "
                f"neurons ({trials.num_neurons})"
            )
        if trials.num_bins <= config.forward_bins:
            raise ValueError(f"{name}: `forward_bins` must be below the number of bins")
        if trials.continuous and config.readout == "poisson":
            raise ValueError(
                f"{name}: continuous signals need a continuous `readout` "
                "('gaussian', 'gamma' or 'zero_inflated_gamma'), not 'poisson'"
            )
        spikes = np.asarray(trials.spikes)[np.asarray(trials.mask)]
        if config.readout == "gamma" and (spikes <= 0).any():
            raise ValueError(f"{name}: the 'gamma' `readout` needs positive values")
        if config.external_inputs:
            dims = 0 if trials.behavior is None else trials.behavior.shape[-1]
            if max(config.external_inputs) >= dims or min(config.external_inputs) < 0:
                raise ValueError(
                    f"{name}: `external_inputs` {config.external_inputs} are not columns of "
                    f"`behavior` ({dims} columns)"
                )


# ----------------------------------------------------------------------------- init


def _architecture(config: Config, num_heldin: int) -> Architecture:
    return Architecture(
        input_dim=config.readin_dim or num_heldin,
        ext_dim=len(config.external_inputs),
        ic_enc_dim=config.ic_enc_dim,
        ci_enc_dim=config.ci_enc_dim,
        con_dim=config.con_dim,
        co_dim=config.co_dim,
        ic_dim=config.ic_dim,
        gen_dim=config.gen_dim,
        fac_dim=config.fac_dim,
        ci_lag=config.ci_lag,
        cell_clip=config.cell_clip,
        ic_post_var_min=config.ic_post_var_min,
        co_post_var_min=config.co_post_var_min,
        causal=config.causal,
    )


def _readout_bias(config: Config, values: np.ndarray) -> np.ndarray:
    """`[P, neurons]` log-parameters matching each neuron's marginal (`values` `[M, N]`)."""
    mean = values.mean(0)
    var = values.var(0) + 1e-3
    if config.readout == "poisson":
        return np.log(mean + 1e-3)[None]
    if config.readout == "gaussian":
        return np.stack([mean, np.log(var)])
    if config.readout == "gamma":
        mean = np.maximum(mean, 1e-3)
        return np.stack([np.log(mean**2 / var), np.log(mean / var)])
    nonzero = values > config.zig_threshold
    q = np.clip(nonzero.mean(0), 1e-3, 1 - 1e-3)
    shifted = np.where(nonzero, values - config.zig_threshold, np.nan)
    mean = np.maximum(np.nan_to_num(np.nanmean(shifted, 0), nan=1.0), 1e-3)
    var = np.nan_to_num(np.nanvar(shifted, 0), nan=1.0) + 1e-3
    return np.stack([np.log(mean**2 / var), np.log(mean / var), np.log(q / (1 - q))])


def _pca_regression_readins(config: Config, sessions) -> list[np.ndarray]:
    """Per-session read-in kernels `[heldin, readin_dim]` into one shared space.

    With shared condition labels, the shared space is the PCA of the condition-averaged
    activity of all sessions side by side, and each session's kernel is the least-squares
    regression of those scores on its own averages (PCA regression, as lfads-torch's
    multi-session setup). Otherwise each session projects on its own principal components.
    """
    heldin = [np.asarray(t.spikes)[..., : t.num_neurons - config.n_heldout] for t in sessions]
    dim = config.readin_dim
    labels = [None if t.conditions is None else np.asarray(t.conditions) for t in sessions]
    common = None
    if all(c is not None for c in labels):
        common = sorted(set.intersection(*(set(c.tolist()) for c in labels)))
    bins = {x.shape[1] for x in heldin}
    if common and len(bins) == 1:
        averages = [
            np.concatenate([x[c == k].mean(0) for k in common])  # [conditions * bins, N_s]
            for x, c in zip(heldin, labels, strict=True)
        ]
        centred = [a - a.mean(0) for a in averages]
        stacked = np.concatenate(centred, axis=1)
        _, _, vt = np.linalg.svd(stacked, full_matrices=False)
        scores = stacked @ vt[:dim].T
        return [np.linalg.lstsq(a, scores, rcond=None)[0] for a in centred]
    kernels = []
    for x in heldin:
        flat = x.reshape(-1, x.shape[-1])
        _, _, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
        kernel = np.zeros((flat.shape[1], dim))
        kernel[:, : min(dim, vt.shape[0])] = vt[:dim].T
        kernels.append(kernel)
    return kernels


def _init_core(key, arch: Architecture):
    """Flax parameters of the core, created without running the network (`lazy_init`)."""
    bins = arch.ci_lag + 2
    shape = jax.ShapeDtypeStruct
    noise = jax.eval_shape(lambda: _draw_noise(key, arch, bins, bins, 0.0))
    x, ext = shape((bins, arch.input_dim), jnp.float32), shape((bins, arch.ext_dim), jnp.float32)
    return Core(arch).lazy_init(key, x, ext, noise)["params"]


def init(key, config: Config, trials) -> dict:
    """Parameters for `trials` (a `Trials`, or a sequence of `Trials`, one per session).

    Read-outs start at each neuron's marginal statistics; read-ins (with `readin_dim`) by
    PCA regression.

    Examples:
        >>> import latentjax as lj, numpy as np
        >>> trials = lj.Trials(np.random.default_rng(0).poisson(1.0, (8, 20, 6)), dt=0.01)
        >>> params = lj.models.lfads.init(jax.random.key(0), Config.preset("tiny"), trials)
    """
    sessions = _as_sessions(trials, "init")
    _check_sessions(config, sessions)
    num_heldin = sessions[0].num_neurons - config.n_heldout
    core_key, *session_keys = jax.random.split(key, len(sessions) + 1)
    core = _init_core(core_key, _architecture(config, num_heldin))

    readins = _pca_regression_readins(config, sessions) if config.readin_dim else None
    session_params = []
    for s, trials_s in enumerate(sessions):
        spikes = np.asarray(trials_s.spikes)[np.asarray(trials_s.mask)]  # [observed bins, N]
        num_params = readouts.num_params(config.readout)
        kernel = jax.random.normal(
            session_keys[s], (config.fac_dim, num_params * trials_s.num_neurons)
        ) / np.sqrt(config.fac_dim)
        bias = _readout_bias(config, spikes).reshape(-1)
        params_s = {"readout": {"kernel": kernel, "bias": jnp.asarray(bias, jnp.float32)}}
        if readins is not None:
            heldin = spikes[:, : trials_s.num_neurons - config.n_heldout]
            readin = jnp.asarray(readins[s], jnp.float32)
            params_s["readin"] = {"kernel": readin, "bias": -jnp.asarray(heldin.mean(0)) @ readin}
        session_params.append(params_s)
    return {
        "core": core,
        "priors": priors.init_priors(config.ic_dim, config.co_dim, config.co_prior),
        "sessions": tuple(session_params),
    }


# ----------------------------------------------------------------------------- one trial


def _draw_noise(key, arch: Architecture, enc_bins: int, bins: int, dropout_rate) -> Noise:
    keys = jax.random.split(key, 6)
    return Noise(
        ic=jax.random.normal(keys[0], (arch.ic_dim,)),
        co=jax.random.normal(keys[1], (bins, arch.co_dim)),
        input_keep=augment.dropout_multiplier(keys[2], dropout_rate, (enc_bins, arch.input_dim)),
        ic_keep=augment.dropout_multiplier(keys[3], dropout_rate, (2 * arch.ic_enc_dim,)),
        ci_keep=augment.dropout_multiplier(keys[4], dropout_rate, (enc_bins, 2 * arch.ci_enc_dim)),
        gen_keep=augment.dropout_multiplier(keys[5], dropout_rate, (bins, arch.gen_dim)),
    )


def _forward(params, session_params, heldin, ext, noise: Noise, config: Config):
    """Core outputs and read-out log-parameters `[bins, P, neurons]` of one trial."""
    arch = _architecture(config, heldin.shape[-1])
    x = heldin
    if "readin" in session_params:
        x = x @ session_params["readin"]["kernel"] + session_params["readin"]["bias"]
    out = Core(arch).apply({"params": params["core"]}, x, ext, noise)
    readout = session_params["readout"]
    log_params = out.factors @ readout["kernel"] + readout["bias"]
    num_params = readouts.num_params(config.readout)
    return out, log_params.reshape(log_params.shape[0], num_params, -1)


def _external_inputs(trials: Trials, config: Config):
    if not config.external_inputs:
        return jnp.zeros((*trials.spikes.shape[:2], 0))
    return jnp.asarray(trials.behavior)[..., jnp.array(config.external_inputs)]


def _trial_terms(params, session_params, spikes, mask, ext, key, config: Config, training: bool):
    """Per-trial loss terms: summed reconstruction NLL, entries it averages over, KLs.

    `training`: dropout, coordinated dropout and sample-validation hiding on, reconstruction
    on the entries allowed for training; otherwise no dropout and the reconstruction scores
    the sample-validation entries (all entries when `sv_rate` is 0).
    """
    bins, neurons = spikes.shape
    enc_bins = bins - config.forward_bins
    num_heldin = neurons - config.n_heldout
    heldin = spikes[:enc_bins, :num_heldin]
    noise_key, cd_key = jax.random.split(key)
    arch = _architecture(config, num_heldin)

    held_for_validation = jnp.zeros(heldin.shape, bool)
    if config.sv_rate > 0:
        held_for_validation = augment.sample_validation_mask(heldin, config.sv_rate, config.sv_seed)
    input_multiplier = (~held_for_validation) / (1.0 - config.sv_rate)
    if training:
        cd_multiplier, cd_weight = augment.coordinated_dropout(cd_key, config.cd_rate, heldin.shape)
        input_multiplier = input_multiplier * cd_multiplier
        input_weight = cd_weight * ~held_for_validation
        input_eligible = ~held_for_validation
        outside_weight = 1.0
        noise = _draw_noise(noise_key, arch, enc_bins, bins, config.dropout)
    else:
        scored = held_for_validation if config.sv_rate > 0 else jnp.ones(heldin.shape, bool)
        input_weight = input_eligible = scored
        outside_weight = 0.0 if config.sv_rate > 0 else 1.0
        noise = _draw_noise(noise_key, arch, enc_bins, bins, 0.0)

    out, log_params = _forward(
        params, session_params, heldin * input_multiplier, ext, noise, config
    )
    log_lik = readouts.log_likelihood(config.readout, log_params, spikes, config.zig_threshold)

    def over_entries(input_part):  # [enc_bins, heldin] -> [bins, neurons], the rest outside
        full = jnp.full((bins, neurons), outside_weight, log_lik.dtype)
        return full.at[:enc_bins, :num_heldin].set(input_part) * mask[:, None]

    recon = -jnp.sum(over_entries(input_weight) * log_lik)
    entries = jnp.maximum(jnp.sum(over_entries(input_eligible)), 1.0)

    prior = params["priors"]
    kl_ic = priors.gaussian_kl(out.ic_mean, out.ic_var, prior["ic"]["mean"], prior["ic"]["log_var"])
    kl_co = jnp.zeros(())
    if config.co_dim:
        kl_co = priors.co_kl(prior["co"], config.co_prior, out.co_mean, out.co_var, out.inputs)
    return {"recon": recon, "entries": entries, "kl_ic": kl_ic, "kl_co": kl_co}


# ----------------------------------------------------------------------------- losses


def _session_terms(params, s: int, batch: Trials, key, config: Config, training: bool):
    keys = jax.random.split(key, batch.spikes.shape[0])
    ext = _external_inputs(batch, config)
    terms = jax.vmap(_trial_terms, in_axes=(None, None, 0, 0, 0, 0, None, None))(
        params, params["sessions"][s], jnp.asarray(batch.spikes, jnp.float32),
        jnp.asarray(batch.mask), ext, keys, config, training,
    )  # fmt: skip
    return terms


def _l2_penalty(params, config: Config):
    def mean_square(kernel):
        return 0.5 * jnp.sum(kernel**2) / kernel.size

    penalty = config.l2_gen_scale * mean_square(params["core"]["generator"]["hidden_kernel"])
    if config.co_dim:
        penalty += config.l2_con_scale * mean_square(params["core"]["controller"]["hidden_kernel"])
    return penalty


def _check_batch(params, sessions):
    if len(sessions) != len(params["sessions"]):
        raise ValueError(
            f"lfads.loss: `batch` has {len(sessions)} session(s), the parameters "
            f"{len(params['sessions'])}"
        )


def loss(params, batch, key, config: Config, step) -> tuple[jax.Array, dict]:
    """Negative ELBO per reconstructed entry with KL and L2 ramps (see `config`).

    `batch` a `Trials` minibatch (or a sequence of them, one per session); `step` the
    training step (traced int) for the ramps. Returns (scalar, aux) with aux `recon`,
    `kl_ic`, `kl_co` (per entry, unweighted) and `l2`.
    """
    sessions = _as_sessions(batch, "loss")
    _check_batch(params, sessions)
    kl_weight = ramp(step, start=config.kl_ramp_start, length=config.kl_ramp_steps)
    totals, aux = [], {"recon": 0.0, "kl_ic": 0.0, "kl_co": 0.0}
    keys = jax.random.split(key, len(sessions))
    for s, (key_s, trials) in enumerate(zip(keys, sessions, strict=True)):
        terms = _session_terms(params, s, trials, key_s, config, True)
        per_entry = {k: terms[k] / terms["entries"] for k in aux}
        kl = config.kl_ic_scale * per_entry["kl_ic"] + config.kl_co_scale * per_entry["kl_co"]
        totals.append(jnp.mean(per_entry["recon"] + kl_weight * kl))
        aux = {k: aux[k] + jnp.mean(per_entry[k]) / len(sessions) for k in aux}
    l2_weight = ramp(step, start=config.l2_ramp_start, length=config.l2_ramp_steps)
    l2 = l2_weight * _l2_penalty(params, config)
    return jnp.mean(jnp.stack(totals)) + l2, {**aux, "l2": l2}


def validation_loss(params, trials, key, config: Config, step) -> tuple[jax.Array, dict]:
    """Held-out score per entry, without dropout: with `sv_rate` > 0 the reconstruction NLL
    of the sample-validation entries (which the encoders never see); with `sv_rate` 0 the
    encoders see every entry they score, so the KL terms are added at their full weight
    (no ramp), as seqvae and node do: reconstruction alone was lowest before the KL ramp
    and stopped training there (benchmarks/node.md, irregular section: step 200 of 1500).
    aux holds `recon`, `kl_ic`, `kl_co` per entry.
    """
    del step
    sessions = _as_sessions(trials, "validation_loss")
    _check_batch(params, sessions)
    aux = {"recon": 0.0, "kl_ic": 0.0, "kl_co": 0.0}
    keys = jax.random.split(key, len(sessions))
    for s, (key_s, trials_s) in enumerate(zip(keys, sessions, strict=True)):
        terms = _session_terms(params, s, trials_s, key_s, config, False)
        aux = {k: aux[k] + jnp.mean(terms[k] / terms["entries"]) / len(sessions) for k in aux}
    if config.sv_rate > 0:
        return aux["recon"], aux
    kl = config.kl_ic_scale * aux["kl_ic"] + config.kl_co_scale * aux["kl_co"]
    return aux["recon"] + kl, aux


# ----------------------------------------------------------------------------- posterior


def _posterior_sums(params, session_params, heldin, ext, key, config: Config, n_samples: int):
    """Sums over `n_samples` posterior samples of factors, rates, inputs and g_0 (one trial)."""
    bins = ext.shape[0]
    arch = _architecture(config, heldin.shape[-1])
    x = heldin[: bins - config.forward_bins]

    def add_sample(sums, key):
        noise = _draw_noise(key, arch, x.shape[0], bins, 0.0)
        out, log_params = _forward(params, session_params, x, ext, noise, config)
        rates = readouts.expected_value(config.readout, log_params, config.zig_threshold)
        sample = (out.factors, rates, out.inputs, out.initial_state)
        return jax.tree.map(jnp.add, sums, sample), None

    noise = _draw_noise(key, arch, x.shape[0], bins, 0.0)
    shapes = jax.eval_shape(lambda: _forward(params, session_params, x, ext, noise, config))
    out_shape, log_params_shape = shapes
    rates_shape = (bins, log_params_shape.shape[-1])
    zeros = (
        jnp.zeros(out_shape.factors.shape),
        jnp.zeros(rates_shape),
        jnp.zeros(out_shape.inputs.shape),
        jnp.zeros(out_shape.initial_state.shape),
    )
    sums, _ = jax.lax.scan(add_sample, zeros, jax.random.split(key, n_samples))
    return sums


_batched_posterior_sums = jax.jit(
    jax.vmap(_posterior_sums, in_axes=(None, None, 0, 0, 0, None, None)),
    static_argnames=("config", "n_samples"),
)


def heldin_neurons(config: Config, num_neurons: int) -> np.ndarray | None:
    """The held-in neurons (all but the last `n_heldout`), which `posterior` also takes alone."""
    return np.arange(num_neurons - config.n_heldout) if config.n_heldout else None


def _mean_noise(arch: Architecture, bins: int) -> Noise:
    """The posterior means (no sampling noise) and no dropout: the causal network."""
    return Noise(
        ic=jnp.zeros((arch.ic_dim,)),
        co=jnp.zeros((bins, arch.co_dim)),
        input_keep=jnp.ones((bins, arch.input_dim)),
        ic_keep=jnp.ones((2 * arch.ic_enc_dim,)),
        ci_keep=jnp.ones((bins, 2 * arch.ci_enc_dim)),
        gen_keep=jnp.ones((bins, arch.gen_dim)),
    )


@functools.partial(jax.jit, static_argnames=("config",))
def _causal_arrays(params, session_params, heldin, ext, config: Config):
    """Factors, rates and inputs of every trial through the posterior means (one pass)."""
    arch = _architecture(config, heldin.shape[-1])

    def one(x, e):
        out, log_params = _forward(params, session_params, x, e, _mean_noise(arch, x.shape[0]),
                                   config)  # fmt: skip
        rates = readouts.expected_value(config.readout, log_params, config.zig_threshold)
        return out.factors, rates, out.inputs, out.initial_state

    return jax.vmap(one)(heldin, ext)


def posterior(params, trials: Trials, config: Config, key, *, n_samples: int = 20,
              session: int = 0, causal: bool = False) -> Posterior:  # fmt: skip
    """Posterior means over `n_samples` samples (no dropout).

    With `causal` (a model trained with `Config(causal=True)` only): one deterministic pass
    through the posterior means (u_t = the controller's mean, z0 = its learned mean), every
    bin encoded (no `forward_bins`): the factors of bin t from bins up to t, exactly what
    `lj.decode.stream` gives one bin at a time.

    Returns `latents` = factors `[trials, time, fac_dim]`, `rates` `[trials, time, neurons]`
    (expected value per bin of every neuron, held-out ones last), and extras `factors`,
    `inputs` `[trials, time, co_dim]` and `initial_states` `[trials, gen_dim]`.
    """
    if not isinstance(causal, bool):
        raise ValueError(f"lfads.posterior: `causal` must be True or False, got {causal!r}")
    if causal and not config.causal:
        raise ValueError(
            "lfads.posterior: `causal=True` needs a model trained with "
            "lfads.Config(causal=True) (forward-only encoders); this one reads the future"
        )
    if not isinstance(trials, Trials):
        raise ValueError("lfads.posterior: `trials` must be a Trials (one session)")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"lfads.posterior: `n_samples` must be a positive int, got {n_samples}")
    if not 0 <= session < len(params["sessions"]):
        raise ValueError(
            f"lfads.posterior: `session` {session} is not one of the "
            f"{len(params['sessions'])} sessions"
        )
    session_params = params["sessions"][session]
    num_neurons = session_params["readout"]["bias"].shape[0] // readouts.num_params(config.readout)
    num_heldin = num_neurons - config.n_heldout
    if trials.num_neurons not in (num_neurons, num_heldin):
        raise ValueError(
            f"lfads.posterior: `trials` has {trials.num_neurons} neurons; session {session} "
            f"has {num_heldin} held-in and {num_neurons} in all"
        )
    if trials.num_bins <= config.forward_bins:
        raise ValueError("lfads.posterior: `trials` must have more bins than `forward_bins`")
    heldin = jnp.asarray(trials.spikes, jnp.float32)[..., :num_heldin]
    ext = _external_inputs(trials, config)
    if causal:
        factors, rates, inputs, initial_states = _causal_arrays(
            params, session_params, heldin, ext, config
        )
        extras = {"factors": factors, "inputs": inputs, "initial_states": initial_states}
        return Posterior(latents=factors, rates=rates, extras=extras)
    keys = jax.random.split(key, trials.num_trials)
    factors, rates, inputs, initial_states = jax.tree.map(
        lambda total: total / n_samples,
        _batched_posterior_sums(params, session_params, heldin, ext, keys, config, n_samples),
    )
    extras = {"factors": factors, "inputs": inputs, "initial_states": initial_states}
    return Posterior(latents=factors, rates=rates, extras=extras)


def dynamics(params, config: Config, posterior: Posterior) -> LearnedDynamics:
    """The generator's autonomous map `g -> g'` (no inferred or external input) on its
    `gen_dim` state, with the states it visited from each trial's posterior initial state
    driven by the posterior mean inputs (`posterior` from `lj.infer`, one session); latents
    are the factors."""
    core = params["core"]
    generator = GRU(config.gen_dim, False).apply(
        {"params": core["generator"]}, config.co_dim + len(config.external_inputs)
    )
    inputs = jnp.asarray(posterior.inputs)
    inputs = jnp.pad(inputs, ((0, 0), (0, 0), (0, len(config.external_inputs))))

    def replay(initial_state, trial_inputs):
        return run_gru(generator._replace(initial_state=initial_state), trial_inputs,
                       config.cell_clip)  # fmt: skip

    states = jax.vmap(replay)(jnp.asarray(posterior.initial_states), inputs)
    factors = core["factors_kernel"] / jnp.linalg.norm(core["factors_kernel"], axis=0)
    return LearnedDynamics(
        function=autonomous_gru_step,
        kind="map",
        args=(generator, config.cell_clip),
        states=states,
        latents=lambda points: points @ factors,
    )


class StreamConstants(NamedTuple):
    """What the causal LFADS reads per bin: the GRUs (`encoder`: forward controller-input
    encoder, `controller`, `generator`), `readin` `(kernel, bias)` or None, `co` `(kernel,
    bias)` of the controller output, `factors` `[gen_dim, fac_dim]` (unit-norm columns) and
    `initial` (g_0 `[gen_dim]`)."""

    encoder: GRUWeights | None
    controller: GRUWeights | None
    generator: GRUWeights
    readin: tuple | None
    co: tuple | None
    factors: jax.Array
    initial: jax.Array


def _stream_step(num_heldin, ci_lag, clip, constants: StreamConstants, state, counts, observed):
    del observed  # LFADS has no missing-bin update: every streamed bin is read
    encoded, history, hidden, generator_state, factors = state
    c = constants
    if c.controller is not None:
        x = counts[:num_heldin]
        if c.readin is not None:
            x = x @ c.readin[0] + c.readin[1]
        encoded = gru_step(c.encoder, x @ c.encoder.input_kernel + c.encoder.input_bias,
                           encoded, clip)  # fmt: skip
        if ci_lag:
            ci, history = history[0], jnp.concatenate([history[1:], encoded[None]])
        else:
            ci = encoded
        width = ci.shape[0]
        gates = ci @ c.controller.input_kernel[:width] + c.controller.input_bias
        hidden = gru_step(c.controller, gates + factors @ c.controller.input_kernel[width:],
                          hidden, clip)  # fmt: skip
        co_mean, _ = jnp.split(hidden @ c.co[0] + c.co[1], 2)
        co_dim = co_mean.shape[0]
        gates = c.generator.input_bias + co_mean @ c.generator.input_kernel[:co_dim]
    else:
        gates = c.generator.input_bias
    generator_state = gru_step(c.generator, gates, generator_state, clip)
    factors = generator_state @ c.factors
    return (encoded, history, hidden, generator_state, factors), factors


def causal_filter(params, config: Config, *, continuous: bool = False) -> CausalFilter:
    """The causal LFADS one bin at a time (the hook of `lj.decode.stream`; session 0).

    Args:
      params: parameters of a model trained with `Config(causal=True)`, without
        `external_inputs` (a stream has no future behaviour to feed the generator).
      config: its `Config`.
      continuous: unused (the read-out decides the observation model).

    Returns:
      `CausalFilter` whose `step(constants, state, counts [neurons], observed)` returns the
      factors `[fac_dim]` of the bin: over a trial, `posterior(..., causal=True).latents`.
    """
    del continuous
    if not config.causal:
        raise ValueError(
            "lfads.causal_filter: streaming needs a model trained with "
            "lfads.Config(causal=True); this one has backward encoders"
        )
    if config.external_inputs:
        raise ValueError("lfads.causal_filter: a model with `external_inputs` cannot stream")
    core, session = params["core"], params["sessions"][0]
    num_neurons = session["readout"]["bias"].shape[0] // readouts.num_params(config.readout)
    num_heldin = num_neurons - config.n_heldout
    input_dim = config.readin_dim or num_heldin

    def weights(name, hidden, width, learned=True):
        return GRU(hidden, learned).apply({"params": core[name]}, width)

    generator = weights("generator", config.gen_dim, config.co_dim, False)
    ic_mean = jnp.split(core["ic_causal"], 2)[0]
    initial = ic_mean @ core["ic_to_g0_kernel"] + core["ic_to_g0_bias"]
    factors = core["factors_kernel"] / jnp.linalg.norm(core["factors_kernel"], axis=0)
    encoder = controller = co = None
    if config.co_dim:
        encoder = weights("ci_enc_fwd", config.ci_enc_dim, input_dim)
        controller = weights("controller", config.con_dim, config.ci_enc_dim + config.fac_dim)
        co = (core["co_kernel"], core["co_bias"])
    readin = None
    if "readin" in session:
        readin = (session["readin"]["kernel"], session["readin"]["bias"])
    constants = StreamConstants(encoder, controller, generator, readin, co, factors, initial)
    state = (
        jnp.zeros(config.ci_enc_dim) if encoder is None else encoder.initial_state,
        jnp.zeros((config.ci_lag, config.ci_enc_dim)),
        jnp.zeros(config.con_dim) if controller is None else controller.initial_state,
        initial,
        initial @ factors,
    )
    step = functools.partial(_stream_step, num_heldin, config.ci_lag, config.cell_clip)
    return CausalFilter(step, constants, state, num_neurons)
