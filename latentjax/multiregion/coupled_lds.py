"""Bayesian coupled linear dynamics between brain regions, with inferred delays (numpyro).

What is modelled (a documented simplification of a full coupled LDS). Each region's neurons
are first reduced to `latent_dim` standardised latents `x_r[t]` (`_regions.py`: by default
factor analysis of square-root counts, read by generalised least squares, so that
`x_r[t] = true latent + measurement noise` with a known noise covariance; or PCA). On these
region latents the model is a linear coupled vector autoregression with one discrete delay per
directed edge:

    x_r[t] = sum_{l=1..L} A_rl x_r[t-l] + sum_{s != r} B_rs x_s[t - d_sr] + e_r[t],
    e_r ~ N(0, diag(sigma_r^2)),   L = own_lags

    A_r      ~ N(0, 1) entrywise                                   [K, L*K]
    B_rs     ~ N(0, coupling_scale^2) entrywise (ridge shrinkage)   [K_target, K_source]
    sigma_rk ~ HalfNormal(1)
    d_sr     ~ Uniform(delays)   (discrete, marginalised by enumeration)

The likelihood is a Gaussian regression whose sufficient statistics (the lagged Gram matrix
of all region latents) are computed once, so one evaluation costs a few small matrix products
whatever the number of trials. For each target region the delays of its incoming edges are
enumerated exactly (`len(delays) ** (regions - 1)` combinations, log-sum-exp over a uniform
prior); the delay posterior is the per-draw combination posterior averaged over draws
(Rao-Blackwellised). No shared global latent is modelled.

Measurement noise (errors in variables). The latents estimated from few, sparse neurons are
noisy, and a regression on noisy regressors is attenuated: a region's noisy own past
predicts its state poorly, and other regions' latents at longer lags stand in for the missing
history (spurious edges, delays biased to longer lags: Granger causality's known weakness).
With `noise_correction` (default) the measurement-noise covariance that factor analysis
estimates is removed from the lagged statistics (`statistics`): the corrected-least-squares
moment correction (Fuller 1987), which makes the regression unbiased in expectation. The
corrected likelihood is a quasi-likelihood: it ignores the extra variance that the noise
adds, so credible intervals are somewhat too narrow when the noise is large.

What this recovers, on `lj.datasets.multiregion` (3 regions, edges 0 -> 1 with delay 2 and
1 -> 2 with delay 1; NUTS defaults; `scripts/multiregion_recovery.py`,
`benchmarks/multiregion.md`): with 60 neurons per region and 200 trials, the exact edges and
delays in 5 of 5 seeds with 0 divergences; with 60 neurons and 100 trials, edges in 5 of 5 and
delays in 4 of 5; without the correction (PCA, 6 own lags) the edges in 5 of 5 but the delays
in 1-2 of 5. With the dataset's default 20 sparse neurons (5-20 Hz, 10 ms bins) per region and
100 trials the latents' noise variance is close to their signal variance (the correction is
then scaled down, `correction_scale`) and neither variant is reliable: corrected, exact edges
in 2 of 5 seeds and delays in 1 of 5 (spurious reverse edges, chains in different delay
modes: R-hat above 1.3 on some seeds); uncorrected with 6 own lags, edges in 5 of 5 and
delays in 0 of 5. An exact state-space likelihood (a Kalman filter marginalising the true
latents, distributed lags) was tried and dropped: 30-80x slower under NUTS (777 s per fit),
and on the 20-neuron data its maximum a posteriori couplings showed the same reverse edges,
within the likelihood's noise (the data do not identify them).

Conventions (as `lj.datasets.multiregion`): `coupling[s, r]`, `delays[s, r]` and every
`[..., R, R]` array describe the edge from source `s` (row) to target `r` (column); each
coupling matrix `B` is `[K_target, K_source]`.

Inference: `inference="nuts"` (default) runs `num_chains` NUTS chains (numpyro's `hmc`
kernels, vmapped over chains) as a `Fitter` whose step is one NUTS transition, so `lj.fit`
drives it in compiled chunks (`train.steps` = warm-up + kept draws, `num_warmup` of them
warm-up with step-size and mass-matrix adaptation). `inference="svi"` fits a mean-field
Gaussian on the unconstrained parameters by maximising the ELBO with the engine's gradient
fitter (`train.learning_rate`, `train.steps`; full batch), for larger problems.

Prior: an earlier version put a (regularised, centred) group horseshoe on B_rs; its funnel
gave NUTS divergences and R-hat ~1.08 while its shrinkage weights never decided edges, so the
coupling prior is a fixed Gaussian: the posterior (given the delays) is then close to Gaussian
and NUTS mixes without divergences.

Edge decision: the data pin the coupling down to about 1/sqrt(rows), far below any shrinkage
threshold, so shrinkage weights would not separate edges; an edge's `inclusion` is the
posterior probability that its strength, the Frobenius norm of `B_rs` (in units of the
standardised latents), exceeds `min_coupling`; an edge is reported where it exceeds 0.5.
(The norm's credible interval never contains 0, so it cannot decide edges by itself.)

Examples:
    Sampling takes a minute on 2 cores, so doctests skip the lines that fit and infer:

    >>> import latentjax as lj
    >>> data = lj.datasets.multiregion(seed=0, num_trials=30)
    >>> result = lj.fit(lj.multiregion.coupled_lds.Config(), data.trials)  # doctest: +SKIP
    >>> post = lj.infer(result, data.trials)                                # doctest: +SKIP
    >>> post.coupling.shape, post.edges                                      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
from numpyro.infer.hmc import hmc
from numpyro.infer.util import potential_energy

from latentjax.multiregion import _regions
from latentjax.multiregion._regions import RegionProjection
from latentjax.results import Posterior
from latentjax.train.config import TrainConfig
from latentjax.train.fitter import Fitter
from latentjax.train.gradient import gradient_fitter

__all__ = [
    "Config",
    "NUTSState",
    "SampledParams",
    "Statistics",
    "VariationalParams",
    "diagnostics",
    "figures",
    "fitter",
    "init",
    "model",
    "posterior",
    "uses_optimizer",
    "validation_loss",
]

_INFERENCE = ("nuts", "svi")
_POSITIVE_SITES = ("noise_scale",)


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyperparameters of the coupled region-level model.

    Attributes:
      latent_dim: latents per region K (factors or principal components of each region).
      delays: the candidate delays in bins (each >= 1) of every directed edge.
      own_lags: lags 1..own_lags of each region's own past in its dynamics (without
        `noise_correction`, more lags let the noisy own past predict the region's state
        better, so fewer spurious edges).
      inference: "nuts" (MCMC, small problems) or "svi" (mean-field variational, large ones).
      num_warmup: NUTS warm-up transitions; `train.steps - num_warmup` draws are kept. None:
        half of `train.steps`, as Stan's default (see `nuts_warmup`).
      num_chains: NUTS chains (R-hat needs >= 2).
      target_accept: NUTS target acceptance probability (dual averaging).
      max_tree_depth: NUTS maximum tree depth.
      svi_draws: posterior draws from the variational posterior (`inference="svi"`).
      coupling_scale: prior standard deviation of each coupling entry (ridge shrinkage).
      credible_mass: mass of the reported credible intervals.
      min_coupling: the smallest edge strength (Frobenius norm of B_rs, in standardised latent
        units) that counts as an edge; `inclusion` is the posterior probability of exceeding it.
      projection: "fa" (per-region factor analysis read by generalised least squares), "pca"
        (principal components) or "none" (the signals are the latents); see `_regions`.
      noise_correction: remove the latents' measurement noise (the projection's
        `noise_covariance`) from the lagged statistics (errors-in-variables correction).
      train: `steps` (NUTS transitions incl. warm-up, or SVI steps), `chunk_size`, and for
        SVI `learning_rate`.
    """

    latent_dim: int = 2
    delays: tuple[int, ...] = (1, 2, 3)
    own_lags: int = 1
    inference: str = "nuts"
    num_warmup: int | None = None
    num_chains: int = 2
    target_accept: float = 0.95
    max_tree_depth: int = 8
    svi_draws: int = 500
    coupling_scale: float = 0.5
    credible_mass: float = 0.9
    min_coupling: float = 0.15
    projection: str = "fa"
    noise_correction: bool = True
    train: TrainConfig = TrainConfig(steps=600, chunk_size=100, learning_rate=0.02)

    def __post_init__(self):
        def positive_int(name):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"coupled_lds.Config: `{name}` must be a positive int, got {value!r}"
                )

        if self.num_warmup is not None:
            positive_int("num_warmup")
        for name in (
            "latent_dim",
            "own_lags",
            "num_chains",
            "max_tree_depth",
            "svi_draws",
        ):
            positive_int(name)
        delays = _regions.check_delays("coupled_lds.Config", self.delays)
        object.__setattr__(self, "delays", delays)
        if not isinstance(self.noise_correction, bool):
            raise ValueError(
                "coupled_lds.Config: `noise_correction` must be a bool, "
                f"got {self.noise_correction!r}"
            )
        if self.inference not in _INFERENCE:
            raise ValueError(
                f"coupled_lds.Config: `inference` must be one of {_INFERENCE}, "
                f"got {self.inference!r}"
            )
        if self.projection not in _regions.PROJECTIONS:
            raise ValueError(
                f"coupled_lds.Config: `projection` must be one of {_regions.PROJECTIONS}, "
                f"got {self.projection!r}"
            )
        if not 0 < self.target_accept < 1 or not 0 < self.credible_mass < 1:
            raise ValueError(
                "coupled_lds.Config: `target_accept` and `credible_mass` must lie in (0, 1), got "
                f"{self.target_accept!r} and {self.credible_mass!r}"
            )
        if not self.coupling_scale > 0:
            raise ValueError(
                f"coupled_lds.Config: `coupling_scale` must be > 0, got {self.coupling_scale!r}"
            )
        if self.inference == "nuts" and self.train.steps <= self.nuts_warmup:
            raise ValueError(
                f"coupled_lds.Config: `train.steps` ({self.train.steps}) must exceed `num_warmup` "
                f"({self.nuts_warmup}) for NUTS: the draws kept are steps - num_warmup"
            )
        if self.inference == "svi" and self.train.batch_size is not None:
            raise ValueError("coupled_lds.Config: SVI uses every trial; set train.batch_size=None")

    @property
    def nuts_warmup(self) -> int:
        """NUTS warm-up transitions: `num_warmup`, or half of `train.steps` when None."""
        return self.train.steps // 2 if self.num_warmup is None else self.num_warmup


