"""Shared by the GPFA and DLAG tests: EM steps on trial sets that must take the same path."""

import jax
import numpy as np


def assert_same_em_steps(family, config, trial_sets, steps=3):
    """Run `steps` jitted EM steps of `family` (init key 0, float64) from each of
    `trial_sets` and require equal parameters, last log-likelihood and posterior latents
    (rtol 1e-9). Returns the parameters of the first."""
    fitter = family.fitter(config)
    outcomes = []
    with jax.enable_x64(True):
        step = jax.jit(fitter.step)  # compiled once: the sets have the same shapes
        for trials in trial_sets:
            state = fitter.init(family.init(jax.random.PRNGKey(0), config, trials), trials)
            for i in range(steps):
                state, info = step(state, trials, jax.random.PRNGKey(i))
            posterior = family.posterior(state.params, trials, config)
            outcomes.append((state.params, info["log_likelihood"], posterior.latents))
    for first, other in zip(*outcomes, strict=True):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9), first, other)
    return outcomes[0][0]
