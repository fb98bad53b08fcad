"""Building blocks that every model family may use; this layer imports no family.

- `recurrent`: GRU weights and recurrences (`GRU`, `gru_step`, `run_gru`).
- `readouts`: observation models from log-parameters (Poisson, Gaussian, Gamma, ZIG).
- `priors`: Gaussian and AR(1) priors, KL divergences.
- `kalman`: Kalman filtering and RTS smoothing in information form (sequential or parallel).
- `linear_readout`, `bin_dropout`, `refine`: linear read-outs of latents, coordinated bin
  dropout, per-trial MAP refinement.
"""
