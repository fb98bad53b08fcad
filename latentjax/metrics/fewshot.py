"""Few-shot co-smoothing: how well latents predict new neurons from only a few trials.

For each repeat, `num_shots` trials are drawn at random; a Poisson GLM readout per held-out
neuron,

    rate[b, t, n] = exp(latents[b, t] @ w_n + c_n),

is fit on those trials only (`sklearn.linear_model.PoissonRegressor`, L2 penalty), and the
predicted rates are scored with `bits_per_spike` on all the other trials. The result is the mean
over repeats. Latents that capture the population state well give high scores even from few
trials.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import PoissonRegressor

from latentjax.metrics._checks import (
    as_array,
    check_finite_where,
    check_same_shape,
    observed_bins,
)
from latentjax.metrics.nlb import bits_per_spike

__all__ = ["few_shot_co_bps"]


def few_shot_co_bps(
    latents, spikes_heldout, *, num_shots, num_repeats=5, penalty=1e-3, seed=0, mask=None
) -> float:
    """Co-smoothing bits per spike of a Poisson GLM readout fit on `num_shots` trials.

    Args:
      latents: `[trials, time, latents]` inferred latents (or any per-bin features).
      spikes_heldout: `[trials, time, heldout_neurons]` counts of neurons the model never saw.
      num_shots: trials the readout is fit on (the rest are scored); 1 <= num_shots < trials.
      num_repeats: random draws of the few-shot trials; the scores are averaged.
      penalty: L2 penalty of the readout (`alpha` of `PoissonRegressor`).
      seed: seed of the draws.
      mask: `[trials, time]` bool, True where observed.

    Returns:
      Mean few-shot co-bps over repeats (float).
    """
    function = "few_shot_co_bps"
    latents = as_array(function, "latents", latents, ndim=3)
    spikes_heldout = as_array(function, "spikes_heldout", spikes_heldout, ndim=3)
    check_same_shape(function, ("latents", "spikes_heldout"), latents, spikes_heldout, 2)
    num_trials = latents.shape[0]
    observed = observed_bins(function, mask, latents.shape[:2])
    check_finite_where(function, "latents", latents, observed[..., None])
    check_finite_where(function, "spikes_heldout", spikes_heldout, observed[..., None])
    if not isinstance(num_shots, (int, np.integer)) or not 1 <= num_shots < num_trials:
        raise ValueError(
            f"{function}: `num_shots` must be an int in [1, {num_trials - 1}], got {num_shots!r}"
        )
    if not isinstance(num_repeats, (int, np.integer)) or num_repeats < 1:
        raise ValueError(f"{function}: `num_repeats` must be a positive int, got {num_repeats!r}")
    if not penalty >= 0:
        raise ValueError(f"{function}: `penalty` must be >= 0, got {penalty!r}")

    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(num_repeats):
        order = rng.permutation(num_trials)
        shot_idx, scored_idx = np.sort(order[:num_shots]), np.sort(order[num_shots:])
        keep = observed[shot_idx]
        shot_latents = latents[shot_idx][keep]
        scored_latents = np.where(observed[scored_idx][..., None], latents[scored_idx], 0.0)
        predicted = np.stack(
            [
                PoissonRegressor(alpha=penalty, solver="newton-cholesky", max_iter=200)
                .fit(shot_latents, spikes_heldout[shot_idx][keep][:, neuron])
                .predict(scored_latents.reshape(-1, latents.shape[2]))
                .reshape(scored_latents.shape[:2])
                for neuron in range(spikes_heldout.shape[2])
            ],
            axis=-1,
        )
        scores.append(
            bits_per_spike(predicted, spikes_heldout[scored_idx], mask=observed[scored_idx])
        )
    return float(np.mean(scores))
