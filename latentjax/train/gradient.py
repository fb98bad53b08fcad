"""A gradient `Fitter` from any pure loss and an optax optimiser.

AdamW wrapped in `optax.inject_hyperparams`, so the learning rate and weight decay live in
the optimiser state as arrays and may be traced knobs (one compiled program for a whole
population); optional global-norm clipping; the learning rate follows
`schedules.learning_rate_factor`. Minibatches come from a per-epoch permutation drawn inside
the step from the step key at the first step of each epoch and kept in the state, so the data
order is part of every checkpoint and a resumed fit sees the same batches. Data given as a
tuple of sessions (`Trials` with different neuron counts) are minibatched session by session,
each with its own permutation, and the loss receives a tuple of minibatches.

A step whose loss or gradient is not finite leaves parameters and optimiser state unchanged
(the step counter still advances) and reports `info["skipped"] = 1`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from latentjax.train.config import TrainConfig
from latentjax.train.fitter import Fitter
from latentjax.train.schedules import learning_rate_factor

__all__ = ["GradientState", "FamilyGradientFitter", "gradient_fitter", "tree_where"]


class GradientState(NamedTuple):
    """params: the parameter pytree; opt_state: optax state; step: int32 step counter;
    order: `[trials]` int32 permutation of the training trials for the current epoch (a
    tuple of them, one per session, when the data are a tuple of sessions)."""

    params: Any
    opt_state: Any
    step: jax.Array
    order: jax.Array


def tree_where(condition, on_true, on_false):
    """Leafwise `jnp.where(condition, a, b)` over two pytrees of the same structure."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


def _sessions(data) -> tuple:
    return data if isinstance(data, tuple) else (data,)


def _num_trials(session) -> int:
    return jax.tree.leaves(session)[0].shape[0]


def _optimizer(train: TrainConfig) -> optax.GradientTransformation:
    def make(learning_rate, weight_decay):
        adamw = optax.adamw(learning_rate, weight_decay=weight_decay)
        if train.grad_clip is None:
            return adamw
        return optax.chain(optax.clip_by_global_norm(train.grad_clip), adamw)

    return optax.inject_hyperparams(make)(
        learning_rate=train.learning_rate, weight_decay=train.weight_decay
    )


def gradient_fitter(loss: Callable, train: TrainConfig) -> Fitter:
    """A Fitter minimising `loss(params, batch, key, step) -> (scalar, aux_dict)`.

    Args:
      loss: pure function of the parameters, a minibatch (a pytree whose leaves have trials
        first, e.g. `Trials` `[batch, time, neurons]`, or a tuple of them, one per session), a
        PRNG key and the traced step.
      train: optimiser settings; `learning_rate` and `weight_decay` may be tracers.

    Returns:
      `Fitter(init(params, data) -> GradientState, step(state, data, key) -> (state, info))`
      with `info` holding `loss`, `grad_norm`, `learning_rate`, `skipped` and the scalar
      entries of `aux`.
    """
    optimizer = _optimizer(train)

    def init(params, data):
        order = tuple(jnp.arange(_num_trials(s), dtype=jnp.int32) for s in _sessions(data))
        order = order if isinstance(data, tuple) else order[0]
        return GradientState(params, optimizer.init(params), jnp.zeros((), jnp.int32), order)

    def minibatch(session, order, step, key):
        num_trials = _num_trials(session)
        batch_size = min(train.batch_size or num_trials, num_trials)
        position = step % (num_trials // batch_size)
        order = jnp.where(
            position == 0, jax.random.permutation(key, num_trials).astype(jnp.int32), order
        )
        if batch_size == num_trials:
            return session, order
        index = jax.lax.dynamic_slice_in_dim(order, position * batch_size, batch_size)
        return jax.tree.map(lambda x: x[index], session), order

    def step(state, data, key):
        order_key, loss_key = jax.random.split(key)
        if isinstance(data, tuple):  # sessions: each with its own epochs and permutation
            pairs = [
                minibatch(session, order, state.step, jax.random.fold_in(order_key, s))
                for s, (session, order) in enumerate(zip(data, state.order, strict=True))
            ]
            batch, order = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
        else:
            batch, order = minibatch(data, state.order, state.step, order_key)

        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(
            state.params, batch, loss_key, state.step
        )
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)

        learning_rate = train.learning_rate * learning_rate_factor(state.step, train)
        hyperparams = dict(state.opt_state.hyperparams)
        hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
        hyperparams["weight_decay"] = jnp.asarray(train.weight_decay, jnp.float32)
        opt_state = state.opt_state._replace(hyperparams=hyperparams)
        updates, new_opt_state = optimizer.update(grads, opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        params, opt_state = tree_where(
            finite, (new_params, new_opt_state), (state.params, state.opt_state)
        )
        info = {name: jnp.asarray(v, jnp.float32) for name, v in aux.items() if jnp.ndim(v) == 0}
        info.update(
            loss=value,
            grad_norm=grad_norm,
            learning_rate=hyperparams["learning_rate"],
            skipped=jnp.where(finite, 0.0, 1.0),
        )
        return GradientState(params, opt_state, state.step + 1, order), info

    return Fitter(init, step)


@dataclasses.dataclass(frozen=True)
class FamilyGradientFitter:
    """`config -> Fitter` for a family's `loss(params, batch, key, config, step)`.

    Hashable and equal for equal losses, so the engine's compiled programs are reused across
    `fit` calls (a fresh closure would force a new compilation each time).
    """

    loss: Callable

    def __call__(self, config: Any) -> Fitter:
        def bound_loss(params, batch, key, step):
            return self.loss(params, batch, key, config, step)

        return gradient_fitter(bound_loss, config.train)