# ---------------------------------------------------------------------------------------------
# Sufficient statistics of the lagged regression


class Statistics(NamedTuple):
    """gram `[P, P]`: sum over regression rows of v v^T with v = [x[t], x[t-1], ...,
    x[t-D]] (`P = (D + 1) * regions * K`, D the largest delay); rows: number of rows."""

    gram: jax.Array
    rows: jax.Array


def statistics(latents, mask, max_delay: int, noise_covariance=None) -> Statistics:
    """Lagged Gram matrix of region latents `[trials, time, R*K]` over the bins whose `max_delay`
    predecessors are observed too (`mask` `[trials, time]`).

    With `noise_covariance` `[R*K, R*K]`, the covariance of white measurement noise in the
    latents, its share `rows * noise_covariance` is removed from every lag's diagonal block:
    the corrected statistics are those of the noise-free latents in expectation (the
    method-of-moments errors-in-variables correction, Fuller 1987, ch. 2), so the regression
    on them is not attenuated towards the noisy regressors' lags.

    The correction is scaled down where it would leave a Gram matrix that is not positive
    definite (the estimated noise exceeds what the data hold in some direction, as for 20
    sparse neurons per region: `correction_scale`); otherwise a regression's residual could
    be driven to zero or below, the likelihood would grow without bound as the noise scale
    shrinks, and NUTS would stall there (step size 1e-7, every tree at its depth limit).
    """
    num_bins = latents.shape[1]
    if num_bins <= max_delay:
        raise ValueError(
            f"coupled_lds: trials need more than {max_delay} bins (the largest lag), got {num_bins}"
        )
    length = num_bins - max_delay
    lagged = jnp.concatenate(
        [latents[:, max_delay - lag : max_delay - lag + length] for lag in range(max_delay + 1)],
        axis=-1,
    )  # [trials, length, P]
    valid = jnp.stack(
        [mask[:, max_delay - lag : max_delay - lag + length] for lag in range(max_delay + 1)]
    ).all(axis=0)
    weights = valid.astype(latents.dtype)
    gram = jnp.einsum("bt,btp,btq->pq", weights, lagged, lagged)
    rows = weights.sum()
    if noise_covariance is not None:
        noise = rows * jnp.kron(jnp.eye(max_delay + 1), noise_covariance)
        gram = gram - correction_scale(gram, noise, rows) * noise
    return Statistics(gram, rows)


