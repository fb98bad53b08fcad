"""LFADS hyperparameters: one frozen `Config` and named presets.

Sizes and choices are static under jit. Continuous knobs that a population may vary (dropout,
coordinated dropout, KL and L2 weights) carry `metadata={"knob": True}`; the engine replaces
them by traced scalars, so the model uses them only arithmetically.

Loss convention (so that knob values are comparable across datasets): the loss is the negative
ELBO per reconstructed entry (bin x neuron), `(-log p(y|z) + kl_ic_scale * r(step) * KL_ic +
kl_co_scale * r(step) * KL_co) / entries`, averaged over trials, plus the L2 penalties
`scale * r_l2(step) * 0.5 * ||W_rec||^2 / W_rec.size` on the generator's and the controller's
recurrent kernels. `r` and `r_l2` are linear ramps from 0 to 1 (static start and length).
"""

from __future__ import annotations

import dataclasses

from latentjax.nn.readouts import READOUTS
from latentjax.train.config import TrainConfig, knob

__all__ = ["Config"]

CO_PRIORS = ("ar1", "gaussian")


@dataclasses.dataclass(frozen=True)
class Config:
    """LFADS (Pandarinath et al. 2018) with the AutoLFADS augmentations.

    Architecture (static):
      ic_enc_dim: units of each direction of the initial-condition encoder (bidirectional GRU).
      ci_enc_dim: units of each direction of the controller-input encoder (bidirectional GRU).
      con_dim: controller GRU units.
      co_dim: inferred-input dimensions (0: no controller, an autonomous generator).
      ic_dim: dimensions of the initial-condition posterior (mapped linearly to `gen_dim`).
      gen_dim: generator GRU units.
      fac_dim: factors (linear map of the generator state with unit-norm columns).
      readin_dim: width of a linear read-in in front of the encoders; None reads the held-in
        neurons directly. Required (an int) for several sessions: each session then has its
        own read-in and read-out, initialised by PCA regression.
      ci_lag: the controller at bin t sees the forward encoder at t - lag and the backward
        encoder at t + lag.
      cell_clip: generator and controller hidden states are clipped to [-clip, clip].
      co_prior: "ar1" (autoregressive prior with learned timescale and variance per input) or
        "gaussian" (learned mean and variance, independent over time).
      readout: observation model, one of "poisson" (default, counts), "gaussian", "gamma",
        "zero_inflated_gamma" (continuous signals such as calcium or EMG).
      zig_threshold: for "zero_inflated_gamma", values <= threshold count as zeros and the
        Gamma part models `y - threshold`.
      n_heldout: held-out neurons: the LAST `n_heldout` columns of `spikes` are never shown
        to the encoders; the read-out predicts all columns (held-in then held-out), so
        co-bps on held-out neurons comes straight from `posterior(...).rates[..., -n_heldout:]`.
      forward_bins: the last `forward_bins` bins are not encoded, only reconstructed (forward
        prediction, as NLB's fp-bps).
      external_inputs: columns of `Trials.behavior` fed to the generator as external inputs.
      ic_post_var_min, co_post_var_min: floors on the posterior variances.
      sv_rate: sample validation (Keshtkaran & Pandarinath 2019): this fraction of
        (bin, neuron) entries of every trial is hidden from the encoders and from the training
        loss; `validation_loss` scores the reconstruction of exactly those entries. The
        hidden entries are a fixed function of each trial's content and `sv_seed`.
      kl_ramp_start, kl_ramp_steps, l2_ramp_start, l2_ramp_steps: linear ramps (in steps).
      causal: the causal variant for real-time decoding: no initial-condition encoder (a
        learned initial-condition posterior) and a forward-only controller-input encoder,
        so the factors of bin t see bins up to t only; `lj.infer(..., causal=True)` and
        `lj.decode.stream` run it (trained and swept like the bidirectional model).
    Knobs (a population may vary them):
      dropout: dropout rate on the encoder inputs, encoder outputs and generator states.
      cd_rate: coordinated dropout rate: each step hides this fraction of input entries from
        the encoders and scores the reconstruction on the hidden entries only.
      kl_ic_scale, kl_co_scale: weights of the two KL terms (1.0 is the ELBO).
      l2_gen_scale, l2_con_scale: weights of the L2 penalties on recurrent kernels.
      train: optimiser and loop settings (the engine's `TrainConfig`; its learning rate is
        a knob addressed as "train.learning_rate"; `steps` None sizes the training to the
        data, `latentjax.train.auto_steps`).
    """

    ic_enc_dim: int = 64
    ci_enc_dim: int = 64
    con_dim: int = 64
    co_dim: int = 4
    ic_dim: int = 64
    gen_dim: int = 100
    fac_dim: int = 20
    readin_dim: int | None = None
    ci_lag: int = 1
    cell_clip: float = 5.0
    co_prior: str = "ar1"
    readout: str = "poisson"
    zig_threshold: float = 0.0
    n_heldout: int = 0
    forward_bins: int = 0
    external_inputs: tuple[int, ...] = ()
    ic_post_var_min: float = 1e-4
    co_post_var_min: float = 1e-4
    sv_rate: float = 0.0
    sv_seed: int = 0
    kl_ramp_start: int = 0
    kl_ramp_steps: int = 500
    l2_ramp_start: int = 0
    l2_ramp_steps: int = 500
    causal: bool = False

    dropout: float = knob(0.05, "probability")
    cd_rate: float = knob(0.0, "probability")
    kl_ic_scale: float = knob(1.0, "nonnegative")
    kl_co_scale: float = knob(1.0, "nonnegative")
    l2_gen_scale: float = knob(1e-4, "nonnegative")
    l2_con_scale: float = knob(0.0, "nonnegative")
    train: TrainConfig = TrainConfig(learning_rate=1e-3, batch_size=32, steps=None, grad_clip=200.0)

    def __post_init__(self):
        sizes = ("ic_enc_dim", "ci_enc_dim", "con_dim", "ic_dim", "gen_dim", "fac_dim")
        for name in sizes:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"lfads.Config: `{name}` must be a positive int")
        for name in ("co_dim", "n_heldout", "forward_bins", "ci_lag", "kl_ramp_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"lfads.Config: `{name}` must be an int >= 0")
        if self.readin_dim is not None and (
            not isinstance(self.readin_dim, int) or self.readin_dim < 1
        ):
            raise ValueError("lfads.Config: `readin_dim` must be None or a positive int")
        if self.readout not in READOUTS:
            raise ValueError(f"lfads.Config: `readout` must be one of {READOUTS}")
        if self.co_prior not in CO_PRIORS:
            raise ValueError(f"lfads.Config: `co_prior` must be one of {CO_PRIORS}")
        if not 0.0 <= self.sv_rate < 1.0:
            raise ValueError(f"lfads.Config: `sv_rate` must be in [0, 1), got {self.sv_rate}")
        if not isinstance(self.causal, bool):
            raise ValueError(f"lfads.Config: `causal` must be True or False, got {self.causal!r}")
        if not self.cell_clip > 0:
            raise ValueError("lfads.Config: `cell_clip` must be positive")
        object.__setattr__(self, "external_inputs", tuple(int(i) for i in self.external_inputs))

    @classmethod
    def preset(cls, name: str, **overrides) -> Config:
        """A published setup: "lorenz", "nlb_mc_maze" (AutoLFADS sizes on MC_Maze), "tiny".

        Examples:
            >>> Config.preset("nlb_mc_maze", n_heldout=45).co_dim
            4
        """
        if name not in PRESETS:
            raise ValueError(
                f"lfads.Config.preset: unknown `name` {name!r}; one of {list(PRESETS)}"
            )
        return cls(**{**PRESETS[name], **overrides})


PRESETS = {
    # lfads-torch's Lorenz tutorial sizes and regularisation (autonomous Lorenz system: a small
    # controller). Dropout 0.3 and coordinated dropout 0.3 matter: with dropout 0.05 and no
    # coordinated dropout, 160 Lorenz trials are overfit after ~1000 steps (the controller
    # passes spike noise to the rates; held-out rate R² falls from 0.91 to 0.54 by step 2000).
    # The training budget (1000 steps, batch 32, lr 5e-3) is a few minutes on a 2-core CPU.
    "lorenz": dict(
        ic_enc_dim=64,
        ci_enc_dim=64,
        con_dim=64,
        co_dim=4,
        ic_dim=64,
        gen_dim=200,
        fac_dim=10,
        dropout=0.3,
        cd_rate=0.3,
        co_prior="ar1",
        kl_ramp_steps=500,
        l2_ramp_steps=500,
        train=TrainConfig(learning_rate=5e-3, batch_size=32, steps=1000, grad_clip=200.0),
    ),
    # AutoLFADS on NLB MC_Maze (shared/TARGETS.md): coordinated dropout 0.3, AR(1) prior.
    "nlb_mc_maze": dict(
        ic_enc_dim=100,
        ci_enc_dim=80,
        con_dim=80,
        co_dim=4,
        ic_dim=100,
        gen_dim=100,
        fac_dim=40,
        cd_rate=0.3,
        dropout=0.3,
        co_prior="ar1",
        kl_ramp_steps=1000,
        l2_ramp_steps=1000,
    ),
    # A few units everywhere: for tests and examples.
    "tiny": dict(
        ic_enc_dim=8,
        ci_enc_dim=8,
        con_dim=8,
        co_dim=2,
        ic_dim=8,
        gen_dim=16,
        fac_dim=4,
        dropout=0.0,
        kl_ramp_steps=50,
        l2_ramp_steps=50,
        train=TrainConfig(learning_rate=1e-2, batch_size=16, steps=200, grad_clip=200.0),
    ),
}
