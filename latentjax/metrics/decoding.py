"""Decoding behaviour from rates or latents: ridge regression with a cross-validated penalty.

As nlb_tools' `fit_and_eval_decoder`: the observed bins of the training trials are pooled, a
`Ridge` penalty is chosen from `logspace(-4, 0, 9)` by 5-fold `GridSearchCV`, and the score is
R² on the pooled bins of the test trials, averaged uniformly over behaviour dimensions (what
scikit-learn's `score` does since 0.23, hence what the NLB reports).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV

from latentjax.metrics._checks import (
    as_array,
    check_finite_where,
    check_same_shape,
    observed_bins,
    trial_indices,
)

__all__ = ["velocity_r2"]

RIDGE_PENALTIES = np.logspace(-4, 0, 9)
"""Ridge penalties searched by cross-validation (the NLB grid)."""

CROSS_VALIDATION_FOLDS = 5


def velocity_r2(
    rates_or_latents,
    behavior,
    *,
    train_idx,
    test_idx,
    lag=0,
    mask=None,
    multioutput="uniform_average",
) -> float | np.ndarray:
    """R² of a ridge decoder from rates or latents to behaviour (e.g. hand velocity).

    Args:
      rates_or_latents: `[trials, time, features]` decoder input (rates or latents).
      behavior: `[trials, time, dims]` decoded target; bins with NaN are left out.
      train_idx: trials the decoder (and its cross-validated penalty) is fit on.
      test_idx: trials it is scored on (must not overlap `train_idx`).
      lag: bins by which behaviour follows the neural signal: `behavior[:, t + lag]` is
        decoded from `rates_or_latents[:, t]` (NLB MC_Maze: 100 ms).
      mask: `[trials, time]` bool, True where observed; a pair of bins is used when both are.
      multioutput: how R² is pooled over behaviour dims (`sklearn.metrics.r2_score`):
        "uniform_average" (the NLB score), "variance_weighted", or "raw_values" (per-axis
        R², an array `[dims]`).

    Returns:
      R² on the test trials (float, at most 1; `[dims]` for "raw_values").

    Examples:
      >>> import numpy as np
      >>> latents = np.random.default_rng(0).normal(size=(10, 50, 3))
      >>> velocity = latents @ np.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])
      >>> r2 = velocity_r2(latents, velocity, train_idx=np.arange(8), test_idx=[8, 9])
      >>> round(r2, 3)
      1.0
    """
    function = "velocity_r2"
    features = as_array(function, "rates_or_latents", rates_or_latents, ndim=3)
    behavior = as_array(function, "behavior", behavior, ndim=3)
    check_same_shape(function, ("rates_or_latents", "behavior"), features, behavior, axes=2)
    num_trials, num_bins = features.shape[:2]
    observed = observed_bins(function, mask, (num_trials, num_bins))
    if not isinstance(lag, (int, np.integer)) or not 0 <= lag < num_bins:
        raise ValueError(f"{function}: `lag` must be an int in [0, {num_bins}), got {lag!r}")
    if multioutput not in ("uniform_average", "variance_weighted", "raw_values"):
        raise ValueError(
            f"{function}: `multioutput` must be 'uniform_average', 'variance_weighted' or "
            f"'raw_values', got {multioutput!r}"
        )
    train_idx = trial_indices(function, "train_idx", train_idx, num_trials)
    test_idx = trial_indices(function, "test_idx", test_idx, num_trials)
    if np.intersect1d(train_idx, test_idx).size:
        raise ValueError(f"{function}: `train_idx` and `test_idx` share trials")

    inputs = features[:, : num_bins - lag]
    targets = behavior[:, lag:]
    paired = observed[:, : num_bins - lag] & observed[:, lag:] & ~np.isnan(targets).any(axis=2)
    check_finite_where(function, "rates_or_latents", inputs, paired[..., None])
    check_finite_where(function, "behavior", targets, paired[..., None])

    def pooled(index):
        keep = paired[index]
        return inputs[index][keep], targets[index][keep]

    train_inputs, train_targets = pooled(train_idx)
    test_inputs, test_targets = pooled(test_idx)
    if len(train_inputs) < CROSS_VALIDATION_FOLDS:
        raise ValueError(
            f"{function}: the training trials hold {len(train_inputs)} observed bins; "
            f"cross-validation needs at least {CROSS_VALIDATION_FOLDS}"
        )
    if len(test_inputs) < 2:
        raise ValueError(f"{function}: the test trials hold fewer than 2 observed bins")
    decoder = GridSearchCV(Ridge(), {"alpha": RIDGE_PENALTIES}, cv=CROSS_VALIDATION_FOLDS)
    decoder.fit(train_inputs, train_targets)
    predicted = decoder.predict(test_inputs)
    score = r2_score(test_targets, predicted, multioutput=multioutput)
    return np.asarray(score) if multioutput == "raw_values" else float(score)