CORRECTION_MARGIN = 3.0
"""The corrected Gram matrix keeps at least `CORRECTION_MARGIN / sqrt(rows)` of the noise in
every direction: a few sampling standard errors of the noise-to-data ratio."""


def correction_scale(gram, noise, rows):
    """The share `c` of `noise` `[P, P]` to remove from `gram` `[P, P]`: 1 (full correction)
    unless `gram - c * noise` would fall below `margin = CORRECTION_MARGIN / sqrt(rows)` times
    `noise` in some direction; then `c = lambda - margin`, with `lambda` the smallest root
    of `det(gram - lambda * noise) = 0` (Fuller's modified estimator, 1987, section 2.5,
    with a margin of sampling error rather than one row). 1 where `noise` is singular."""
    chol = jnp.linalg.cholesky(noise)  # NaN where `noise` is singular
    half = jsl.solve_triangular(chol, gram, lower=True)
    whitened = jsl.solve_triangular(chol, half.T, lower=True)  # L^-1 gram L^-T
    smallest = jnp.linalg.eigvalsh(0.5 * (whitened + whitened.T))[0]
    scale = jnp.minimum(1.0, smallest - CORRECTION_MARGIN / jnp.sqrt(rows))
    return jnp.where(jnp.isfinite(scale), jnp.maximum(scale, 0.0), 1.0)


def _max_lag(config: Config) -> int:
    return max(*config.delays, config.own_lags)


