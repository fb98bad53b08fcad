"""RNN sequential VAE: a discrete-time deep latent model on the bin grid.

For one trial with observations `y_t` `[time, neurons]` and `mask_t` (True where observed):

    e_fwd, e_bwd = GRU_fwd([y_t * mask_t, mask_t]), GRU_bwd(...)      bidirectional encoder
    q(z0) = N(W_0 [e_fwd(T), e_bwd(1)] + b_0)                          stochastic initial state
    q(u_t) = N(W_u [e_fwd(t), e_bwd(t)] + b_u)     (input_dim > 0)     per-step stochastic latents
    g_0 = W_g z0 + b_g,   g_t = GRU_gen(u_t, g_{t-1})                  generator
    f_t = W_f g_t   (latents),   y_t ~ Poisson(exp(C f_t + d))  or  N(C f_t + d, exp(log_var))

with priors z0 ~ N(0, I) and u_t ~ N(0, I). The loss is the negative ELBO per observed entry
(masked bins are not scored), `(-log p(y | z0, u) + kl_scale * r(step) * (KL_z0 + KL_u)) /
entries`, `r` a linear ramp over `kl_ramp_steps`. With `cd_rate > 0` (coordinated dropout over
bins) each training step hides that fraction of the observed bins from the encoder and scores
only those (weight `1 / cd_rate`). Encoder inputs are `log1p(counts)` for the
Poisson read-out. GRUs, read-out likelihoods and Gaussian KL come from `lj.models.lfads`.

Examples:
    Training takes minutes, so doctests skip the last two lines:

    >>> import latentjax as lj
    >>> data = lj.datasets.lorenz(seed=0)
    >>> train, test = lj.data.split(data.trials, (0.8, 0.2), seed=0)
    >>> result = lj.fit(lj.models.seqvae.Config(), train)    # doctest: +SKIP
    >>> post = lj.infer(result, test)                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from latentjax.data import Trials
from latentjax.nn import readouts
from latentjax.nn.bin_dropout import bin_dropout
from latentjax.nn.linear_readout import init_readout, readout_log_params
from latentjax.nn.priors import gaussian_kl, gaussian_log_prob
from latentjax.nn.recurrent import GRU, autonomous_gru_step, gru_step, run_gru, split_gates
from latentjax.nn.refine import check_refine_options, refine_to_map
from latentjax.results import LearnedDynamics, Posterior
from latentjax.train.config import TrainConfig, knob
from latentjax.train.schedules import ramp

__all__ = ["Config", "dynamics", "init", "loss", "posterior", "validation_loss"]

READOUTS = ("poisson", "gaussian")
VAR_MIN = 1e-4
CELL_CLIP = 5.0


@dataclasses.dataclass(frozen=True)
class Config:
    """Sequential VAE sizes (static) and knobs.

    Attributes:
      encoder_dim: units of each direction of the bidirectional GRU encoder.
      initial_dim: dimensions of the stochastic initial state z0.
      input_dim: dimensions of the per-step stochastic latents u_t (0: none, the generator
        runs autonomously from z0).
      generator_dim: units of the GRU generator.
      latent_dim: dimensions of the latents f_t (a linear map of the generator state).
      readout: "poisson" (counts) or "gaussian" (continuous signals).
      kl_ramp_steps: steps of the linear KL ramp.
      kl_scale: weight of the KL terms (knob; 1.0 is the ELBO).
      cd_rate: coordinated dropout over bins (knob): each training step hides this fraction
        of the observed bins from the encoder and scores the reconstruction on those bins
        only (0 turns it off; validation never hides bins).
      train: optimiser and loop settings ("train.learning_rate" is a knob); `train.steps`
        None sizes the training to the data, `latentjax.train.auto_steps`).
    """

    encoder_dim: int = 64
    initial_dim: int = 16
    input_dim: int = 0
    generator_dim: int = 64
    latent_dim: int = 8
    readout: str = "poisson"
    kl_ramp_steps: int = 200
    kl_scale: float = knob(1.0, "nonnegative")
    cd_rate: float = knob(0.0, "probability")
    train: TrainConfig = TrainConfig(learning_rate=3e-3, batch_size=32, steps=None, grad_clip=10.0)

    def __post_init__(self):
        sizes = ("encoder_dim", "initial_dim", "generator_dim", "latent_dim")
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"seqvae.Config: `{name}` must be a positive int, got {value!r}")
        for name in ("input_dim", "kl_ramp_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"seqvae.Config: `{name}` must be an int >= 0, got {value!r}")
        if not 0.0 <= self.cd_rate < 1.0:
            raise ValueError(f"seqvae.Config: `cd_rate` must be in [0, 1), got {self.cd_rate}")
        if self.readout not in READOUTS:
            raise ValueError(f"seqvae.Config: `readout` must be one of {READOUTS}")
        if not isinstance(self.train, TrainConfig):
            raise ValueError("seqvae.Config: `train` must be a latentjax.train.TrainConfig")


def _dense(key, fan_in: int, fan_out: int, scale: float = 1.0) -> dict:
    kernel = scale * jax.random.normal(key, (fan_in, fan_out)) / np.sqrt(fan_in)
    return {"kernel": kernel, "bias": jnp.zeros(fan_out)}


def _gru_params(key, hidden: int, input_dim: int, learned_initial_state: bool = True) -> dict:
    return GRU(hidden, learned_initial_state).init(key, input_dim)["params"]


def _gru(params: dict, hidden: int, input_dim: int, learned_initial_state: bool = True):
    return GRU(hidden, learned_initial_state).apply({"params": params}, input_dim)


def _check_trials(config: Config, trials, where: str) -> None:
    if not isinstance(trials, Trials):
        raise ValueError(f"seqvae.{where}: `trials` must be a Trials, got {type(trials).__name__}")
    if trials.continuous and config.readout == "poisson":
        raise ValueError(f"seqvae.{where}: continuous signals need readout='gaussian'")


def init(key, config: Config, trials: Trials) -> dict:
    """Parameters; the read-out bias starts at each neuron's marginal mean (and variance)."""
    _check_trials(config, trials, "init")
    keys = jax.random.split(key, 8)
    num_neurons = trials.num_neurons
    encoder_input = num_neurons + 1
    readout = init_readout(keys[0], config.latent_dim, trials, config.readout)
    encoded = 2 * config.encoder_dim
    return {
        "encoder_fwd": _gru_params(keys[1], config.encoder_dim, encoder_input),
        "encoder_bwd": _gru_params(keys[2], config.encoder_dim, encoder_input),
        "initial": _dense(keys[3], encoded, 2 * config.initial_dim),
        "inputs": _dense(keys[4], encoded, 2 * max(config.input_dim, 1)),
        "to_generator": _dense(keys[5], config.initial_dim, config.generator_dim),
        "generator": _gru_params(
            keys[6], config.generator_dim, max(config.input_dim, 1), learned_initial_state=False
        ),
        "latents": _dense(keys[7], config.generator_dim, config.latent_dim),
        "readout": readout,
    }


