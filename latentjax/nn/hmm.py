"""Exact inference in a discrete-state Markov chain, for one trial, in log space.

The chain has K states,

    s_0 ~ pi,    p(s_{t+1} = k | s_t = j) = P_t[j, k],    log p(y_t | s_t = k) = l_t[k],

with transition matrices that may change over time (`[T-1, K, K]`, entry t moving from bin t
to bin t+1; the recurrent switching LDS needs them) or stay fixed (`[K, K]`). An unobserved
bin has l_t = 0. Every recursion is a `lax.scan` in log space (`logsumexp`), so long trials
and near-zero probabilities neither underflow nor need rescaling.

- `forward_backward`: log p(y), the marginals p(s_t | y) `[T, K]` and the two-slice marginals
  summed over time (`transition_counts` `[K, K]`, the expected transition counts of EM).
- `viterbi`: the most likely state path `[T]`.
- `kmeans`: Lloyd's algorithm with k-means++ seeding (initial states of HMMs and SLDS).

All functions work on one trial (kmeans on one point cloud); callers vmap over trials.

Examples:
    >>> import jax.numpy as jnp
    >>> from latentjax.nn.hmm import forward_backward, viterbi
    >>> log_pi = jnp.log(jnp.array([0.5, 0.5]))
    >>> log_p = jnp.log(jnp.array([[0.9, 0.1], [0.1, 0.9]]))
    >>> log_l = jnp.log(jnp.array([[0.8, 0.2], [0.7, 0.3], [0.01, 0.99]]))
    >>> forward_backward(log_pi, log_p, log_l).marginals.shape
    (3, 2)
    >>> viterbi(log_pi, log_p, log_l).tolist()
    [0, 0, 1]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp

__all__ = ["ChainPosterior", "forward_backward", "kmeans", "viterbi"]


class ChainPosterior(NamedTuple):
    """Posterior of one trial's state chain.

    Attributes:
      log_likelihood: scalar log p(y).
      marginals: `[T, K]` p(s_t = k | y).
      transition_counts: `[K, K]` sum over t of p(s_t = j, s_{t+1} = k | y).
      pair_marginals: `[T-1, K, K]` p(s_t = j, s_{t+1} = k | y), or None when not asked for.
    """

    log_likelihood: jax.Array
    marginals: jax.Array
    transition_counts: jax.Array
    pair_marginals: jax.Array | None = None


def _per_step(log_transitions, num_bins: int):
    """`[T-1, K, K]` log transition matrices (a fixed `[K, K]` one broadcast)."""
    if log_transitions.ndim == 2:
        shape = (max(num_bins - 1, 0),) + log_transitions.shape
        return jnp.broadcast_to(log_transitions, shape)
    return log_transitions


def _finite(x):
    """-inf (a zero probability) as a very negative finite number, so that sums of -inf and
    +inf never make NaN in the backward pass."""
    return jnp.maximum(x, jnp.finfo(x.dtype).min / 4)


def forward_backward(
    log_initial, log_transitions, log_likelihoods, *, pairs: bool = False
) -> ChainPosterior:
    """Forward-backward in log space.

    Args:
      log_initial: `[K]` log pi.
      log_transitions: `[K, K]` or `[T-1, K, K]` log P (rows: from, columns: to).
      log_likelihoods: `[T, K]` log p(y_t | s_t = k) (0 for an unobserved bin).
      pairs: also return the `[T-1, K, K]` two-slice marginals.

    Returns:
      `ChainPosterior`.
    """
    log_initial = _finite(log_initial)
    log_likelihoods = _finite(log_likelihoods)
    num_bins = log_likelihoods.shape[0]
    steps = _finite(_per_step(log_transitions, num_bins))

    def forward(alpha, inputs):
        step, likelihood = inputs
        new = logsumexp(alpha[:, None] + step, axis=0) + likelihood
        return new, new

    first = log_initial + log_likelihoods[0]
    _, rest = lax.scan(forward, first, (steps, log_likelihoods[1:]))
    alphas = jnp.concatenate([first[None], rest], axis=0)
    log_likelihood = logsumexp(alphas[-1])

    def backward(beta, inputs):
        step, likelihood = inputs
        new = logsumexp(step + (likelihood + beta)[None, :], axis=1)
        return new, new

    last = jnp.zeros_like(first)
    _, earlier = lax.scan(backward, last, (steps, log_likelihoods[1:]), reverse=True)
    betas = jnp.concatenate([earlier, last[None]], axis=0)
    marginals = jnp.exp(alphas + betas - log_likelihood)
    marginals = marginals / jnp.sum(marginals, axis=-1, keepdims=True)
    log_pairs = (
        alphas[:-1, :, None]
        + steps
        + (log_likelihoods[1:] + betas[1:])[:, None, :]
        - log_likelihood
    )
    pair_marginals = jnp.exp(log_pairs)
    return ChainPosterior(
        log_likelihood,
        marginals,
        jnp.sum(pair_marginals, axis=0),
        pair_marginals if pairs else None,
    )


def viterbi(log_initial, log_transitions, log_likelihoods) -> jax.Array:
    """Most likely state path by max-product in log space.

    Args:
      log_initial: `[K]` log pi.
      log_transitions: `[K, K]` or `[T-1, K, K]` log P.
      log_likelihoods: `[T, K]` log p(y_t | s_t = k).

    Returns:
      `[T]` int32 states.
    """
    log_initial = _finite(log_initial)
    log_likelihoods = _finite(log_likelihoods)
    steps = _finite(_per_step(log_transitions, log_likelihoods.shape[0]))

    def forward(delta, inputs):
        step, likelihood = inputs
        scores = delta[:, None] + step
        return jnp.max(scores, axis=0) + likelihood, jnp.argmax(scores, axis=0)

    first = log_initial + log_likelihoods[0]
    last, pointers = lax.scan(forward, first, (steps, log_likelihoods[1:]))
    final = jnp.argmax(last)

    def backtrack(state, pointer):
        previous = pointer[state]
        return previous, previous

    _, path = lax.scan(backtrack, final, pointers, reverse=True)
    return jnp.concatenate([path, final[None]]).astype(jnp.int32)


def kmeans(key, points, weights, num_clusters: int, num_iters: int = 25):
    """Weighted k-means (k-means++ seeding, then Lloyd iterations).

    Args:
      key: PRNG key of the seeding.
      points: `[P, D]`.
      weights: `[P]` (0 for points to ignore, e.g. unobserved bins).
      num_clusters: K.
      num_iters: Lloyd iterations.

    Returns:
      `(centres [K, D], labels [P])`.
    """
    weights = weights.astype(points.dtype)

    def seed(carry, key):
        centres, count = carry
        gaps = jnp.sum((points[:, None] - centres[None]) ** 2, -1)
        gaps = jnp.where(jnp.arange(num_clusters)[None] < count, gaps, jnp.inf)
        nearest = jnp.min(gaps, axis=1)
        nearest = jnp.where(jnp.isfinite(nearest), nearest, 1.0)
        chosen = jax.random.choice(
            key, points.shape[0], p=weights * nearest / jnp.sum(weights * nearest)
        )
        return (centres.at[count].set(points[chosen]), count + 1), None

    centres = jnp.zeros((num_clusters, points.shape[1]), points.dtype)
    (centres, _), _ = lax.scan(seed, (centres, 0), jax.random.split(key, num_clusters))

    def lloyd(centres, _):
        labels = jnp.argmin(jnp.sum((points[:, None] - centres[None]) ** 2, -1), axis=1)
        member = jax.nn.one_hot(labels, num_clusters, dtype=points.dtype) * weights[:, None]
        size = member.sum(0)
        moved = (member.T @ points) / jnp.maximum(size, 1e-12)[:, None]
        return jnp.where(size[:, None] > 0, moved, centres), None

    centres, _ = lax.scan(lloyd, centres, None, length=num_iters)
    labels = jnp.argmin(jnp.sum((points[:, None] - centres[None]) ** 2, -1), axis=1)
    return centres, labels
