"""One EM `Fitter` builder for every family fitted by expectation-maximisation.

A family writes its E-step and M-step as pure functions; `em_fitter` makes the `Fitter`
the engine drives (one E-step and one M-step per engine step), with the same `info` for all:
`log_likelihood` (log p(y) of the observed entries, or its approximation, at the parameters
entering the step) and `loss`, its negative per observed entry.

A family's `fitter(config)` returns `em_fitter(e_step, m_step)` (see `models/lds.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from latentjax.train.fitter import Fitter

__all__ = ["EMState", "EStep", "em_fitter"]


class EMState(NamedTuple):
    """params: the current parameters; carry: what the E-step keeps from one iteration to
    the next (e.g. posterior modes to warm-start a Laplace E-step), `()` when nothing."""

    params: Any
    carry: Any = ()


class EStep(NamedTuple):
    """What an E-step returns: `statistics` for the M-step, the `log_likelihood` (scalar,
    summed over trials), `num_entries` (observed entries it covers) and the next `carry`."""

    statistics: Any
    log_likelihood: jax.Array
    num_entries: jax.Array
    carry: Any = ()


def em_fitter(
    e_step: Callable[[Any, Any, Any], EStep],
    m_step: Callable[[Any, Any, Any], Any],
    init_carry: Callable[[Any, Any], Any] | None = None,
) -> Fitter:
    """An EM `Fitter`.

    Args:
      e_step: `(params, data, carry) -> EStep`.
      m_step: `(params, statistics, data) -> params`.
      init_carry: `(params, data) -> carry` of the first iteration; default `()`.

    Returns:
      `Fitter` whose state is `EMState` and whose `info` holds `loss` (the negative
      log-likelihood per observed entry) and `log_likelihood`.
    """

    def init(params, data):
        return EMState(params, () if init_carry is None else init_carry(params, data))

    def step(state, data, key):
        del key  # EM is deterministic
        expectation = e_step(state.params, data, state.carry)
        params = m_step(state.params, expectation.statistics, data)
        total = expectation.log_likelihood
        info = {"loss": -total / expectation.num_entries, "log_likelihood": total}
        return EMState(params, expectation.carry), info

    return Fitter(init, step)