def _gaussian(layer: dict, x):
    mean, log_var = jnp.split(x @ layer["kernel"] + layer["bias"], 2, axis=-1)
    return mean, jnp.exp(log_var) + VAR_MIN


def _encode(params, spikes, mask, config: Config) -> tuple[dict, dict]:
    """Means and variances of q for one trial `[time, neurons]`: `{"initial": [initial_dim]}`,
    plus `"inputs"` `[time, input_dim]` when `input_dim > 0`."""
    observed = mask[:, None]
    features = jnp.log1p(spikes) if config.readout == "poisson" else spikes
    x = jnp.concatenate([features * observed, observed.astype(features.dtype)], axis=-1)
    width = x.shape[-1]
    fwd = run_gru(_gru(params["encoder_fwd"], config.encoder_dim, width), x, CELL_CLIP)
    bwd = run_gru(_gru(params["encoder_bwd"], config.encoder_dim, width), x, CELL_CLIP, True)
    z0_mean, z0_var = _gaussian(params["initial"], jnp.concatenate([fwd[-1], bwd[0]]))
    means, variances = {"initial": z0_mean}, {"initial": z0_var}
    if config.input_dim:
        u_mean, u_var = _gaussian(params["inputs"], jnp.concatenate([fwd, bwd], axis=-1))
        means["inputs"], variances["inputs"] = u_mean, u_var
    return means, variances