@functools.lru_cache(maxsize=32)
def _combinations(num_regions: int, latent_dim: int, delays: tuple[int, ...], own_lags: int):
    """Static index tables for the delay enumeration.

    Returns (lags `[R, C, R]`: the lag of each source region for target r and combination c,
    0 for the target itself; regressors `[R, C, (own_lags + R - 1) * K]`: columns of the lagged
    Gram matrix, the target's own lags 1..own_lags first, then the sources in region order;
    targets `[R, K]`: the columns of x_r[t]).
    """
    size = num_regions * latent_dim
    block = np.arange(latent_dim)
    lags, regressors = [], []
    for target in range(num_regions):
        sources = [s for s in range(num_regions) if s != target]
        own = [lag * size + target * latent_dim + block for lag in range(1, own_lags + 1)]
        target_lags, target_columns = [], []
        for combo in itertools.product(delays, repeat=len(sources)):
            lag = np.zeros(num_regions, int)
            lag[sources] = combo
            target_lags.append(lag)
            target_columns.append(
                np.concatenate(own + [lag[s] * size + s * latent_dim + block for s in sources])
            )
        lags.append(target_lags)
        regressors.append(target_columns)
    targets = np.arange(size).reshape(num_regions, latent_dim)
    return np.asarray(lags), np.asarray(regressors), targets


# ---------------------------------------------------------------------------------------------
# The numpyro model


def _weights(sites: dict) -> jax.Array:
    """`[R_target, K, (own_lags + R - 1) * K]` regression weights in `_combinations`' column
    order: A_r (all own lags), then B_rs for the sources s != r in region order."""
    own, coupling = sites["own_dynamics"], sites["coupling"]  # coupling [s, r, K_t, K_s]
    num_regions = own.shape[0]
    return jnp.stack(
        [
            jnp.concatenate(
                [own[target]] + [coupling[s, target] for s in range(num_regions) if s != target],
                axis=-1,
            )
            for target in range(num_regions)
        ]
    )


def combination_log_likelihoods(sites: dict, stats: Statistics, config: Config) -> jax.Array:
    """`[R, C]` log-likelihood of each target region under each delay combination."""
    own = sites["own_dynamics"]
    num_regions, latent_dim = own.shape[0], own.shape[1]
    _, regressors, targets = _combinations(num_regions, latent_dim, config.delays, config.own_lags)
    weights = _weights(sites)  # [R, K, RK]
    gram = stats.gram
    s_zz = gram[regressors[..., :, None], regressors[..., None, :]]  # [R, C, RK, RK]
    s_zy = gram[regressors[..., :, None], targets[:, None, None, :]]  # [R, C, RK, K]
    s_yy = jnp.diagonal(
        gram[targets[:, :, None], targets[:, None, :]], axis1=-2, axis2=-1
    )  # [R, K]
    cross = jnp.einsum("rkp,rcpk->rck", weights, s_zy)
    quadratic = jnp.einsum("rkp,rcpq,rkq->rck", weights, s_zz, weights)
    residual = s_yy[:, None] - 2 * cross + quadratic  # [R, C, K]
    variance = sites["noise_scale"][:, None, :] ** 2
    log_lik = -0.5 * (stats.rows * jnp.log(2 * jnp.pi * variance) + residual / variance)
    return log_lik.sum(-1)


def model(stats: Statistics, num_regions: int, config: Config):
    """numpyro model of the region latents' lagged statistics (see the module docstring)."""
    latent_dim = config.latent_dim
    own = numpyro.sample(
        "own_dynamics",
        dist.Normal(0.0, 1.0)
        .expand([num_regions, latent_dim, config.own_lags * latent_dim])
        .to_event(3),
    )
    coupling = numpyro.sample(  # the diagonal blocks [r, r] are unused (prior draws)
        "coupling",
        dist.Normal(0.0, config.coupling_scale)
        .expand([num_regions, num_regions, latent_dim, latent_dim])
        .to_event(4),
    )
    noise_scale = numpyro.sample(
        "noise_scale", dist.HalfNormal(1.0).expand([num_regions, latent_dim]).to_event(2)
    )
    sites = {"own_dynamics": own, "coupling": coupling, "noise_scale": noise_scale}
    log_lik = combination_log_likelihoods(sites, stats, config)
    numpyro.factor(
        "likelihood", jnp.sum(jax.nn.logsumexp(log_lik, axis=-1) - jnp.log(log_lik.shape[-1]))
    )


def _site_shapes(num_regions: int, latent_dim: int, own_lags: int) -> dict[str, tuple[int, ...]]:
    return {
        "own_dynamics": (num_regions, latent_dim, own_lags * latent_dim),
        "coupling": (num_regions, num_regions, latent_dim, latent_dim),
        "noise_scale": (num_regions, latent_dim),
    }


def _potential(config: Config, num_regions: int, stats: Statistics):
    """Negative log joint density of the unconstrained parameters (a dict of arrays)."""

    def potential(unconstrained):
        return potential_energy(model, (stats, num_regions, config), {}, unconstrained)

    return potential


def constrain(unconstrained: dict, num_regions: int, config: Config) -> dict:
    """Constrained parameter values from unconstrained ones (any leading batch axes)."""
    positive = {k: jnp.exp(v) for k, v in unconstrained.items() if k in _POSITIVE_SITES}
    return {**unconstrained, **positive}


# ---------------------------------------------------------------------------------------------
# Parameters, Fitters


