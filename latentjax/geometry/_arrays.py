"""Input checks shared by the geometry tools (host side, before any compilation).

Geometry functions accept latents `[trials, time, dims]` or points `[points, dims]`. Tools
that treat samples as a point cloud flatten trials and time into one point axis and give
results back in the input's layout.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_points(name: str, value: Any, *, min_points: int = 2) -> tuple[np.ndarray, tuple]:
    """Validate `[trials, time, dims]` or `[points, dims]`; return `[points, dims]` and the
    leading shape (`(trials, time)` or `(points,)`) to restore the layout later."""
    array = np.asarray(value)
    if array.ndim not in (2, 3):
        raise ValueError(
            f"`{name}` must be [trials, time, dims] or [points, dims], got shape {array.shape}"
        )
    if array.dtype.kind not in "biuf":
        raise ValueError(f"`{name}` must be numeric, got dtype {array.dtype}")
    if 0 in array.shape:
        raise ValueError(f"`{name}` has an empty axis, shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` holds NaN or Inf values")
    leading = array.shape[:-1]
    points = array.reshape(-1, array.shape[-1]).astype(np.float64)
    if points.shape[0] < min_points:
        raise ValueError(f"`{name}` needs at least {min_points} points, got {points.shape[0]}")
    return points, leading


def as_trajectories(name: str, value: Any, *, min_time: int = 3) -> np.ndarray:
    """Validate `[trials, time, dims]` (or `[time, dims]`, read as one trial); return 3-D."""
    array = np.asarray(value)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(
            f"`{name}` must be [trials, time, dims] or [time, dims], got shape {array.shape}"
        )
    if array.dtype.kind not in "biuf":
        raise ValueError(f"`{name}` must be numeric, got dtype {array.dtype}")
    if 0 in array.shape:
        raise ValueError(f"`{name}` has an empty axis, shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` holds NaN or Inf values")
    if array.shape[1] < min_time:
        raise ValueError(f"`{name}` needs at least {min_time} time bins, got {array.shape[1]}")
    return array.astype(np.float64)


def check_positive_int(name: str, value: Any, *, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be at most {maximum}, got {value}")
    return int(value)


def check_fraction(name: str, value: Any, *, inclusive_one: bool = True) -> float:
    value = float(value)
    ok = 0.0 < value <= 1.0 if inclusive_one else 0.0 < value < 1.0
    if not ok:
        bound = "(0, 1]" if inclusive_one else "(0, 1)"
        raise ValueError(f"`{name}` must lie in {bound}, got {value}")
    return value
