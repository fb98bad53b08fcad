"""Comparing two sets of latents or points: shape (`procrustes`), shared linear subspaces
(`cca`, `cka`) and dynamics (`dsa`).

`procrustes`, `cca` and `cka` read `[trials, time, dims]` or `[points, dims]` inputs sample by
sample (same number of samples, dims may differ). `dsa` reads trajectories
`[trials, time, dims]` and needs no correspondence between the samples of X and Y.

DSA (dynamical similarity analysis, Ostrow et al. 2023, NeurIPS):
1. delay (Hankel) embedding of each trial: rows `[x_t, x_{t-1}, ..., x_{t-n_delays+1}]`;
2. projection on the top `rank` right singular vectors of the stacked delay embedding (no
   centring, as in DMD), giving states `z` `[trials, time', rank]`;
3. the dynamics matrix `A` `[rank, rank]` by least squares, `z_{t+1} ≈ z_t A` (reduced-rank
   DMD, pooled over trials);
4. Procrustes over vector fields: the orthogonal `C` maximising `<A_x, C A_y Cᵀ>_F`. The same
   `C` minimises the Euclidean `‖A_x - C A_y Cᵀ‖_F` and the angular
   `arccos(<A_x, C A_y Cᵀ> / (‖A_x‖ ‖A_y‖))`. It is found by gradient ascent (Adam) on
   `C = R expm(S)` with `S` skew-symmetric and `R` the identity or a reflection (expm reaches
   only rotations), from `n_starts` random `S` per `R`, all vmapped in one compiled scan; the
   best result is kept.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from latentjax.geometry._arrays import as_points, as_trajectories, check_positive_int

__all__ = ["CCAResult", "DSAResult", "ProcrustesResult", "cca", "cka", "dsa", "procrustes"]


def _paired_points(X: Any, Y: Any) -> tuple[np.ndarray, np.ndarray]:
    x_points, _ = as_points("X", X)
    y_points, _ = as_points("Y", Y)
    if x_points.shape[0] != y_points.shape[0]:
        raise ValueError(
            f"`X` and `Y` must hold the same number of samples, got {x_points.shape[0]} and "
            f"{y_points.shape[0]}"
        )
    return x_points - x_points.mean(axis=0), y_points - y_points.mean(axis=0)


class ProcrustesResult(NamedTuple):
    """`distance`: `1 - (Σσ)²` in [0, 1] (the squared residual after centring both sets,
    scaling them to unit Frobenius norm and rotating X onto Y); `rotation` `[K, K]`
    orthogonal, K the larger dims (the smaller set is padded with zeros); `scale`; `aligned`
    `[samples, K]` = `scale * (X - mean X) @ rotation + mean Y`."""

    distance: float
    rotation: np.ndarray
    scale: float
    aligned: np.ndarray


def procrustes(X: Any, Y: Any) -> ProcrustesResult:
    """Orthogonal Procrustes alignment of `X` onto `Y` (translation, rotation or reflection,
    isotropic scale).

    Examples:
      >>> points = np.random.default_rng(0).normal(size=(50, 3))
      >>> round(procrustes(points, 2 * points[:, ::-1] + 1).distance, 6)
      0.0
    """
    x_centred, y_centred = _paired_points(X, Y)
    num_dims = max(x_centred.shape[1], y_centred.shape[1])
    x_centred = np.pad(x_centred, ((0, 0), (0, num_dims - x_centred.shape[1])))
    y_centred = np.pad(y_centred, ((0, 0), (0, num_dims - y_centred.shape[1])))
    x_norm, y_norm = np.linalg.norm(x_centred), np.linalg.norm(y_centred)
    if x_norm == 0 or y_norm == 0:
        raise ValueError("`X` and `Y` must not be constant")
    left, singular_values, right = np.linalg.svd((x_centred / x_norm).T @ (y_centred / y_norm))
    rotation = left @ right
    scale = float(np.sum(singular_values) * y_norm / x_norm)
    mean_y = as_points("Y", Y)[0].mean(axis=0)
    mean_y = np.pad(mean_y, (0, num_dims - mean_y.shape[0]))
    return ProcrustesResult(
        distance=float(max(0.0, 1.0 - np.sum(singular_values) ** 2)),
        rotation=rotation,
        scale=scale,
        aligned=scale * x_centred @ rotation + mean_y,
    )


class CCAResult(NamedTuple):
    """`correlations` `[n]` canonical correlations, largest first; `x_weights` `[Kx, n]` and
    `y_weights` `[Ky, n]` map centred X and Y to canonical variates of unit variance."""

    correlations: np.ndarray
    x_weights: np.ndarray
    y_weights: np.ndarray


def _inverse_square_root_factor(covariance: np.ndarray, regularization: float) -> np.ndarray:
    """`W` with `Wᵀ (C + r·mean(diag C)·I) W = I` (inverse transposed Cholesky factor)."""
    ridge = regularization * np.trace(covariance) / covariance.shape[0]
    regularised = covariance + ridge * np.eye(covariance.shape[0])
    eigenvalues = np.linalg.eigvalsh(regularised)
    if eigenvalues[0] <= 1e-10 * eigenvalues[-1]:
        raise np.linalg.LinAlgError("singular covariance")
    factor = np.linalg.cholesky(regularised)
    return np.linalg.inv(factor).T


def cca(
    X: Any, Y: Any, *, n_components: int | None = None, regularization: float = 0.0
) -> CCAResult:
    """Canonical correlation analysis between paired samples of `X` and `Y`.

    `regularization` adds that fraction of the mean variance to each covariance's diagonal
    (needed when dims approach the number of samples).

    Examples:
      >>> rng = np.random.default_rng(0)
      >>> shared = rng.normal(size=(500, 1))
      >>> X, Y = np.c_[shared, rng.normal(size=(500, 2))], np.c_[rng.normal(size=(500, 2)), -shared]
      >>> cca(X, Y).correlations.round(2)[0]
      np.float64(1.0)
    """
    x_centred, y_centred = _paired_points(X, Y)
    max_components = min(x_centred.shape[1], y_centred.shape[1])
    n_components = max_components if n_components is None else n_components
    check_positive_int("n_components", n_components, maximum=max_components)
    if regularization < 0:
        raise ValueError(f"`regularization` must be >= 0, got {regularization}")
    count = x_centred.shape[0] - 1
    try:
        x_white = _inverse_square_root_factor(x_centred.T @ x_centred / count, regularization)
        y_white = _inverse_square_root_factor(y_centred.T @ y_centred / count, regularization)
    except np.linalg.LinAlgError as error:
        raise ValueError(
            "`X` or `Y` has a singular covariance; pass `regularization` > 0"
        ) from error
    cross = x_white.T @ (x_centred.T @ y_centred / count) @ y_white
    left, correlations, right_t = np.linalg.svd(cross)
    return CCAResult(
        correlations=np.clip(correlations[:n_components], 0.0, 1.0),
        x_weights=x_white @ left[:, :n_components],
        y_weights=y_white @ right_t.T[:, :n_components],
    )


def cka(X: Any, Y: Any) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) in [0, 1]:
    `‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)` after centring. Invariant to orthogonal transforms and
    isotropic scaling of either set."""
    x_centred, y_centred = _paired_points(X, Y)
    cross = np.linalg.norm(y_centred.T @ x_centred) ** 2
    return float(
        cross / (np.linalg.norm(x_centred.T @ x_centred) * np.linalg.norm(y_centred.T @ y_centred))
    )


