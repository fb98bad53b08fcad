"""Figures (matplotlib). Every function returns the Figure and never calls `show()`.

Figures are built without pyplot, so nothing global changes; save with `figure.savefig(path)`.
"""

from latentjax.plot.activity import psths, raster
from latentjax.plot.communication import communication_graph
from latentjax.plot.embedding import consistency_matrix, embedding_3d
from latentjax.plot.latents import latent_trajectories, true_vs_inferred
from latentjax.plot.realtime import decoded_behavior, latency_histogram
from latentjax.plot.states import state_flow_fields, state_raster
from latentjax.plot.topology import plot_barcode, plot_diagram
from latentjax.plot.training import training_curves

__all__ = [
    "communication_graph",
    "consistency_matrix",
    "decoded_behavior",
    "embedding_3d",
    "latency_histogram",
    "latent_trajectories",
    "plot_barcode",
    "plot_diagram",
    "psths",
    "raster",
    "state_flow_fields",
    "state_raster",
    "training_curves",
    "true_vs_inferred",
]
