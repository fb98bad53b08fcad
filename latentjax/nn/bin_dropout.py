"""Coordinated dropout over bins, shared by the node and seqvae losses.

A random `rate` of the observed bins is hidden from the encoder and only those bins are
scored, weighted `1 / rate` so the expected loss is unchanged (Keshtkaran & Pandarinath 2019,
applied to whole bins): the model is trained to predict bins it did not see.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["bin_dropout"]


def bin_dropout(key, mask, rate, training: bool):
    """`(seen [time] bool, weight [time])` for one trial's `mask` `[time]`.

    Outside training, or with `rate == 0` (`rate` may be a traced knob), the encoder sees and
    the loss scores every observed bin.
    """
    weight = mask.astype(jnp.float32)
    if not training:
        return mask, weight
    hidden = jax.random.uniform(key, mask.shape) < rate
    scored = (mask & hidden) / jnp.where(rate > 0, rate, 1.0)
    return mask & ~hidden, jnp.where(rate > 0, scored, weight)