class SampledParams(NamedTuple):
    """NUTS parameters. projection: the per-region PCA; position: unconstrained parameters of
    each chain `{site: [chains, ...]}` (the current state); samples: kept draws
    `{site: [chains, draws, ...]}` (unconstrained); diverging: `[chains, draws]` (1.0 where the
    transition diverged); drawn: number of draws written so far."""

    projection: RegionProjection
    position: dict
    samples: dict
    diverging: jax.Array
    drawn: jax.Array


class VariationalParams(NamedTuple):
    """SVI parameters: projection, and the mean-field Gaussian `loc`, `log_scale` of every
    unconstrained site (`{site: [...]}`)."""

    projection: RegionProjection
    loc: dict
    log_scale: dict


def _num_regions(params) -> int:
    return params.projection.components.shape[1] // _site_latent_dim(params)


def _site_latent_dim(params) -> int:
    source = params.position if isinstance(params, SampledParams) else params.loc
    return source["coupling"].shape[-1]


def init(key, config: Config, trials) -> SampledParams | VariationalParams:
    """Per-region projection (warns when a region's latents are mostly noise); NUTS chains
    start at the least-squares weights of the best delay combination (`_least_squares_start`)
    plus uniform jitter in [-0.1, 0.1] (unconstrained): the enumerated delays make the
    posterior multimodal and chains started at random can stay in a worse lagged mode."""
    names = _regions.check_regions("coupled_lds", trials, config.latent_dim, config.projection)
    if trials.num_bins <= _max_lag(config):
        raise ValueError(
            f"coupled_lds: trials need more than max(delays, own_lags)={_max_lag(config)} bins, "
            f"got {trials.num_bins}"
        )
    projection = _regions.fit_projection(trials, config.latent_dim, config.projection)
    _warn_if_noisy(projection, names)
    shapes = _site_shapes(len(names), config.latent_dim, config.own_lags)
    keys = dict(zip(shapes, jax.random.split(key, len(shapes)), strict=True))
    if config.inference == "svi":
        loc = {name: jnp.zeros(shape) for name, shape in shapes.items()}
        log_scale = {name: jnp.full(shape, -2.0) for name, shape in shapes.items()}
        return VariationalParams(projection, loc, log_scale)
    chains, draws = config.num_chains, config.train.steps - config.nuts_warmup
    jitter = {
        name: jax.random.uniform(keys[name], (chains, *shape), minval=-0.1, maxval=0.1)
        for name, shape in shapes.items()
    }
    start = _least_squares_start(projection, trials, config, len(names))
    position = {name: start.get(name, 0.0) + jitter[name] for name in shapes}
    samples = {name: jnp.zeros((chains, draws, *shape)) for name, shape in shapes.items()}
    return SampledParams(
        projection, position, samples, jnp.zeros((chains, draws)), jnp.zeros((), jnp.int32)
    )


NOISY_FRACTION = 0.4


def _warn_if_noisy(projection: RegionProjection, names) -> None:
    """Warn when a region latent is mostly measurement noise: there, edges and delays are not
    reliable (`benchmarks/multiregion.md`: 20 sparse neurons per region, fractions 0.4-0.7)."""
    fractions = np.diag(np.asarray(projection.noise_covariance)).reshape(len(names), -1)
    worst = fractions.max(axis=1)
    if worst.max() > NOISY_FRACTION:
        region = names[int(worst.argmax())]
        warnings.warn(
            f"coupled_lds: {worst.max():.0%} of region {region!r}'s latent variance is "
            f"measurement noise (above {NOISY_FRACTION:.0%}): inferred edges and delays are "
            "unreliable at this noise level; record more neurons or trials, or use longer bins",
            UserWarning,
            stacklevel=3,
        )


def _least_squares_start(projection, trials, config: Config, num_regions: int) -> dict:
    """Unconstrained `own_dynamics` and `coupling` from ordinary least squares under each
    target's delay combination with the smallest residual."""
    gram = np.asarray(_data_statistics(projection, trials, config).gram, np.float64)
    latent_dim = config.latent_dim
    _, regressors, targets = _combinations(num_regions, latent_dim, config.delays, config.own_lags)
    own_columns = config.own_lags * latent_dim
    own = np.zeros((num_regions, latent_dim, own_columns))
    coupling = np.zeros((num_regions, num_regions, latent_dim, latent_dim))
    for target in range(num_regions):
        best = None
        for columns in regressors[target]:
            s_zz = gram[np.ix_(columns, columns)] + 1e-6 * np.eye(len(columns))
            s_zy = gram[np.ix_(columns, targets[target])]
            weights = np.linalg.solve(s_zz, s_zy).T  # [K, (own_lags + R - 1) * K]
            residual = np.trace(gram[np.ix_(targets[target], targets[target])]) - np.trace(
                weights @ s_zy
            )
            if best is None or residual < best[0]:
                best = (residual, weights)
        own[target] = best[1][:, :own_columns]
        sources = [s for s in range(num_regions) if s != target]
        blocks = best[1][:, own_columns:].reshape(latent_dim, len(sources), latent_dim)
        for index, source in enumerate(sources):
            coupling[source, target] = blocks[:, index]
    return {
        "own_dynamics": jnp.asarray(own, jnp.float32),
        "coupling": jnp.asarray(coupling, jnp.float32),
    }


