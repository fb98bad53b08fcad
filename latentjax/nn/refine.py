"""Per-trial refinement of amortised posterior means to the MAP, shared by node and seqvae.

Semi-amortised inference (Kim et al. 2018): the encoder's means start a few Adam steps on one
trial's `-log p(y, z)`, closing part of the amortisation gap on trials the encoder fits badly
(new trials above all).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["check_refine_options", "refine_to_map"]


def refine_to_map(objective, start, steps: int, lr):
    """MAP estimate of one trial's latent variables (a pytree shaped like `start`): `steps`
    Adam steps (learning rate `lr`) on `objective` (`-log p(y, z)` of the trial) from the
    encoder's means `start`. Falls back to `start` where the refined value is not finite or
    not lower."""
    optimizer = optax.adam(lr)

    def step(carry, _):
        latents, opt_state = carry
        updates, opt_state = optimizer.update(jax.grad(objective)(latents), opt_state)
        return (optax.apply_updates(latents, updates), opt_state), None

    (refined, _), _ = jax.lax.scan(step, (start, optimizer.init(start)), length=steps)
    refined_value = objective(refined)
    keep = jnp.isfinite(refined_value) & (refined_value <= objective(start))
    return jax.tree.map(lambda new, old: jnp.where(keep, new, old), refined, start)


def check_refine_options(where: str, refine_steps, refine_lr) -> None:
    """`ValueError` naming `where` (e.g. "node.posterior") for bad refinement options."""
    if not isinstance(refine_steps, int) or isinstance(refine_steps, bool) or refine_steps < 0:
        raise ValueError(f"{where}: `refine_steps` must be an int >= 0, got {refine_steps!r}")
    if not refine_lr > 0:
        raise ValueError(f"{where}: `refine_lr` must be > 0, got {refine_lr!r}")
