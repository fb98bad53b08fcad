"""Augmentations against identity overfitting (Keshtkaran & Pandarinath 2019), and dropout.

- Dropout multipliers `keep / (1 - rate)` with a traced `rate` (a population knob).
- Coordinated dropout: each step hides a random fraction `cd_rate` of the encoder's input
  entries and scores the reconstruction only on the hidden ones, so passing inputs straight
  through to the rates (the identity) earns nothing.
- Sample validation: a fixed fraction `sv_rate` of each trial's entries never reaches the
  encoders nor the training loss; the validation loss scores exactly those entries. The
  fixed choice is a hash of the trial's own data and a seed, so it is the same for a trial in
  every minibatch without carrying trial ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["coordinated_dropout", "dropout_multiplier", "sample_validation_mask"]


def dropout_multiplier(key, rate, shape):
    """`keep / (1 - rate)` with keep ~ Bernoulli(1 - rate); all ones when `rate` is 0."""
    keep = jax.random.uniform(key, shape) >= rate
    return keep / (1.0 - rate)


def coordinated_dropout(key, rate, shape):
    """(input multiplier, loss weight) `[shape]` for coordinated dropout at `rate`.

    The encoders see `x * multiplier`; the reconstruction counts entry e with `weight[e]`:
    the hidden entries scaled by 1 / rate (an unbiased estimate of the full sum), or every
    entry with weight 1 when `rate` is 0.
    """
    keep = jax.random.uniform(key, shape) >= rate
    hidden_weight = (~keep) / jnp.maximum(rate, 1e-6)
    return keep / (1.0 - rate), jnp.where(rate > 0, hidden_weight, 1.0)


def _trial_hash(values):
    """A uint32 digest of one trial's data (exact: works on the bits, not on float sums)."""
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.uint32).ravel()
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.sum(bits * weights, dtype=jnp.uint32)


def sample_validation_mask(values, rate: float, seed: int):
    """Bool `[time, neurons]`: True on the entries held out for sample validation.

    `values` `[time, neurons]` is the trial's data; the same trial always gets the same mask.
    """
    key = jax.random.fold_in(jax.random.key(seed), _trial_hash(values))
    return jax.random.uniform(key, values.shape) < rate