def _generator(params, config: Config):
    return _gru(
        params["generator"], config.generator_dim, max(config.input_dim, 1),
        learned_initial_state=False,
    )  # fmt: skip


def _generator_states(params, latent_variables: dict, num_bins: int, config: Config):
    """Generator states `[time, generator_dim]` from the initial state and (with
    `input_dim > 0`) the inputs in `latent_variables` (as `_encode` returns them)."""
    inputs = latent_variables.get("inputs", jnp.zeros((num_bins, 1)))
    generator = _generator(params, config)
    z0 = latent_variables["initial"]
    g0 = z0 @ params["to_generator"]["kernel"] + params["to_generator"]["bias"]
    gates = split_gates(inputs @ generator.input_kernel + generator.input_bias)

    def step(g, gates_t):
        g = gru_step(generator, gates_t, g, CELL_CLIP)
        return g, g

    _, states = jax.lax.scan(step, g0, gates)
    return states


def _latents(params, states):
    return states @ params["latents"]["kernel"] + params["latents"]["bias"]


def _generate(params, latent_variables: dict, num_bins: int, config: Config):
    """Latents `[time, latent_dim]` and read-out log-parameters (see `_generator_states`)."""
    latents = _latents(params, _generator_states(params, latent_variables, num_bins, config))
    return latents, readout_log_params(params["readout"], config.readout, latents)


def _trial(params, spikes, mask, key, config: Config) -> dict:
    """Read-out log-parameters from one draw of q, and the KL of q from the prior."""
    means, variances = _encode(params, spikes, mask, config)
    keys = dict(zip(("initial", "inputs"), jax.random.split(key), strict=True))
    draws = {name: means[name] + jnp.sqrt(variances[name]) * jax.random.normal(keys[name],
             means[name].shape) for name in means}  # fmt: skip
    kl = sum(gaussian_kl(means[name], variances[name], 0.0, 0.0) for name in means)
    _, log_params = _generate(params, draws, spikes.shape[0], config)
    return {"log_params": log_params, "kl": kl}


def _trial_terms(params, spikes, mask, key, config: Config, training: bool) -> dict:
    """Loss terms of one trial; `training` applies coordinated dropout (see `Config`)."""
    hidden_key, noise_key = jax.random.split(key)
    seen, weight = bin_dropout(hidden_key, mask, config.cd_rate, training)
    out = _trial(params, spikes, seen, noise_key, config)
    log_lik = readouts.log_likelihood(config.readout, out["log_params"], spikes)
    return {
        "recon": -jnp.sum(log_lik * weight[:, None]),
        "kl": out["kl"],
        "entries": jnp.sum(mask) * spikes.shape[-1],
    }


def _loss(params, batch: Trials, key, config: Config, kl_weight, training: bool):
    keys = jax.random.split(key, batch.spikes.shape[0])
    terms = jax.vmap(_trial_terms, in_axes=(None, 0, 0, 0, None, None))(
        params,
        jnp.asarray(batch.spikes, jnp.float32),
        jnp.asarray(batch.mask),
        keys,
        config,
        training,
    )
    entries = jnp.maximum(jnp.sum(terms["entries"]), 1.0)
    recon = jnp.sum(terms["recon"]) / entries
    kl = jnp.sum(terms["kl"]) / entries
    return recon + config.kl_scale * kl_weight * kl, {"recon": recon, "kl": kl}


def loss(params, batch: Trials, key, config: Config, step) -> tuple[jax.Array, dict]:
    """Negative ELBO per observed entry with a KL ramp, under coordinated dropout when
    `cd_rate > 0`; aux `recon`, `kl` (per entry)."""
    kl_weight = ramp(step, start=0, length=config.kl_ramp_steps)
    return _loss(params, batch, key, config, kl_weight, training=True)


def validation_loss(params, batch: Trials, key, config: Config, step) -> tuple[jax.Array, dict]:
    """`loss` with the KL at its full weight, whatever the step (validation values stay
    comparable across the KL ramp, so early stopping does not pick a step inside it), and
    without coordinated dropout (every observed bin seen and scored)."""
    del step
    return _loss(params, batch, key, config, 1.0, training=False)