class DSAResult(NamedTuple):
    """`distance` (angular, radians in [0, π], or Euclidean `‖A_x - C A_y Cᵀ‖_F`);
    `dynamics_x`, `dynamics_y` `[rank, rank]` DMD matrices; `rotation` `C` `[rank, rank]`."""

    distance: float
    dynamics_x: np.ndarray
    dynamics_y: np.ndarray
    rotation: np.ndarray


def delay_embedding(trajectories: np.ndarray, n_delays: int) -> np.ndarray:
    """`[trials, time - n_delays + 1, n_delays * dims]` rows `[x_t, x_{t-1}, ...]`."""
    num_time = trajectories.shape[1] - n_delays + 1
    lags = [
        trajectories[:, n_delays - 1 - lag : n_delays - 1 - lag + num_time]
        for lag in range(n_delays)
    ]
    return np.concatenate(lags, axis=-1)


def dmd_dynamics(X: Any, *, n_delays: int, rank: int) -> np.ndarray:
    """Reduced-rank DMD matrix `A` `[rank, rank]` of trajectories `X` `[trials, time, dims]`
    on their delay embedding (steps 1-3 of the module docstring)."""
    trajectories = as_trajectories("X", X)
    check_positive_int("n_delays", n_delays, maximum=trajectories.shape[1] - 2)
    embedded = delay_embedding(trajectories, n_delays)
    check_positive_int("rank", rank, maximum=embedded.shape[-1])
    _, _, right_t = np.linalg.svd(embedded.reshape(-1, embedded.shape[-1]), full_matrices=False)
    states = embedded @ right_t[:rank].T
    before = states[:, :-1].reshape(-1, rank)
    after = states[:, 1:].reshape(-1, rank)
    dynamics, *_ = np.linalg.lstsq(before, after, rcond=None)
    return dynamics


