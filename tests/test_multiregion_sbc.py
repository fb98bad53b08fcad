"""Simulation-based calibration (Talts et al. 2018) of coupled_lds's model and NUTS sampler.

Parameters are drawn from the prior of a tiny coupled_lds model (2 regions, 1 latent each, one
candidate delay), region latents are simulated from them with an independent numpy recursion,
and the model's NUTS posterior is drawn with the module's own kernels; the rank of the true
coupling among thinned posterior draws must be uniform when the model density and the sampler
are right. (With two candidate delays the ranks come out U-shaped, chi-square p ~ 0.005: one
NUTS chain does not move between the delay modes of short series; the fits start every chain
at the least-squares delays for that reason.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chisquare

from latentjax.multiregion import coupled_lds

NUM_REPLICATES = 200
NUM_TRIALS, NUM_BINS = 3, 12
NUM_WARMUP, NUM_DRAWS, THIN = 200, 200, 10
CONFIG = coupled_lds.Config(
    latent_dim=1, delays=(1,), own_lags=1, projection="none", num_warmup=NUM_WARMUP, num_chains=1
)


def _simulate(rng):
    """One prior draw of a 2-region, 1-latent model: (latents `[trials, time, 2]`, the true
    coupling of edge 0 -> 1)."""
    own = rng.normal(0.0, 1.0, 2)
    coupling = rng.normal(0.0, CONFIG.coupling_scale, (2, 2))  # [source, target]
    noise = np.abs(rng.normal(0.0, 1.0, 2))
    latents = np.zeros((NUM_TRIALS, NUM_BINS, 2))
    latents[:, 0] = rng.standard_normal((NUM_TRIALS, 2))  # conditioned on, any values
    for t in range(1, NUM_BINS):
        for target in range(2):
            source = 1 - target
            latents[:, t, target] = (
                own[target] * latents[:, t - 1, target]
                + coupling[source, target] * latents[:, t - 1, source]
                + noise[target] * rng.standard_normal(NUM_TRIALS)
            )
    return latents, coupling[0, 1]


def _posterior_coupling(latents, key):
    """`[draws]` NUTS draws of the edge 0 -> 1 coupling given `latents` (one chain)."""
    stats = coupled_lds.statistics(latents, jnp.ones(latents.shape[:2], bool), 1)
    initialise, sample_kernel = coupled_lds._nuts_kernels(CONFIG, 2)
    position = {name: jnp.zeros(shape) for name, shape in coupled_lds._site_shapes(2, 1, 1).items()}
    state = initialise(position, stats, key)

    def transition(state, _):
        state = sample_kernel(state, model_args=(stats,))
        return state, (state.z["coupling"][0, 1, 0, 0], state.diverging)

    _, (draws, diverging) = jax.lax.scan(transition, state, None, NUM_WARMUP + NUM_DRAWS)
    return draws[NUM_WARMUP:], diverging[NUM_WARMUP:].sum()


@pytest.mark.slow
def test_coupling_rank_statistics_are_uniform():
    rng = np.random.default_rng(0)
    simulations = [_simulate(rng) for _ in range(NUM_REPLICATES)]
    latents = np.stack([s[0] for s in simulations])
    truth = np.array([s[1] for s in simulations])
    keys = jax.random.split(jax.random.PRNGKey(1), NUM_REPLICATES)
    with jax.enable_x64(True):
        draws, divergences = jax.jit(jax.vmap(_posterior_coupling))(jnp.asarray(latents), keys)
    thinned = np.asarray(draws)[:, ::THIN]  # [replicates, 20] nearly independent draws
    ranks = (thinned < truth[:, None]).sum(axis=1)  # 0 .. 20
    counts = np.bincount(ranks // 3, minlength=7)  # 7 equal bins of 3 ranks
    assert chisquare(counts).pvalue > 0.01, counts
    # a few prior draws (near-zero noise, explosive dynamics) give needle-sharp posteriors
    assert np.mean(np.asarray(divergences) > 0) <= 0.05