def _data_statistics(projection: RegionProjection, trials, config: Config) -> Statistics:
    latents = _regions.region_latents(projection, trials)
    noise = projection.noise_covariance if config.noise_correction else None
    return statistics(latents, jnp.asarray(trials.mask), _max_lag(config), noise)


class NUTSState(NamedTuple):
    """params: `SampledParams`; chains: numpyro `HMCState` with a leading `[chains]` axis."""

    params: SampledParams
    chains: Any


def _nuts_kernels(config: Config, num_regions: int):
    """numpyro's functional NUTS (init_kernel, sample_kernel) for this model.

    numpyro's `hmc` keeps the warm-up adapter in variables that `init_kernel` sets, so the
    sampler is always initialised once; under `jax.eval_shape` that costs nothing at run time.
    """
    init_kernel, sample_kernel = hmc(
        potential_fn_gen=lambda s: _potential(config, num_regions, s), algo="NUTS"
    )

    def initialise(position, stats, key):
        return init_kernel(
            position,
            config.nuts_warmup,
            target_accept_prob=config.target_accept,
            max_tree_depth=config.max_tree_depth,
            model_args=(stats,),
            rng_key=key,
        )

    return initialise, sample_kernel


def _nuts_fitter(config: Config) -> Fitter:
    def init_state(params: SampledParams, trials):
        stats = _data_statistics(params.projection, trials, config)
        num_regions = _num_regions(params)
        initialise, _ = _nuts_kernels(config, num_regions)
        keys = jax.random.split(jax.random.PRNGKey(0), config.num_chains)
        chains = jax.vmap(initialise, in_axes=(0, None, 0))(params.position, stats, keys)
        return NUTSState(params, chains)

    def step(state: NUTSState, trials, key):
        params = state.params
        stats = _data_statistics(params.projection, trials, config)
        num_regions = _num_regions(params)
        initialise, sample_kernel = _nuts_kernels(config, num_regions)
        one_chain = jax.tree.map(lambda x: x[0], params.position)
        jax.eval_shape(initialise, one_chain, stats, jax.random.PRNGKey(0))
        chains = state.chains._replace(rng_key=jax.random.split(key, config.num_chains))
        chains = jax.vmap(lambda c: sample_kernel(c, model_args=(stats,)))(chains)

        draws = params.diverging.shape[1]
        index = chains.i[0] - 1 - config.nuts_warmup
        keep = (index >= 0) & (index < draws)
        slot = jnp.clip(index, 0, draws - 1)

        def write(buffer, value):
            return buffer.at[:, slot].set(jnp.where(keep, value, buffer[:, slot]))

        new_params = SampledParams(
            params.projection,
            chains.z,
            jax.tree.map(write, params.samples, chains.z),
            write(params.diverging, chains.diverging.astype(params.diverging.dtype)),
            params.drawn + keep.astype(jnp.int32),
        )
        info = {
            "loss": jnp.mean(chains.potential_energy) / stats.rows,
            "accept_prob": jnp.mean(chains.accept_prob),
            "diverging": jnp.mean(chains.diverging.astype(jnp.float32)),
            "step_size": jnp.mean(chains.adapt_state.step_size),
            "tree_steps": jnp.mean(chains.num_steps.astype(jnp.float32)),
        }
        return NUTSState(new_params, chains), info

    return Fitter(init_state, step)


def _elbo_loss(config: Config):
    def loss(params: VariationalParams, batch, key, step):
        del step
        projection = jax.tree.map(jax.lax.stop_gradient, params.projection)
        stats = _data_statistics(projection, batch, config)
        num_regions = _num_regions(params)
        leaves, treedef = jax.tree.flatten(params.loc)
        keys = jax.random.split(key, len(leaves))
        draws = jax.tree.unflatten(
            treedef,
            [
                loc + jnp.exp(log_scale) * jax.random.normal(k, loc.shape)
                for loc, log_scale, k in zip(
                    leaves, jax.tree.leaves(params.log_scale), keys, strict=True
                )
            ],
        )
        entropy = sum(jnp.sum(s) for s in jax.tree.leaves(params.log_scale))
        negative_elbo = _potential(config, num_regions, stats)(draws) - entropy
        return negative_elbo / stats.rows, {"entropy": entropy}

    return loss


def fitter(config: Config) -> Fitter:
    """NUTS (one transition per step) or SVI (one Adam step on the negative ELBO per step)."""
    if config.inference == "svi":
        return gradient_fitter(_elbo_loss(config), config.train)
    return _nuts_fitter(config)


# ---------------------------------------------------------------------------------------------
# Posterior


