"""Toy families for the engine tests: no model family of latentjax is needed.

`Config` (this module is its family): per-neuron means fitted by gradient descent on the
squared error, `loss = mean((spikes - mean)^2) + l2 * |mean|^2`, whose minimiser is known in
closed form. `nan_from` / `nan_until` poison the gradient (NaN) on steps in that range.

`EMConfig` / `EMFamily`: the same means fitted by a damped fixed-point iteration through a
`Fitter` (the shape of an EM family). Both are registered with `lj.family.register`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import latentjax as lj
from latentjax.train import Fitter, TrainConfig, knob

TRACES = {"loss": 0}


@dataclasses.dataclass(frozen=True)
class Config:
    l2: float = knob(0.0)
    nan_from: float = knob(-1.0)  # knobs, so that poisoned fits share one compiled program
    nan_until: float = knob(-1.0)
    train: TrainConfig = TrainConfig(
        learning_rate=0.05, steps=40, chunk_size=10, checkpoint_every=10, max_nonfinite=5
    )


@jax.custom_vjp
def _poison(x, poisoned):
    return x


def _poison_fwd(x, poisoned):
    return x, poisoned


def _poison_bwd(poisoned, cotangent):
    return jnp.where(poisoned, jnp.nan, 1.0) * cotangent, None


_poison.defvjp(_poison_fwd, _poison_bwd)


def init(key, config, trials):
    return {"mean": jax.random.normal(key, (trials.num_neurons,))}


def loss(params, batch, key, config, step):
    TRACES["loss"] += 1
    poisoned = (step >= config.nan_from) & (step < config.nan_until)
    mean = _poison(params["mean"], poisoned)
    weights = batch.mask[:, :, None].astype(jnp.float32)
    error = jnp.sum(weights * (batch.spikes - mean) ** 2) / jnp.sum(weights)
    penalty = config.l2 * jnp.sum(mean**2)
    return error + penalty, {"error": error}


def validation_loss(params, batch, key, config, step):
    return loss(params, batch, key, config, step)


def posterior(params, trials, config, key):
    rates = jnp.broadcast_to(params["mean"], trials.spikes.shape)
    return lj.Posterior(latents=rates[..., :1], rates=rates)


def minibatch_config() -> Config:
    """The toy config trained on minibatches of 4 trials (a per-epoch permutation)."""
    return dataclasses.replace(Config(), train=dataclasses.replace(Config().train, batch_size=4))


def optimum(trials, l2=0.0):
    """Closed-form minimiser of the toy loss over all trials: [neurons]."""
    spikes = np.asarray(trials.spikes, np.float64)
    per_neuron = spikes.reshape(-1, spikes.shape[-1]).mean(0)
    # d/dm_n [ mean_bt (s_btn - m_n)^2 + l2 m_n^2 ] = 0  ->  m_n = s_bar_n / (1 + l2)
    return per_neuron / (1 + l2)


def make_trials(num_trials=16, num_bins=10, num_neurons=5, seed=0):
    rng = np.random.default_rng(seed)
    rates = np.linspace(1.0, 8.0, num_neurons)
    return lj.Trials(rng.poisson(rates, (num_trials, num_bins, num_neurons)), dt=0.01)


@dataclasses.dataclass(frozen=True)
class EMConfig:
    damping: float = knob(0.5)
    train: TrainConfig = TrainConfig(steps=20, chunk_size=5)


class EMState(NamedTuple):
    params: dict
    iteration: jax.Array


class EMFamily:
    Config = EMConfig

    @staticmethod
    def init(key, config, trials):
        return {"mean": jax.random.normal(key, (trials.num_neurons,))}

    @staticmethod
    def fitter(config):
        def init(params, data):
            return EMState(params, jnp.zeros((), jnp.int32))

        def step(state, data, key):
            target = jnp.mean(data.spikes, axis=(0, 1))
            mean = state.params["mean"]
            new = (1 - config.damping) * mean + config.damping * target
            info = {"loss": jnp.mean((data.spikes - mean) ** 2)}
            return EMState({"mean": new}, state.iteration + 1), info

        return Fitter(init, step)

    @staticmethod
    def validation_loss(params, trials, key, config, step):
        return jnp.mean((trials.spikes - params["mean"]) ** 2), {}

    @staticmethod
    def posterior(params, trials, config, key):
        rates = jnp.broadcast_to(params["mean"], trials.spikes.shape)
        return lj.Posterior(latents=rates[..., :1], rates=rates)


lj.family.register("toy", sys.modules[__name__])
lj.family.register("toy_em", EMFamily)
