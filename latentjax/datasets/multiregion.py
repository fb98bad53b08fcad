"""Several brain regions with their own latent dynamics and delayed directed coupling.

Region `r` has latents `x_r` `[K_r]`; a directed edge `s -> r` with delay `D_sr` bins feeds
region `s`'s past state into region `r`:

    x_r[t] = A_r x_r[t-1] + sum_{s -> r} B_rs x_s[t - D_sr] + w_r[t],   w_r ~ N(0, q I),

with `A_r` rotational, spectral radius `rho`, and `q = 1 - rho^2`. `B_rs` `[K_r, K_s]` is a
random matrix of spectral norm `coupling[s, r]`, its scalar strength. An optional global
latent `g` (the same rotational dynamics, no coupling) reaches the neurons of every region.
Stacking all latents as `x` (regions in order, then `g`), the whole system is the vector
autoregression `x[t] = sum_l var_matrices[l-1] x[t-l] + w[t]`; the coupling strengths are
scaled down (all by the same factor) until its companion matrix has spectral radius below
`max_radius`, so the system is stable. Neurons of region `r` read out `x_r` and `g` only,
with weights divided by each latent's standard deviation (coupling makes targets vary more)
so every neuron's log rate has a standard deviation of about 0.5 to 1:

    poisson:   spikes ~ Poisson(exp(x @ readout + bias))     (rates in counts per bin)
    gaussian:  signals = x @ readout + bias + N(0, R)        (rates = the mean, bias ~ N(0, 1))

Convention: `coupling[s, r]` and `delays[s, r]` describe the edge from source `s` to target
`r` (row = source), so `coupling[0, 1]` is the edge `0 -> 1`.
"""

from __future__ import annotations

import numbers

import numpy as np

from latentjax.data import Trials
from latentjax.datasets._dataset import (
    Dataset,
    as_float32,
    check_int,
    check_positive,
    check_range,
    log_linear_readout,
    make_rng,
    poisson_counts,
)
from latentjax.datasets.linear import rotational_dynamics

__all__ = ["multiregion"]

_NAME = "multiregion"


def _per_region(name: str, value, num_regions: int) -> list[int]:
    values = [value] * num_regions if isinstance(value, numbers.Integral) else list(value)
    if len(values) != num_regions:
        raise ValueError(
            f"lj.datasets.{_NAME}: `{name}` must be an int or one value per region "
            f"({num_regions}), got {value!r}"
        )
    return [check_int(_NAME, name, v) for v in values]


def _check_edges(edges, delays, strengths, num_regions: int):
    edges = [tuple(edge) for edge in edges]
    for edge in edges:
        if (
            len(edge) != 2
            or not all(isinstance(r, numbers.Integral) and 0 <= r < num_regions for r in edge)
            or edge[0] == edge[1]
        ):
            raise ValueError(
                f"lj.datasets.{_NAME}: `edges` must hold (source, target) pairs of distinct "
                f"regions in 0..{num_regions - 1}, got {edge!r}"
            )
    if len(set(edges)) != len(edges):
        raise ValueError(f"lj.datasets.{_NAME}: `edges` holds a repeated edge: {edges!r}")
    delays = list(delays)
    if len(delays) != len(edges):
        raise ValueError(
            f"lj.datasets.{_NAME}: `delays` must give one delay per edge ({len(edges)}), "
            f"got {delays!r}"
        )
    delays = [check_int(_NAME, "delays", d) for d in delays]
    if isinstance(strengths, numbers.Real):
        strengths = [strengths] * len(edges)
    strengths = list(strengths)
    if len(strengths) != len(edges):
        raise ValueError(
            f"lj.datasets.{_NAME}: `coupling_strength` must be a number or one per edge "
            f"({len(edges)}), got {strengths!r}"
        )
    strengths = [check_positive(_NAME, "coupling_strength", s) for s in strengths]
    return edges, delays, strengths


def _companion_radius(var_matrices: np.ndarray) -> float:
    """Spectral radius of the VAR(L) companion matrix of `var_matrices` `[L, K, K]`."""
    num_lags, size, _ = var_matrices.shape
    companion = np.zeros((num_lags * size, num_lags * size))
    companion[:size] = np.concatenate(list(var_matrices), axis=1)
    companion[size:, : (num_lags - 1) * size] = np.eye((num_lags - 1) * size)
    return float(np.max(np.abs(np.linalg.eigvals(companion))))


def _sample_var(rng, var_matrices, noise_variance, num_trials, num_bins, burn_in):
    """`[trials, time, K]` of the VAR started at zero, after `burn_in` discarded bins;
    `var_matrices` `[L, K, K]`, or `[trials, L, K, K]` (each trial its own)."""
    num_lags, size, _ = var_matrices.shape[-3:]
    total = num_lags + burn_in + num_bins
    noise = rng.standard_normal((num_trials, total, size)) * np.sqrt(noise_variance)
    states = np.zeros((num_trials, total, size))
    pattern = "lij,blj->bi" if var_matrices.ndim == 3 else "blij,blj->bi"
    for t in range(num_lags, total):
        past = states[:, t - num_lags : t][:, ::-1]  # past[:, l - 1] = x[t - l]
        states[:, t] = np.einsum(pattern, var_matrices, past) + noise[:, t]
    return states[:, num_lags + burn_in :]


