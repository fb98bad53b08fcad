"""Communication between brain regions.

- `coupled_lds`: Bayesian coupled linear dynamics with delays and sparse coupling (numpyro,
  NUTS or SVI through `lj.fit`); its Posterior carries coupling samples `[S, R, R]`.
- `hlds`: hierarchical state-space model (region latents, delayed spike-and-slab coupling,
  global latent, modulation), variational EM with the latents marginalised; exact edge
  inclusion and delay posteriors by enumeration.
- `rrr`: reduced-rank regression communication subspace with cross-validated rank.
- `cca`: canonical correlations between two regions, with cross-validation.
- `dlag`: delayed latents shared across regions plus within-region latents (GP, exact EM).
- `gnn`: region latents as graph nodes exchanging messages along learned edges (`lj.fit`).
- `attention`: attention routing between region latents, weights per time step (`lj.fit`).

Convention everywhere: `[..., s, r]` is the edge from source region `s` to target `r`.
"""

from latentjax.multiregion import attention, coupled_lds, dlag, gnn, hlds
from latentjax.multiregion.cca import CCAResult, cca
from latentjax.multiregion.rrr import RRRResult, rrr

__all__ = [
    "CCAResult",
    "RRRResult",
    "attention",
    "cca",
    "coupled_lds",
    "dlag",
    "gnn",
    "hlds",
    "rrr",
]
