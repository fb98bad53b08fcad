"""Metrics: Neural Latents Benchmark scores, ground-truth recovery and behavioural decoding.

They read NumPy or JAX arrays (computed on the host with NumPy, scikit-learn and SciPy) and know
nothing of the model that made them. Every metric takes a `mask` `[trials, time]` for
variable-length trials and validates its arguments with a `ValueError` naming the argument.
"""

from latentjax.metrics.consistency import Consistency, consistency
from latentjax.metrics.decoding import velocity_r2
from latentjax.metrics.fewshot import few_shot_co_bps
from latentjax.metrics.nlb import bits_per_spike, co_bps, fp_bps, psth_r2
from latentjax.metrics.recovery import AffineMap, LatentR2, latent_r2, rate_r2

__all__ = [
    "AffineMap",
    "Consistency",
    "LatentR2",
    "bits_per_spike",
    "co_bps",
    "consistency",
    "few_shot_co_bps",
    "fp_bps",
    "latent_r2",
    "psth_r2",
    "rate_r2",
    "velocity_r2",
]
