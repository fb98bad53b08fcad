"""Schedules as pure functions of the (traced) step: KL / L2 ramps and learning-rate decay.

A loss weights its KL term by `config.kl_weight * ramp(step, start=..., length=...)`.

Examples:
    >>> from latentjax.train.schedules import ramp
    >>> [float(ramp(step, start=100, length=200)) for step in (0, 200, 400)]
    [0.0, 0.5, 1.0]
"""

from __future__ import annotations

import jax.numpy as jnp

from latentjax.train.config import TrainConfig

__all__ = ["learning_rate_factor", "ramp"]


def ramp(step, *, start: int | float = 0, length: int | float = 0):
    """Linear ramp from 0 (before `start`) to 1 (at `start + length` and after).

    The usual warm-up of KL and L2 penalties in sequential VAEs (LFADS). `length = 0` gives a
    step function at `start`. Works on traced steps; returns float32 in [0, 1].
    """
    step = jnp.asarray(step, jnp.float32)
    if length == 0:
        return jnp.where(step >= start, 1.0, 0.0).astype(jnp.float32)
    return jnp.clip((step - start) / length, 0.0, 1.0)


def learning_rate_factor(step, train: TrainConfig):
    """Multiplier of the peak learning rate at `step`: linear warm-up, then the decay named by
    `train.schedule` ("constant", "cosine" or "linear") down to `train.final_lr_fraction` at
    `train.steps`."""
    step = jnp.asarray(step, jnp.float32)
    warmup = ramp(step, start=0, length=train.warmup_steps) if train.warmup_steps else 1.0
    progress = jnp.clip(
        (step - train.warmup_steps) / max(train.steps - train.warmup_steps, 1), 0.0, 1.0
    )
    floor = train.final_lr_fraction
    if train.schedule == "cosine":
        decay = floor + (1 - floor) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    elif train.schedule == "linear":
        decay = 1 - (1 - floor) * progress
    else:
        decay = 1.0
    return jnp.asarray(warmup * decay, jnp.float32)