def _neg_log_joint(params, spikes, mask, latent_variables: dict, config: Config):
    """`-log p(y, z0, u)` of one trial's observed bins (priors N(0, I))."""
    _, log_params = _generate(params, latent_variables, spikes.shape[0], config)
    log_lik = readouts.log_likelihood(config.readout, log_params, spikes)
    log_prior = sum(jnp.sum(gaussian_log_prob(x, 0.0, 1.0)) for x in latent_variables.values())
    return -jnp.sum(log_lik * mask[:, None]) - log_prior


def _trial_posterior(params, spikes, mask, refine_lr, config: Config, refine_steps: int) -> dict:
    means, _ = _encode(params, spikes, mask, config)
    if refine_steps:
        objective = functools.partial(_neg_log_joint, params, spikes, mask, config=config)
        means = refine_to_map(objective, means, refine_steps, refine_lr)
    latents, log_params = _generate(params, means, spikes.shape[0], config)
    return {
        "latents": latents,
        "rates": readouts.expected_value(config.readout, log_params),
        "initial_mean": means["initial"],
        "inputs": means.get("inputs", jnp.zeros((spikes.shape[0], 0))),
    }


_batched_posterior = jax.jit(
    jax.vmap(_trial_posterior, in_axes=(None, 0, 0, None, None, None)),
    static_argnames=("config", "refine_steps"),
)


def posterior(
    params, trials: Trials, config: Config, key, *, refine_steps: int = 0, refine_lr: float = 0.05
) -> Posterior:
    """Latents and rates on the bin grid (masked bins are predicted too) from the posterior
    means of the initial state and inputs.

    Args:
      params: a fitted model's parameters (`FitResult.params`).
      config: its config (`FitResult.config`).
      trials: `Trials` `[trials, time, neurons]`.
      key: unused (the read-out is deterministic).
      refine_steps: Adam steps that refine each trial's initial state (and inputs) from the
        encoder's means to the MAP of `p(y | z0, u) p(z0) p(u)` on the trial's observed bins
        (0: the encoder's means, fully amortised); `refine_lr` is their learning rate.

    Returns `Posterior` with `latents` `[trials, time, latent_dim]`, `rates` `[trials, time,
    neurons]` (expected counts per bin; the mean signal for the Gaussian read-out) and extras
    `initial_mean` `[trials, initial_dim]`, `inputs` `[trials, time, input_dim]` (refined,
    with `refine_steps`).
    """
    del key
    _check_trials(config, trials, "posterior")
    check_refine_options("seqvae.posterior", refine_steps, refine_lr)
    num_neurons = params["readout"]["bias"].shape[0]
    if trials.num_neurons != num_neurons:
        raise ValueError(
            f"seqvae.posterior: `trials` has {trials.num_neurons} neurons, the model {num_neurons}"
        )
    out = _batched_posterior(
        params,
        jnp.asarray(trials.spikes, jnp.float32),
        jnp.asarray(trials.mask),
        jnp.float32(refine_lr),
        config,
        refine_steps,
    )
    out = jax.tree.map(np.asarray, out)
    extras = {"initial_mean": out["initial_mean"], "inputs": out["inputs"]}
    return Posterior(latents=out["latents"], rates=out["rates"], extras=extras)


def dynamics(params, config: Config, posterior: Posterior) -> LearnedDynamics:
    """The generator's autonomous map `g -> g'` (the GRU with zero input) on its
    `generator_dim` state, with the states it visited from each trial's posterior initial
    state and inputs (`posterior` from `lj.infer`); latents `W_f g + b_f`."""
    initial = jnp.asarray(posterior.initial_mean)
    num_bins = np.shape(posterior.latents)[1]
    variables = {"initial": initial}
    if config.input_dim:
        variables["inputs"] = jnp.asarray(posterior.inputs)
    states = jax.vmap(lambda v: _generator_states(params, v, num_bins, config))(variables)
    return LearnedDynamics(
        function=autonomous_gru_step,
        kind="map",
        args=(_generator(params, config), CELL_CLIP),
        states=states,
        latents=functools.partial(_latents, params),
    )
