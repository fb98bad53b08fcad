"""Hyperparameters of the latent neural ODE: one frozen `Config`.

Sizes and solver choices are static under jit; `kl_scale`, `continuity_std`, `cd_rate` and
the training knobs may vary across a population (the engine passes them as traced scalars).

Loss convention (as LFADS, so knob values compare across datasets): the negative ELBO per
observed entry (bin x neuron), `(-log p(y | z) + kl_scale * r(step) * KL(q(z) || p(z))) /
entries`, averaged over trials, `r` a linear ramp from 0 to 1 over `kl_ramp_steps`; `z` are
the anchor states, `p(z)` is N(0, I) for one segment and the multiple-shooting prior
(`family`) for several.
"""

from __future__ import annotations

import dataclasses

from latentjax.train.config import TrainConfig, knob

__all__ = ["ADJOINTS", "ANCHORS", "Config", "READOUTS", "SOLVERS"]

SOLVERS = ("tsit5", "dopri5", "kvaerno5", "euler", "heun")
ADJOINTS = ("recursive", "backsolve", "forward")
READOUTS = ("poisson", "gaussian")
ANCHORS = ("first", "middle")


@dataclasses.dataclass(frozen=True)
class Config:
    """Latent neural ODE (Rubanova et al. 2019; Chen et al. 2018) for irregular observations.

    Architecture (static):
      latent_dim: dimensions of the latent state z(t).
      hidden_dim: units of each hidden layer of the MLP vector field.
      depth: hidden layers of the vector field.
      encoder_dim: units of each encoder GRU over (observation, time gap) pairs.
      anchor: where the inferred state sits: "first" (the first observed time, read by a
        backward GRU; the ODE runs forward over the whole trial) or "middle" (the middle
        observed time, read by a forward and a backward GRU; the ODE runs forward and
        backward from it, so errors in the inferred state grow over half the horizon; the
        default: on sparse Lorenz spikes "first" extrapolated wildly before the first
        observation, see benchmarks/node.md).
      segments: multiple shooting (see `family`): the observed bins of a trial are cut into
        this many chunks, each with its own anchor (placed by `anchor` within its chunk) and
        inferred state, tied to the previous segment's solve by the continuity prior; 1 (the
        default): one state for the whole trial.
      readout: "poisson" (counts; rates = exp(C z + d)) or "gaussian" (continuous signals;
        mean C z + d and a learned variance per neuron).
      time_scale: ODE time units per second of `Trials.times`: the field is solved in
        `s = time_scale * (t - t_first)`, so its output stays of order one. None (the
        default): `lj.fit` sets it from the training data, so that the median trial spans
        10 ODE time units (`adapt`); the fitted config records the value.
    Solver (static):
      solver: "tsit5" (adaptive explicit, default), "dopri5", "kvaerno5" (implicit, for stiff
        fields), "euler" or "heun" (fixed step: set `step_size`).
      step_size: a fixed step (in ODE time) for any solver; None uses adaptive steps
        (PID control with `rtol`, `atol`; not possible for "euler").
      rtol, atol: tolerances of adaptive steps.
      max_steps: solver steps allowed per trial.
      adjoint: "recursive" (backpropagate through the solver with recursive checkpointing)
        or "backsolve" (the continuous adjoint method: O(1) memory in the solve length),
        or "forward" (forward-mode only: `jax.jvp` / `jax.jacfwd` of a solve, e.g. the
        Hessian of the Laplace proposal in `posterior`; it cannot train).
      throw: True: inference raises `SolverError` (naming the trial, the time reached and
        `max_steps`) when a solve fails, and in training a step with a failed solve is a
        failed step (NaN loss with `solver_failures` > 0: the engine skips it and marks the
        member failed at once, its parameters the last good ones; a population's other
        members go on, a single fit stops with `NonFiniteError`). False masks
        the failing trials out (NaN in the posterior, left out of the loss) and reports
        `solver_failures` (the fraction of trials) in the training history.
    Knobs:
      kl_scale: weight of the KL term (1.0 is the ELBO).
      continuity_std: standard deviation of the continuity prior between consecutive anchor
        states (`segments > 1`; latent units): small ties the segments into one trajectory
        of the field, large lets each segment start afresh.
      cd_rate: coordinated dropout over bins: each training step hides this fraction of the
        observed bins from the encoder and scores the reconstruction on those bins only
        (trains prediction of unseen bins; 0 turns it off; validation never hides bins).
      train: optimiser and loop settings ("train.learning_rate" is a knob; `steps` None
        sizes the training to the data, `latentjax.train.auto_steps`).
      kl_ramp_steps: steps of the linear KL ramp (static).
    """

    latent_dim: int = 8
    hidden_dim: int = 64
    depth: int = 2
    encoder_dim: int = 64
    anchor: str = "middle"
    segments: int = 1
    readout: str = "poisson"
    time_scale: float | None = None
    solver: str = "tsit5"
    step_size: float | None = None
    rtol: float = 1e-3
    atol: float = 1e-4
    max_steps: int = 4096
    adjoint: str = "recursive"
    throw: bool = True
    kl_ramp_steps: int = 200
    kl_scale: float = knob(1.0, "nonnegative")
    continuity_std: float = knob(0.1, "positive")
    cd_rate: float = knob(0.0, "probability")
    train: TrainConfig = TrainConfig(learning_rate=3e-3, batch_size=32, steps=None, grad_clip=10.0)

    def __post_init__(self):
        for name in ("latent_dim", "hidden_dim", "encoder_dim", "segments", "max_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"node.Config: `{name}` must be a positive int, got {value!r}")
        for name in ("depth", "kl_ramp_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"node.Config: `{name}` must be an int >= 0, got {value!r}")
        for name, options in (
            ("solver", SOLVERS),
            ("adjoint", ADJOINTS),
            ("readout", READOUTS),
            ("anchor", ANCHORS),
        ):
            if getattr(self, name) not in options:
                raise ValueError(
                    f"node.Config: `{name}` must be one of {options}, got {getattr(self, name)!r}"
                )
        if self.time_scale is not None and not self.time_scale > 0:
            raise ValueError(
                f"node.Config: `time_scale` must be > 0 or None, got {self.time_scale}"
            )
        for name in ("rtol", "atol", "continuity_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"node.Config: `{name}` must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.cd_rate < 1.0:
            raise ValueError(f"node.Config: `cd_rate` must be in [0, 1), got {self.cd_rate}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"node.Config: `step_size` must be > 0 or None, got {self.step_size}")
        if self.solver == "euler" and self.step_size is None:
            raise ValueError("node.Config: the 'euler' `solver` needs a fixed `step_size`")
        if not isinstance(self.throw, bool):
            raise ValueError(f"node.Config: `throw` must be a bool, got {self.throw!r}")
        if not isinstance(self.train, TrainConfig):
            raise ValueError("node.Config: `train` must be a latentjax.train.TrainConfig")