def _draws(params, config: Config, key) -> tuple[dict, np.ndarray | None]:
    """Unconstrained draws `{site: [chains, draws, ...]}` and divergences `[chains, draws]`."""
    if isinstance(params, SampledParams):
        drawn = int(params.drawn)
        if drawn < 1:
            raise ValueError(
                "coupled_lds.posterior: the fit holds no NUTS draw yet (steps <= num_warmup)"
            )
        samples = {k: np.asarray(v)[:, :drawn] for k, v in params.samples.items()}
        return samples, np.asarray(params.diverging)[:, :drawn]
    keys = jax.random.split(key, len(params.loc))
    samples = {
        name: np.asarray(
            params.loc[name]
            + jnp.exp(params.log_scale[name])
            * jax.random.normal(k, (1, config.svi_draws, *params.loc[name].shape))
        )
        for name, k in zip(sorted(params.loc), keys, strict=True)
    }
    return samples, None


@functools.partial(jax.jit, static_argnums=(2,))
def _per_draw(sites: dict, stats: Statistics, config: Config):
    """Per draw: combination posterior `[R, C]`, coupling norms `[R, R]`, norms above
    `min_coupling` `[R, R]`."""
    log_lik = combination_log_likelihoods(sites, stats, config)
    combination_probs = jax.nn.softmax(log_lik, axis=-1)
    num_regions = sites["own_dynamics"].shape[0]
    norms = jnp.sqrt(jnp.sum(sites["coupling"] ** 2, axis=(-2, -1)))  # [source, target]
    norms = norms * (1 - jnp.eye(num_regions))
    inclusion = (norms > config.min_coupling).astype(norms.dtype)
    return combination_probs, norms, inclusion


