"""The Poisson log-likelihood of counts given a linear predictor, with its derivatives.

    y ~ Poisson(f(a)),   f = exp (rates exp(a)) or softplus (rates log(1 + exp(a)))

`log_likelihood_terms` returns, per entry, log p(y | a) and its first two derivatives in `a`
(the gradient and the *negative* second derivative, the curvature a Newton step or a Laplace
approximation uses); `newton_maximise` fits a neuron's read-out by damped Newton steps. Shared
by the Poisson LDS and the hierarchical multi-region model.

Examples:
    >>> import jax.numpy as jnp
    >>> from latentjax.nn.poisson import log_likelihood_terms
    >>> value, gradient, curvature = log_likelihood_terms("exp", jnp.ones(2), jnp.zeros(2))
    >>> gradient.tolist(), curvature.tolist()
    ([0.0, 0.0], [1.0, 1.0])
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

__all__ = ["LINKS", "STEP_SIZES", "log_factorial", "log_likelihood_terms", "newton_maximise"]

LINKS = ("exp", "softplus")
STEP_SIZES = (1.0, 0.5, 0.25, 0.1, 0.0)  # of a damped Newton step; 0 keeps the current point


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def log_factorial(counts):
    """log(y!) = lgamma(y + 1) of counts `[...]` (any real y >= 0), elementwise.

    Stirling's series at w = y + 7, where five terms leave an error under 1e-12, less the
    logs of (y + 1) ... (y + 6). About twice as fast as `gammaln` on CPU (which also
    prepares for negative arguments), and as accurate in float32 and float64.
    """
    w = counts + 7.0
    inv = 1.0 / w
    inv2 = inv * inv
    series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 * (1 / 1680 - inv2 / 1188))))
    stirling = (w - 0.5) * jnp.log(w) - w + _HALF_LOG_2PI + series
    low = (counts + 1) * (counts + 2) * (counts + 3)
    high = (counts + 4) * (counts + 5) * (counts + 6)
    return stirling - jnp.log(low) - jnp.log(high)


def log_likelihood_terms(link: str, counts, linear):
    """Poisson log-likelihood per entry and its derivatives in the linear predictor.

    Args:
      link: "exp" or "softplus".
      counts: `[...]` counts y.
      linear: `[...]` linear predictor a (the same shape).

    Returns:
      `(value, gradient, curvature)`, each `[...]`: log p(y | a), d/da log p and
      -d^2/da^2 log p.
    """
    if link == "exp":
        rate = jnp.exp(linear)
        return counts * linear - rate - gammaln(counts + 1), counts - rate, rate
    rate = jax.nn.softplus(linear)
    slope = jax.nn.sigmoid(linear)
    ratio = counts / rate
    value = counts * jnp.log(rate) - rate - gammaln(counts + 1)
    gradient = (ratio - 1.0) * slope
    curvature = ratio / rate * slope**2 - (ratio - 1.0) * slope * (1.0 - slope)
    return value, gradient, curvature


def newton_maximise(value, theta, iterations: int, fixed=None):
    """`theta` `[P]` after `iterations` Newton steps on the concave `value(theta)`, each taking
    the best finite value among `STEP_SIZES` of the step (a non-finite step, as from a
    singular Hessian, leaves theta where it is). `fixed` `[P]` (1 for coordinates held in
    place) adds that much curvature to them, so they barely move."""
    extra = jnp.zeros_like(theta) if fixed is None else fixed

    def step(theta, _):
        gradient = jax.grad(value)(theta)
        hessian = jax.hessian(value)(theta)
        direction = jnp.linalg.solve(hessian - jnp.diag(1e-6 + extra), -gradient)
        candidates = jnp.stack([theta + a * direction for a in STEP_SIZES])
        values = jax.vmap(value)(candidates)
        finite = jnp.isfinite(values) & jnp.isfinite(candidates).all(-1)
        best = jnp.argmax(jnp.where(finite, values, -jnp.inf))
        return jnp.where(finite.any(), candidates[best], theta), None

    return jax.lax.scan(step, theta, None, length=iterations)[0]