def multiregion(
    *,
    seed: int = 0,
    num_trials: int = 100,
    num_bins: int = 100,
    num_regions: int = 3,
    latent_dim=2,
    neurons_per_region=20,
    edges=((0, 1), (1, 2)),
    delays=(2, 1),
    coupling_strength=0.5,
    global_latent_dim: int = 0,
    observations: str = "poisson",
    dt: float = 0.01,
    spectral_radius: float = 0.9,
    max_radius: float = 0.98,
    baseline_hz=(5.0, 20.0),
    observation_noise: float = 0.5,
    condition_edges=None,
) -> Dataset:
    """Regions with their own latent dynamics, coupled by directed delayed edges.

    Args:
      seed: seed of every random draw.
      num_trials: number of trials.
      num_bins: bins per trial.
      num_regions: number of regions.
      latent_dim: latent dimensions, an int or one per region.
      neurons_per_region: an int, or one per region.
      edges: directed `(source, target)` region pairs.
      delays: delay in bins (>= 1) of each edge.
      coupling_strength: spectral norm of each edge's `B` (a number, or one per edge), before
        any scaling for stability.
      global_latent_dim: size of a latent shared by all regions' neurons (0: none).
      observations: "poisson" (spike counts) or "gaussian" (continuous signals).
      dt: seconds per bin.
      spectral_radius: of each region's own dynamics `A_r`, in (0, 1).
      max_radius: largest spectral radius allowed for the whole coupled system, in (0, 1).
      baseline_hz: Poisson baseline rates (spikes/s); `observation_noise`: Gaussian noise std.
      condition_edges: None (every edge in every trial), or one tuple per task condition of
        the edges (members of `edges`) present in that condition's trials (modulation):
        trial i belongs to condition `i % len(condition_edges)` (`trials.conditions`).

    Returns:
      `Dataset` with `trials.regions` labels "R0", "R1", ... and truth `latents`
      `[trials, time, sum K_r + global]`, `rates` `[trials, time, neurons]`, `coupling`
      `[R, R]` (edge strength after scaling, row = source, 0 without an edge), `delays`
      `[R, R]` int (0 without an edge), `latent_slices` (region label or "global" -> slice of
      the latent axis) and `params`: `dynamics` (tuple of `A_r`), `coupling_matrices`
      (`{(source, target): B}`, `B` `[K_target, K_source]`), `var_matrices` `[L, K, K]`,
      `noise_variance`, `readout` `[K, neurons]`, `bias` `[neurons]`, and `R` (Gaussian).
      With `condition_edges`: `condition_coupling` `[C, R, R]` (each condition's edges) and
      `params["condition_var_matrices"]` `[C, L, K, K]`; `coupling` is their union.

    Examples:
      >>> data = multiregion(seed=0, num_trials=4)
      >>> data.trials.region_names, int(data.truth["delays"][0, 1])
      (('R0', 'R1', 'R2'), 2)
    """
    rng = make_rng(_NAME, seed)
    num_trials = check_int(_NAME, "num_trials", num_trials)
    num_bins = check_int(_NAME, "num_bins", num_bins, minimum=2)
    num_regions = check_int(_NAME, "num_regions", num_regions)
    latent_dims = _per_region("latent_dim", latent_dim, num_regions)
    neuron_counts = _per_region("neurons_per_region", neurons_per_region, num_regions)
    edges, edge_delays, strengths = _check_edges(edges, delays, coupling_strength, num_regions)
    global_latent_dim = check_int(_NAME, "global_latent_dim", global_latent_dim, minimum=0)
    if observations not in ("poisson", "gaussian"):
        raise ValueError(
            f"lj.datasets.{_NAME}: `observations` must be 'poisson' or 'gaussian', "
            f"got {observations!r}"
        )
    dt = check_positive(_NAME, "dt", dt)
    for name, value in (("spectral_radius", spectral_radius), ("max_radius", max_radius)):
        if not 0 < check_positive(_NAME, name, value) < 1:
            raise ValueError(f"lj.datasets.{_NAME}: `{name}` must lie in (0, 1), got {value!r}")
    if spectral_radius >= max_radius:
        raise ValueError(
            f"lj.datasets.{_NAME}: `spectral_radius` ({spectral_radius}) must be below "
            f"`max_radius` ({max_radius})"
        )
    baseline_hz = check_range(_NAME, "baseline_hz", baseline_hz)
    observation_noise = check_positive(_NAME, "observation_noise", observation_noise)
    if condition_edges is not None:
        condition_edges = [[tuple(edge) for edge in group] for group in condition_edges]
        if not condition_edges or any(edge not in edges for g in condition_edges for edge in g):
            raise ValueError(
                f"lj.datasets.{_NAME}: `condition_edges` must be a non-empty list with, per "
                f"condition, edges from `edges` ({edges!r}), got {condition_edges!r}"
            )

    labels = [f"R{r}" for r in range(num_regions)]
    bounds = np.cumsum([0, *latent_dims, global_latent_dim]).tolist()
    slices = {label: slice(bounds[r], bounds[r + 1]) for r, label in enumerate(labels)}
    if global_latent_dim:
        slices["global"] = slice(bounds[-2], bounds[-1])
    num_latents = int(bounds[-1])

    blocks = [*latent_dims] + ([global_latent_dim] if global_latent_dim else [])
    dynamics = tuple(rotational_dynamics(rng, k, spectral_radius) for k in blocks)
    own_dynamics = np.zeros((max(edge_delays, default=1), num_latents, num_latents))
    for block, start in zip(dynamics, bounds[: len(blocks)], strict=True):
        own_dynamics[0, start : start + len(block), start : start + len(block)] = block
    directions = {}
    for source, target in edges:
        raw = rng.standard_normal((latent_dims[target], latent_dims[source]))
        directions[source, target] = raw / np.linalg.norm(raw, ord=2)

    def add_coupling(scale: float, present=None) -> np.ndarray:
        coupled = own_dynamics.copy()
        for (source, target), delay, strength in zip(edges, edge_delays, strengths, strict=True):
            if present is not None and (source, target) not in present:
                continue
            rows, cols = slices[labels[target]], slices[labels[source]]
            coupled[delay - 1, rows, cols] += scale * strength * directions[source, target]
        return coupled

    def radius(scale: float) -> float:
        if condition_edges is None:
            return _companion_radius(add_coupling(scale))
        return max(_companion_radius(add_coupling(scale, group)) for group in condition_edges)

    scale = 1.0
    while radius(scale) >= max_radius:
        scale *= 0.9
    var_matrices = add_coupling(scale)

    noise_variance = 1.0 - spectral_radius**2
    if condition_edges is None:
        latents = _sample_var(rng, var_matrices, noise_variance, num_trials, num_bins, 100)
    else:
        condition_var = np.stack([add_coupling(scale, group) for group in condition_edges])
        codes = np.arange(num_trials) % len(condition_edges)
        latents = _sample_var(
            rng, condition_var[codes], noise_variance, num_trials, num_bins, burn_in=100
        )

    readout = np.zeros((num_latents, sum(neuron_counts)))
    bias = np.zeros(sum(neuron_counts))
    neuron_bounds = np.cumsum([0, *neuron_counts])
    for r, label in enumerate(labels):
        rows = np.r_[slices[label], slices.get("global", slice(0, 0))]
        cols = slice(neuron_bounds[r], neuron_bounds[r + 1])
        readout[rows, cols], bias[cols] = log_linear_readout(
            rng, len(rows), neuron_counts[r], dt, baseline_hz
        )
    readout /= latents.reshape(-1, num_latents).std(axis=0)[:, None]
    params = dict(
        dynamics=dynamics,
        coupling_matrices={
            edge: scale * s * directions[edge] for edge, s in zip(edges, strengths, strict=True)
        },
        var_matrices=var_matrices,
        noise_variance=noise_variance,
        readout=readout,
        bias=bias,
    )
    if observations == "poisson":
        rates = np.exp(latents @ readout + bias)
        trials_data = poisson_counts(rng, rates)
    else:
        params["bias"] = rng.standard_normal(bias.shape)
        rates = latents @ readout + params["bias"]
        params["R"] = np.diag(rng.uniform(0.5, 1.5, rates.shape[-1]) * observation_noise**2)
        noise = rng.standard_normal(rates.shape) * np.sqrt(np.diag(params["R"]))
        trials_data = (rates + noise).astype(np.float32)

    coupling = np.zeros((num_regions, num_regions))
    delay_matrix = np.zeros((num_regions, num_regions), dtype=int)
    for (source, target), delay, strength in zip(edges, edge_delays, strengths, strict=True):
        coupling[source, target] = scale * strength
        delay_matrix[source, target] = delay

    regions = np.repeat(labels, neuron_counts)
    conditions = None
    if condition_edges is not None:
        conditions = np.arange(num_trials) % len(condition_edges)
        params["condition_var_matrices"] = condition_var
    trials = Trials(
        trials_data,
        dt,
        regions=regions,
        conditions=conditions,
        continuous=observations == "gaussian",
    )
    truth = dict(
        latents=latents,
        rates=rates,
        coupling=coupling,
        delays=delay_matrix,
        latent_slices=slices,
        params=params,
    )
    if condition_edges is not None:
        truth["condition_coupling"] = np.stack(
            [np.where(_edge_mask(group, num_regions), coupling, 0.0) for group in condition_edges]
        )
    return Dataset(trials, as_float32(truth))


def _edge_mask(group, num_regions: int) -> np.ndarray:
    mask = np.zeros((num_regions, num_regions), bool)
    for source, target in group:
        mask[source, target] = True
    return mask
