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
from threadpoolctl import threadpool_limits

from latentjax.metrics._checks import (
    as_array,
    check_finite_where,
    check_same_shape,
    observed_bins,
)
from latentjax.metrics.nlb import bits_per_spike

__all__ = ["few_shot_co_bps"]


def _fit_and_predict(features, counts, new_features, penalty) -> np.ndarray:
    """Rates `[samples]` at `new_features` of a Poisson GLM fit to one neuron's `counts`.

    A neuron silent in the few-shot trials has maximum-likelihood rate 0 (which
    `bits_per_spike` floors at 1e-9), so no GLM is fit for it.
    """
    if not counts.any():
        return np.zeros(len(new_features))
    glm = PoissonRegressor(alpha=penalty, solver="newton-cholesky", max_iter=200)
    return glm.fit(features, counts).predict(new_features)


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

    Examples:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> latents = rng.normal(size=(40, 20, 2))
      >>> spikes = rng.poisson(np.exp(latents @ rng.normal(size=(2, 4)) * 0.5))
      >>> few_shot_co_bps(latents, spikes, num_shots=20) > 0
      True
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
        scored_features = scored_latents.reshape(-1, latents.shape[2])
        shot_counts = spikes_heldout[shot_idx][keep]
        with threadpool_limits(1):  # many small fits: threaded BLAS only adds overhead
            predicted = np.stack(
                [
                    _fit_and_predict(shot_latents, shot_counts[:, n], scored_features, penalty)
                    for n in range(spikes_heldout.shape[2])
                ],
                axis=-1,
            ).reshape(spikes_heldout[scored_idx].shape)
        scores.append(
            bits_per_spike(predicted, spikes_heldout[scored_idx], mask=observed[scored_idx])
        )
    return float(np.mean(scores))