def _diagnostics(values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Split R-hat and ESS of every scalar in `{name: [chains, draws, ...]}` (concatenated);
    NaN with fewer than 4 draws per chain (split R-hat needs two halves of two)."""
    flat = np.concatenate([v.reshape(v.shape[0], v.shape[1], -1) for v in values.values()], -1)
    if flat.shape[1] < 4:
        nan = np.full(flat.shape[2:], np.nan)
        return nan, nan
    return split_gelman_rubin(flat), effective_sample_size(flat)


_VALIDATION_DRAWS = 16
"""Draws of the variational posterior (SVI) in the validation score."""


def validation_loss(params, trials, key, config: Config, step) -> tuple:
    """Held-out negative log posterior predictive density of the region latents of `trials`,
    per latent entry: `-log mean_s p(latents | theta_s) / (rows * R * K)`, with each
    `p(latents | theta)` the model's likelihood (delay combinations marginalised, as in
    `model`). NUTS: the draws kept so far and every chain's current state; SVI:
    `_VALIDATION_DRAWS` draws of the variational posterior. aux `{"nll"}`.
    """
    del step
    stats = _data_statistics(params.projection, trials, config)
    if isinstance(params, SampledParams):
        chains, draws = params.diverging.shape
        kept = jnp.broadcast_to(jnp.arange(draws) < params.drawn, (chains, draws)).reshape(-1)
        unconstrained = {
            name: jnp.concatenate(
                [value.reshape(chains * draws, *value.shape[2:]), params.position[name]]
            )
            for name, value in params.samples.items()
        }
        valid = jnp.concatenate([kept, jnp.ones(chains, bool)])
    else:
        keys = jax.random.split(key, len(params.loc))
        unconstrained = {
            name: params.loc[name]
            + jnp.exp(params.log_scale[name])
            * jax.random.normal(k, (_VALIDATION_DRAWS, *params.loc[name].shape))
            for name, k in zip(sorted(params.loc), keys, strict=True)
        }
        valid = jnp.ones(_VALIDATION_DRAWS, bool)
    num_regions, latent_dim = unconstrained["own_dynamics"].shape[1:3]
    sites = constrain(unconstrained, num_regions, config)

    def log_likelihood(draw):
        per_combination = combination_log_likelihoods(draw, stats, config)  # [R, C]
        marginal = jax.nn.logsumexp(per_combination, axis=-1) - jnp.log(per_combination.shape[-1])
        return marginal.sum()

    log_lik = jax.vmap(log_likelihood)(sites)
    predictive = jax.nn.logsumexp(jnp.where(valid, log_lik, -jnp.inf)) - jnp.log(valid.sum())
    nll = -predictive / (stats.rows * num_regions * latent_dim)
    return nll, {"nll": nll}


def posterior(params, trials, config: Config, key=None, **options) -> Posterior:
    """Region latents and the communication graph.

    Returns:
      `Posterior` with `latents` `[B, T, R*K]` (the region latents, region r in columns
      r*K:(r+1)*K), `rates` `[B, T, N]` (the projection's read-out, expected counts per bin
      with the square-root signal's noise variance, `_regions.reconstruct`), and
      extras (`[s, r]` = edge from source s to target r):
      `coupling` `[S, R, R]` Frobenius norm of B_rs per draw (0 on the diagonal);
      `coupling_matrices` `[S, R, R, K, K]` B_rs (`[K_target, K_source]`);
      `own_dynamics` `[S, R, K, own_lags * K]` (lag 1 first); `coupling_mean`,
      `coupling_lower`, `coupling_upper` `[R, R]` (central `credible_mass` interval);
      `inclusion` `[R, R]` posterior probability that the norm exceeds `min_coupling`;
      `edges` `[R, R]` bool (inclusion > 0.5); `delay_set` `[L]`; `delay_probs`
      `[R, R, L]` posterior over each edge's delay; `delays` `[R, R]` the most probable delay
      (0 on the diagonal); `noise_fraction` `[R*K]` the share of each region latent's variance
      that is measurement noise (a fit warns above 0.4); NUTS only: `divergences` `[chains]`
      counts, `r_hat` and `ess` (every scalar parameter, plus the coupling norms).
    """
    if options:
        raise ValueError(f"coupled_lds.posterior: unknown options {sorted(options)}")
    names = _regions.check_regions(
        "coupled_lds.posterior", trials, config.latent_dim, config.projection
    )
    num_regions = len(names)
    if num_regions != _num_regions(params):
        raise ValueError(
            f"coupled_lds.posterior: `trials` has {num_regions} regions, "
            f"the fit {_num_regions(params)}"
        )
    if key is None:
        key = jax.random.PRNGKey(0)
    latents = _regions.region_latents(params.projection, trials)
    stats = _data_statistics(params.projection, trials, config)
    unconstrained, diverging = _draws(params, config, key)
    chains, draws = next(iter(unconstrained.values())).shape[:2]
    sites = constrain({k: jnp.asarray(v) for k, v in unconstrained.items()}, num_regions, config)
    flat_sites = {k: v.reshape(chains * draws, *v.shape[2:]) for k, v in sites.items()}
    per_draw = jax.vmap(_per_draw, in_axes=(0, None, None))
    combination_probs, norms, inclusion = per_draw(flat_sites, stats, config)
    norms = np.asarray(norms)

    lags, _, _ = _combinations(num_regions, config.latent_dim, config.delays, config.own_lags)
    mean_combination = np.asarray(combination_probs).mean(0)  # [R_target, C]
    delay_probs = np.zeros((num_regions, num_regions, len(config.delays)))
    for index, delay in enumerate(config.delays):
        # P(d_sr = delay) = sum of the target r's combinations where source s has that lag
        delay_probs[:, :, index] = np.einsum("rc,rcs->sr", mean_combination, lags == delay)
    delay_probs[np.eye(num_regions, dtype=bool)] = 0.0
    best = np.where(
        np.eye(num_regions, dtype=bool), 0, np.asarray(config.delays)[delay_probs.argmax(-1)]
    )

    coupling_matrices = np.array(flat_sites["coupling"])  # [S, source, target, K_t, K_s]
    own = np.asarray(flat_sites["own_dynamics"])
    eye = np.eye(num_regions, dtype=bool)
    coupling_matrices[:, eye] = 0.0
    tail = (1 - config.credible_mass) / 2
    inclusion = np.asarray(inclusion).mean(0)
    extras = {
        "coupling": norms,
        "coupling_matrices": coupling_matrices,
        "own_dynamics": own,
        "coupling_mean": norms.mean(0),
        "coupling_lower": np.quantile(norms, tail, axis=0),
        "coupling_upper": np.quantile(norms, 1 - tail, axis=0),
        "inclusion": inclusion,
        "edges": inclusion > 0.5,
        "delay_set": np.asarray(config.delays),
        "delay_probs": delay_probs,
        "delays": best,
        "noise_fraction": np.diag(np.asarray(params.projection.noise_covariance)),
    }
    if diverging is not None:
        per_chain = {k: np.asarray(v) for k, v in sites.items() if k != "coupling"}
        per_chain["coupling"] = norms.reshape(chains, draws, num_regions, num_regions)[:, :, ~eye]
        r_hat, ess = _diagnostics(per_chain)
        extras.update(divergences=diverging.sum(axis=1), r_hat=r_hat, ess=ess)
    rates = _regions.reconstruct(params.projection, latents, trials.continuous)
    return Posterior(latents=latents, rates=rates, extras=extras)


uses_optimizer = True
"""SVI reads `train.learning_rate` (NUTS ignores it), so a sweep over it is allowed."""


def figures(posterior: Posterior, trials) -> dict:
    """Family figures for the report: the inferred communication graph."""
    from latentjax.plot.communication import communication_graph

    return {"communication": communication_graph(posterior)}


def diagnostics(posterior: Posterior) -> dict[str, float]:
    """MCMC diagnostics for `lj.evaluate` (NUTS fits): total divergent transitions, the
    largest split R-hat and the smallest effective sample size over every parameter."""
    extras = posterior.extras
    if extras.get("divergences") is None:
        return {}
    return {
        "divergences": float(np.sum(extras["divergences"])),
        "r_hat_max": float(np.nanmax(extras["r_hat"])),
        "ess_min": float(np.nanmin(extras["ess"])),
    }
