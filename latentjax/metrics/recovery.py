"""Recovery of ground truth on synthetic data: latent R² through an affine map, rate R².

Latents are identifiable only up to an invertible affine map, so `latent_r2` fits the best
affine map from estimated to true latents by least squares,

    true[b, t] ≈ est[b, t] @ weights + bias,

on a random subset of trials and scores R² per true dimension on the others (or fits and
scores on all trials). Rates are identifiable, so `rate_r2` compares them directly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from latentjax.metrics._checks import (
    as_array,
    check_finite_where,
    check_same_shape,
    observed_bins,
    split_trials,
)

__all__ = ["AffineMap", "LatentR2", "latent_r2", "rate_r2"]


class AffineMap(NamedTuple):
    """`mapped = est @ weights + bias`; call it on `[..., est_dims]` arrays."""

    weights: np.ndarray  # [est_dims, true_dims]
    bias: np.ndarray  # [true_dims]

    def __call__(self, est) -> np.ndarray:
        """Map estimated latents `[..., est_dims]` into the true frame `[..., true_dims]`."""
        return np.asarray(est, dtype=np.float64) @ self.weights + self.bias


class LatentR2(NamedTuple):
    """Result of `latent_r2`.

    Attributes:
      per_dim: `[true_dims]` R² of each true latent dimension.
      mean: their mean (float).
      affine_map: the fitted map from estimated to true latents (`affine_map(est)` gives
        `[trials, time, true_dims]` for plots).
    """

    per_dim: np.ndarray
    mean: float
    affine_map: AffineMap


def latent_r2(
    true_latents, est_latents, *, fit_on="train", train_fraction=0.8, seed=0, mask=None
) -> LatentR2:
    """R² of the true latents explained by the best affine map of the estimated ones.

    Args:
      true_latents: `[trials, time, true_dims]`.
      est_latents: `[trials, time, est_dims]` (any number of dims).
      fit_on: "train" fits the map on a random `train_fraction` of the trials and scores it on
        the rest; "all" fits and scores on every trial (an optimistic, in-sample R²).
      train_fraction: fraction of trials the map is fit on when `fit_on="train"`.
      seed: seed of the trial split.
      mask: `[trials, time]` bool, True where observed.

    Returns:
      `LatentR2(per_dim, mean, affine_map)`.

    Examples:
      >>> import numpy as np
      >>> z = np.random.default_rng(0).normal(size=(20, 30, 2))
      >>> round(latent_r2(z, 3.0 * z[..., ::-1] + 1.0).mean, 6)
      1.0
    """
    function = "latent_r2"
    true_latents = as_array(function, "true_latents", true_latents, ndim=3)
    est_latents = as_array(function, "est_latents", est_latents, ndim=3)
    check_same_shape(function, ("true_latents", "est_latents"), true_latents, est_latents, 2)
    num_trials = true_latents.shape[0]
    observed = observed_bins(function, mask, true_latents.shape[:2])
    check_finite_where(function, "true_latents", true_latents, observed[..., None])
    check_finite_where(function, "est_latents", est_latents, observed[..., None])
    if fit_on == "train":
        fit_idx, score_idx = split_trials(function, num_trials, train_fraction, seed)
    elif fit_on == "all":
        fit_idx = score_idx = np.arange(num_trials)
    else:
        raise ValueError(f"{function}: `fit_on` must be 'train' or 'all', got {fit_on!r}")

    def pooled(index):
        keep = observed[index]
        return est_latents[index][keep], true_latents[index][keep]

    fit_est, fit_true = pooled(fit_idx)
    score_est, score_true = pooled(score_idx)
    if len(fit_est) < 2 or len(score_est) < 2:
        raise ValueError(
            f"{function}: too few observed bins (`mask`) to fit and score the affine map"
        )
    regression = LinearRegression().fit(fit_est, fit_true)
    affine_map = AffineMap(weights=regression.coef_.T, bias=regression.intercept_)
    per_dim = r2_score(score_true, affine_map(score_est), multioutput="raw_values")
    return LatentR2(per_dim=per_dim, mean=float(per_dim.mean()), affine_map=affine_map)


def rate_r2(true_rates, est_rates, *, mask=None) -> float:
    """R² of estimated rates against true rates, per neuron, averaged over neurons.

    Args:
      true_rates: `[trials, time, neurons]` ground-truth expected counts per bin.
      est_rates: `[trials, time, neurons]` estimated expected counts per bin (no map is fit).
      mask: `[trials, time]` bool, True where observed.

    Returns:
      Mean R² over neurons (float, at most 1).

    Examples:
      >>> import numpy as np
      >>> rates = np.random.default_rng(0).gamma(2.0, size=(4, 10, 3))
      >>> rate_r2(rates, rates)
      1.0
    """
    function = "rate_r2"
    true_rates = as_array(function, "true_rates", true_rates, ndim=3)
    est_rates = as_array(function, "est_rates", est_rates, ndim=3)
    check_same_shape(function, ("true_rates", "est_rates"), true_rates, est_rates)
    observed = observed_bins(function, mask, true_rates.shape[:2])
    check_finite_where(function, "true_rates", true_rates, observed[..., None])
    check_finite_where(function, "est_rates", est_rates, observed[..., None])
    if observed.sum() < 2:
        raise ValueError(f"{function}: fewer than 2 observed bins (`mask`)")
    return float(r2_score(true_rates[observed], est_rates[observed]))
