"""Geometry of neural population activity: embeddings, topology, dimension, dynamics,
comparison and decoding. Inputs are `[trials, time, dims]` latents or `[points, dims]` points;
nothing here imports a model or the training engine.

Examples:
    >>> import latentjax as lj
    >>> import numpy as np
    >>> emb = lj.geometry.pca(np.random.default_rng(0).normal(size=(3, 20, 5)), 2)
"""

from latentjax.geometry.comparison import (
    CCAResult,
    DSAResult,
    ProcrustesResult,
    cca,
    cka,
    dsa,
    procrustes,
)
from latentjax.geometry.decoding import DecodingResult, decode_behavior, knn_decode
from latentjax.geometry.dimension import (
    n_components_for_variance,
    participation_ratio,
    twonn_dimension,
)
from latentjax.geometry.dynamics import FixedPoints, curvature, fixed_points, speed, tangling
from latentjax.geometry.embedding import Embedding, isomap, lle, pca, tsne, umap
from latentjax.geometry.flowfield import FlowField, flow_features, flowfield
from latentjax.geometry.jpca import jpca
from latentjax.geometry.topology import (
    betti,
    greedy_landmarks,
    long_bars,
    persistence,
    persistence_memory_bytes,
)

__all__ = [
    "CCAResult",
    "DSAResult",
    "DecodingResult",
    "Embedding",
    "FixedPoints",
    "FlowField",
    "ProcrustesResult",
    "betti",
    "cca",
    "cka",
    "curvature",
    "decode_behavior",
    "dsa",
    "fixed_points",
    "flow_features",
    "flowfield",
    "greedy_landmarks",
    "isomap",
    "jpca",
    "knn_decode",
    "lle",
    "long_bars",
    "n_components_for_variance",
    "participation_ratio",
    "pca",
    "persistence",
    "persistence_memory_bytes",
    "procrustes",
    "speed",
    "tangling",
    "tsne",
    "twonn_dimension",
    "umap",
]
