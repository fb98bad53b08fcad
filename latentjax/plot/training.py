"""Training curves: one line per population member."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["training_curves"]


def training_curves(histories, *, keys=("loss", "valid_loss"), labels=None) -> Figure:
    """Loss curves of one fit or of a population (one line per member).

    Args:
      histories: a `FitResult`, a history dict (`step`, `loss`, ...), or a list of either.
      keys: which logged series to draw, one panel each (absent ones are skipped).
      labels: a label per member (default "member i").
    """
    if not isinstance(histories, (list, tuple)):
        histories = [histories]
    histories = [getattr(h, "history", h) for h in histories]
    keys = [k for k in keys if any(k in h and len(np.atleast_1d(h[k])) for h in histories)]
    if not keys:
        raise ValueError("training_curves: the histories hold none of the requested `keys`")
    labels = labels or [f"member {i}" for i in range(len(histories))]
    figure = Figure(figsize=(4.5 * len(keys), 3.2), layout="constrained")
    for column, key in enumerate(keys):
        axes = figure.add_subplot(1, len(keys), column + 1)
        for index, (history, label) in enumerate(zip(histories, labels, strict=True)):
            if key not in history:
                continue
            values = np.asarray(history[key], dtype=float)
            steps = np.asarray(history.get("step", np.arange(1, len(values) + 1)))
            steps = steps if steps.shape == values.shape else np.arange(1, len(values) + 1)
            axes.plot(steps, values, color=f"C{index % 10}", label=label)
        axes.set_xlabel("step")
        axes.set_ylabel(key.replace("_", " "))
        finite = np.concatenate([np.asarray(h[key], float) for h in histories if key in h])
        finite = finite[np.isfinite(finite)]
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 50:
            axes.set_yscale("log")
        if len(histories) > 1 and column == 0:
            axes.legend(fontsize="small")
    return figure