def _orthogonal(skew_parameters: jax.Array, reflection: jax.Array, size: int) -> jax.Array:
    upper = jnp.zeros((size, size)).at[jnp.triu_indices(size, k=1)].set(skew_parameters)
    return reflection @ jax.scipy.linalg.expm(upper - upper.T)


@functools.partial(jax.jit, static_argnames=("num_steps",))
def _align_dynamics(target, source, initial_parameters, reflections, learning_rate, num_steps):
    """Best orthogonal `C` and cosine `<target, C source Cᵀ>` over the given starts."""
    size = target.shape[0]
    optimiser = optax.adam(learning_rate)
    scale = jnp.linalg.norm(target) * jnp.linalg.norm(source)

    def cosine(parameters, reflection):
        rotation = _orthogonal(parameters, reflection, size)
        return jnp.sum(target * (rotation @ source @ rotation.T)) / scale

    def ascend(parameters, reflection):
        def step(carry, _):
            parameters, state = carry
            gradient = jax.grad(lambda p: -cosine(p, reflection))(parameters)
            updates, state = optimiser.update(gradient, state)
            return (optax.apply_updates(parameters, updates), state), None

        (parameters, _), _ = jax.lax.scan(
            step, (parameters, optimiser.init(parameters)), None, length=num_steps
        )
        return cosine(parameters, reflection), _orthogonal(parameters, reflection, size)

    cosines, rotations = jax.vmap(ascend)(initial_parameters, reflections)
    best = jnp.argmax(cosines)
    return cosines[best], rotations[best]


def dsa(
    X: Any,
    Y: Any,
    *,
    n_delays: int = 10,
    rank: int = 6,
    score: str = "angular",
    n_starts: int = 8,
    num_steps: int = 500,
    learning_rate: float = 0.05,
    seed: int = 0,
) -> DSAResult:
    """Dynamical similarity between trajectories `X` and `Y` (`[trials, time, dims]`; trial
    counts, lengths and dims may differ). Smaller is more similar; 0 for systems whose DMD
    matrices are orthogonally conjugate (e.g. Y an orthogonal change of coordinates of X).

    Args:
      n_delays: delays in the Hankel embedding (each trial needs more time bins than this).
      rank: dimension of the reduced DMD state; the same for X and Y.
      score: "angular" (radians) or "euclidean".
      n_starts: random starts of the orthogonal optimisation per reflection class.
    """
    if score not in ("angular", "euclidean"):
        raise ValueError(f"`score` must be 'angular' or 'euclidean', got {score!r}")
    check_positive_int("n_starts", n_starts)
    check_positive_int("num_steps", num_steps)
    dynamics_x = dmd_dynamics(X, n_delays=n_delays, rank=rank)
    dynamics_y = dmd_dynamics(Y, n_delays=n_delays, rank=rank)
    num_parameters = rank * (rank - 1) // 2
    starts = np.random.default_rng(seed).normal(size=(2 * n_starts, num_parameters))
    starts[0] = starts[n_starts] = 0.0  # the identity and the plain reflection
    reflection = np.eye(rank)
    reflection[0, 0] = -1.0
    reflections = np.stack([np.eye(rank)] * n_starts + [reflection] * n_starts)
    dtype = jnp.result_type(float)
    cosine, rotation = _align_dynamics(
        jnp.asarray(dynamics_x, dtype),
        jnp.asarray(dynamics_y, dtype),
        jnp.asarray(starts, dtype),
        jnp.asarray(reflections, dtype),
        learning_rate,
        num_steps,
    )
    rotation = np.asarray(rotation, dtype=np.float64)
    if score == "angular":
        distance = float(np.arccos(np.clip(float(cosine), -1.0, 1.0)))
    else:
        distance = float(np.linalg.norm(dynamics_x - rotation @ dynamics_y @ rotation.T))
    return DSAResult(distance, dynamics_x, dynamics_y, rotation)
