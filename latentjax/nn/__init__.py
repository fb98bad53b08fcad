"""Building blocks that every model family may use; this layer imports no family.

- `recurrent`: GRU weights and recurrences (`GRU`, `gru_step`, `run_gru`).
- `readouts`: observation models from log-parameters (Poisson, Gaussian, Gamma, ZIG).
- `priors`: Gaussian and AR(1) priors, KL divergences.
- `kalman`: Kalman filtering and RTS smoothing in information form (sequential or parallel).
- `block_tridiagonal`: Gaussian chains with block-tridiagonal precision (time-varying
  dynamics, Newton systems of Laplace E-steps): means, marginal and lag-one covariances.
- `hmm`: discrete-state chains in log space: forward-backward, Viterbi, k-means.
- `linear_readout`, `bin_dropout`, `refine`: linear read-outs of latents, coordinated bin
  dropout, per-trial MAP refinement.
"""
