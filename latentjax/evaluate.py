"""`evaluate`: every metric that applies to a posterior (or a fit) on a batch of trials.

Reads a `Posterior` (a `FitResult` is first turned into one by `infer`) and `Trials`, and
returns an `Evaluation`: a dict of metric name -> float that prints as a table. Which metrics
appear depends on what is available:

| metric | when | computed with |
|---|---|---|
| `bps` | the posterior has rates and `trials` holds counts | `bits_per_spike`, observed neurons |
| `co_bps` | `heldout` is given | `co_bps` on the held-out neurons |
| `latent_r2` | `truth["latents"]` is given | `latent_r2` (affine map fit on a train split) |
| `rate_r2` | `truth["rates"]` is given and the posterior has rates | `rate_r2` |
| `velocity_r2` | `trials.behavior` is present and there are >= 2 trials | `velocity_r2` |
| `psth_r2` | `trials.conditions` is present and the posterior has rates | `psth_r2` |
| MCMC `r_hat_max`, ... | the family has a `diagnostics` hook | `diagnostics(posterior)` |

Held-out neurons (co-smoothing). `heldout` is a `Trials` of the same trials and bins as
`trials`, holding the neurons withheld from the model. The posterior predicts their rates
either as `posterior.extras["heldout_rates"]` `[trials, time, heldout_neurons]`, or by
`posterior.rates` covering held-in and then held-out neurons,
`[trials, time, heldin_neurons + heldout_neurons]`, in the order of `trials` then `heldout`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from latentjax import metrics
from latentjax.data import Trials
from latentjax.family import hook
from latentjax.metrics._checks import split_trials
from latentjax.results import FitResult, Posterior

__all__ = ["Evaluation", "evaluate"]


class Evaluation(dict):
    """Metric name -> float, printed as a two-column table."""

    def __str__(self) -> str:
        if not self:
            return "(no metric applies)"
        width = max(len("metric"), *(len(name) for name in self))
        lines = [f"{'metric':<{width}}  value", f"{'-' * width}  --------"]
        lines += [f"{name:<{width}}  {value:.4f}" for name, value in self.items()]
        return "\n".join(lines)


def _split_rates(posterior: Posterior, trials: Trials, heldout: Trials | None):
    """(held-in rates, held-out rates or None) as NumPy arrays, checked against the trials."""
    rates = None if posterior.rates is None else np.asarray(posterior.rates)
    num_heldin = trials.num_neurons
    if rates is not None and rates.shape[:2] != trials.shape[:2]:
        raise ValueError(
            f"evaluate: `posterior.rates` must be [trials, time, neurons] with trials, time = "
            f"{trials.shape[:2]}, got {rates.shape}"
        )
    if heldout is None:
        if rates is not None and rates.shape[2] != num_heldin:
            raise ValueError(
                f"evaluate: `posterior.rates` covers {rates.shape[2]} neurons but `trials` "
                f"has {num_heldin}; pass `heldout` if the rest are held-out neurons"
            )
        return rates, None
    if "heldout_rates" in posterior.extras:
        heldout_rates = np.asarray(posterior.extras["heldout_rates"])
        if heldout_rates.shape != heldout.shape:
            raise ValueError(
                f"evaluate: `posterior.heldout_rates` must have the shape of `heldout.spikes` "
                f"{heldout.shape}, got {heldout_rates.shape}"
            )
        if rates is not None and rates.shape[2] == num_heldin + heldout.num_neurons:
            rates = rates[:, :, :num_heldin]  # held-in then held-out, as the module docs say
        return rates, heldout_rates
    if rates is None or rates.shape[2] != num_heldin + heldout.num_neurons:
        got = None if rates is None else rates.shape
        raise ValueError(
            f"evaluate: with `heldout`, the posterior must predict the held-out neurons: "
            f"`posterior.rates` [trials, time, {num_heldin} + {heldout.num_neurons}] or an "
            f"extra `heldout_rates`; got rates of shape {got}"
        )
    return rates[..., :num_heldin], rates[..., num_heldin:]


def _truth_array(truth: Mapping, name: str, shape_prefix: tuple[int, int]) -> np.ndarray | None:
    if name not in truth or truth[name] is None:
        return None
    array = np.asarray(truth[name])
    if array.ndim != 3 or array.shape[:2] != shape_prefix:
        raise ValueError(
            f'evaluate: `truth["{name}"]` must be [trials, time, dims] with trials, time = '
            f"{shape_prefix}, got shape {array.shape}"
        )
    return array


def evaluate(
    posterior_or_result,
    trials,
    *,
    truth=None,
    heldout=None,
    infer: Callable | None = None,
    seed=0,
    train_fraction=0.8,
    behavior_lag=0,
) -> Evaluation:
    """Every metric that applies, as a printable dict of name -> float.

    Args:
      posterior_or_result: a `Posterior` for `trials`, or a `FitResult` (then
        `infer(result, trials, seed=seed)` makes the posterior).
      trials: the `Trials` the posterior describes (the neurons the model saw).
      truth: ground truth of synthetic data, a dict with `latents` `[trials, time, K]` and/or
        `rates` `[trials, time, neurons]` (the neurons of `trials`, optionally followed by
        those of `heldout`), e.g. `Dataset.truth`; other keys are ignored.
      heldout: `Trials` of held-out neurons on the same trials and bins (see module docs).
      infer: the inference function for a `FitResult`; default `latentjax.api.infer`.
      seed: seed of inference and of the trial splits (latent map, velocity decoder).
      train_fraction: fraction of trials the affine latent map and the decoder are fit on.
      behavior_lag: bins by which behaviour follows the neural signal (`velocity_r2`'s `lag`).

    Returns:
      `Evaluation` (a dict subclass whose `str` is a table).

    Examples:
      >>> import numpy as np, latentjax as lj
      >>> spikes = np.random.default_rng(0).poisson(2.0, size=(4, 10, 3))
      >>> trials = lj.Trials(spikes, dt=0.01)
      >>> posterior = lj.Posterior(latents=np.zeros((4, 10, 1)), rates=np.full(spikes.shape, 2.0))
      >>> list(lj.evaluate(posterior, trials))
      ['bps']
    """
    if isinstance(posterior_or_result, FitResult):
        from latentjax.api import fitted_neurons

        if infer is None:
            from latentjax.api import infer
        # the neurons in the fitted order (or a clear error) for inference and the metrics
        trials = fitted_neurons("trials", trials, posterior_or_result)
        posterior = infer(posterior_or_result, trials, seed=seed)
    elif isinstance(posterior_or_result, Posterior):
        posterior = posterior_or_result
    else:
        raise ValueError(
            f"evaluate: `posterior_or_result` must be a Posterior or a FitResult, "
            f"got {type(posterior_or_result).__name__}"
        )
    if not isinstance(trials, Trials):
        raise ValueError(f"evaluate: `trials` must be Trials, got {type(trials).__name__}")
    if heldout is not None:
        if not isinstance(heldout, Trials):
            raise ValueError(f"evaluate: `heldout` must be Trials, got {type(heldout).__name__}")
        if heldout.shape[:2] != trials.shape[:2]:
            raise ValueError(
                f"evaluate: `heldout` must cover the trials and bins of `trials` "
                f"{trials.shape[:2]}, got {heldout.shape[:2]}"
            )
    if truth is not None and not isinstance(truth, Mapping):
        raise ValueError(f"evaluate: `truth` must be a dict, got {type(truth).__name__}")

    heldin_rates, heldout_rates = _split_rates(posterior, trials, heldout)
    latents = np.asarray(posterior.latents)
    mask = trials.mask if heldout is None else trials.mask & heldout.mask
    results = Evaluation()

    all_rates, all_spikes = heldin_rates, trials.spikes
    if heldout_rates is not None:
        all_rates = np.concatenate([heldin_rates, heldout_rates], axis=2)
        all_spikes = np.concatenate([trials.spikes, heldout.spikes], axis=2)

    if heldin_rates is not None and not trials.continuous:
        results["bps"] = metrics.bits_per_spike(heldin_rates, trials.spikes, mask=trials.mask)
    if heldout is not None:
        results["co_bps"] = metrics.co_bps(heldout_rates, heldout.spikes, mask=mask)

    if truth is not None:
        true_latents = _truth_array(truth, "latents", trials.shape[:2])
        true_rates = _truth_array(truth, "rates", trials.shape[:2])
        if true_latents is None and true_rates is None:
            raise ValueError('evaluate: `truth` must hold "latents" and/or "rates"')
        if true_latents is not None:
            fit = metrics.latent_r2(
                true_latents, latents, train_fraction=train_fraction, seed=seed, mask=mask
            )
            results["latent_r2"] = fit.mean
        if true_rates is not None and all_rates is not None:
            if true_rates.shape[2] == trials.num_neurons:
                results["rate_r2"] = metrics.rate_r2(true_rates, heldin_rates, mask=mask)
            elif true_rates.shape[2] == all_rates.shape[2]:
                results["rate_r2"] = metrics.rate_r2(true_rates, all_rates, mask=mask)
            else:
                raise ValueError(
                    f'evaluate: `truth["rates"]` covers {true_rates.shape[2]} neurons; expected '
                    f"{trials.num_neurons} (held-in) or {all_rates.shape[2]} (held-in + held-out)"
                )

    if trials.behavior is not None and trials.num_trials >= 2:
        train_idx, test_idx = split_trials("evaluate", trials.num_trials, train_fraction, seed)
        results["velocity_r2"] = metrics.velocity_r2(
            latents if all_rates is None else all_rates,
            trials.behavior,
            train_idx=train_idx,
            test_idx=test_idx,
            lag=behavior_lag,
            mask=mask,
        )
    if trials.conditions is not None and all_rates is not None:
        results["psth_r2"] = metrics.psth_r2(
            all_rates, all_spikes, trials.conditions, dt=trials.dt, mask=mask
        )

    diagnostics = hook(posterior.family, "diagnostics")
    if diagnostics is not None:
        results.update({name: float(value) for name, value in diagnostics(posterior).items()})
    return results
