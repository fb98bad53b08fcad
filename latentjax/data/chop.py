"""Continuous recordings: cut a stream into overlapping windows and merge results back.

A *stream* is a continuous recording held as a one-trial `Trials` `[1, time, neurons]` (an
NWB file without a trials table loads as one, see `lj.io.load_nwb`). Models are trained on
windows of it (`chop`), and what they infer on the windows (latents, rates, decoded
behaviour: `[windows, window, ...]`) goes back onto the stream with `merge`, as nlb_tools
does for MC_RTT.

Windows are `window` bins long, start every `window - overlap` bins from bin 0, and the last
one is moved back to end at the stream's last bin (so every bin is covered, none is padded).
`merge` either averages every window that covers a bin (`"average"`) or takes each bin from
the window whose centre is nearest (`"centre"`, ties to the earlier window: the overlaps'
edges, where a bidirectional model sees least context, are dropped).

Examples:
  >>> import numpy as np, latentjax as lj
  >>> stream = lj.Trials(np.arange(30).reshape(1, 10, 3), dt=0.02)
  >>> windows = lj.data.chop(stream, window=4, overlap=2)
  >>> windows.shape, lj.data.window_starts(10, window=4, overlap=2).tolist()
  ((4, 4, 3), [0, 2, 4, 6])
  >>> merged = lj.data.merge(windows.spikes, num_bins=10, overlap=2)
  >>> bool(np.array_equal(merged, stream.spikes))
  True
"""

from __future__ import annotations

import dataclasses

import numpy as np

from latentjax.data.trials import Trials

__all__ = ["chop", "merge", "window_starts"]

_MODES = ("average", "centre")


def _check_sizes(function: str, num_bins, window, overlap) -> None:
    for name, value in (("window", window), ("overlap", overlap)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"{function}: `{name}` must be an int (bins), got {value!r}")
    if window < 1:
        raise ValueError(f"{function}: `window` must be at least 1 bin, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(
            f"{function}: `overlap` must be in [0, window) = [0, {window}), got {overlap}"
        )
    if not isinstance(num_bins, (int, np.integer)) or num_bins < window:
        raise ValueError(
            f"{function}: the stream ({num_bins} bins) must be at least one `window` "
            f"({window} bins) long"
        )


def window_starts(num_bins: int, window: int, overlap: int) -> np.ndarray:
    """First bin of each window that `chop` cuts from a stream of `num_bins` bins.

    Args:
      num_bins: bins in the stream.
      window: bins per window.
      overlap: bins shared by consecutive windows, in `[0, window)`.

    Returns:
      `[windows]` int starts: every `window - overlap` bins from 0, the last one moved back
      to `num_bins - window` when the stride does not end there.

    Examples:
      >>> import latentjax as lj
      >>> lj.data.window_starts(11, window=4, overlap=1).tolist()
      [0, 3, 6, 7]
    """
    _check_sizes("window_starts", num_bins, window, overlap)
    last = num_bins - window
    starts = np.arange(0, last + 1, window - overlap)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def chop(stream: Trials, window: int, overlap: int = 0) -> Trials:
    """Cut a continuous recording into overlapping windows (one trial each).

    Args:
      stream: a one-trial `Trials` `[1, time, neurons]` (a continuous recording).
      window: bins per window.
      overlap: bins shared by consecutive windows, in `[0, window)`.

    Returns:
      `Trials` `[windows, window, neurons]` with every field sliced (spikes, mask, times,
      behavior); `conditions` numbers the windows. `lj.data.window_starts` gives their starts.

    Examples:
      >>> import numpy as np, latentjax as lj
      >>> stream = lj.Trials(np.zeros((1, 100, 5), dtype=int), dt=0.02)
      >>> lj.data.chop(stream, window=30, overlap=10).shape
      (5, 30, 5)
    """
    if not isinstance(stream, Trials):
        raise ValueError(f"chop: `stream` must be lj.Trials, got {type(stream).__name__}")
    if stream.num_trials != 1:
        raise ValueError(
            f"chop: `stream` must be one continuous recording (a one-trial Trials), got "
            f"{stream.num_trials} trials; select one with trials[i]"
        )
    starts = window_starts(stream.num_bins, window, overlap)
    index = starts[:, None] + np.arange(window)

    def cut(array):
        return None if array is None else np.asarray(array)[0][index]

    return Trials(
        cut(stream.spikes),
        stream.dt,
        times=cut(stream.times),
        mask=cut(stream.mask),
        behavior=cut(stream.behavior),
        regions=stream.regions,
        conditions=np.arange(len(starts)),
        neuron_ids=stream.neuron_ids,
        continuous=stream.continuous,
    )


def _merge_array(name: str, values, num_bins: int, window: int, overlap: int, mode: str):
    values = np.asarray(values)
    starts = window_starts(num_bins, window, overlap)
    if values.ndim < 2 or values.shape[:2] != (len(starts), window):
        raise ValueError(
            f"merge: `{name}` must be [windows, window, ...] = {(len(starts), window)} for a "
            f"stream of {num_bins} bins, got {values.shape}"
        )
    bins = starts[:, None] + np.arange(window)  # [windows, window]
    if mode == "centre":
        centres = starts + (window - 1) / 2
        nearest = np.argmin(np.abs(np.arange(num_bins)[:, None] - centres[None]), axis=1)
        return values[nearest, np.arange(num_bins) - starts[nearest]][None]
    total = np.zeros((num_bins,) + values.shape[2:], np.float64)
    np.add.at(total, bins.reshape(-1), values.reshape((-1,) + values.shape[2:]))
    count = np.bincount(bins.reshape(-1), minlength=num_bins)
    merged = total / count.reshape((-1,) + (1,) * (values.ndim - 2))
    dtype = values.dtype if values.dtype.kind == "f" else np.float64
    return merged.astype(dtype)[None]


def merge(windows, *, num_bins: int, overlap: int, mode: str = "average"):
    """Put what was inferred on `chop`'s windows back onto the stream.

    Args:
      windows: `[windows, window, ...]` array (latents, rates, decoded behaviour) in the
        order `chop` made the windows, or a `Posterior` of them (latents, rates and every
        extra with that leading layout are merged; others are dropped).
      num_bins: bins in the stream that was chopped.
      overlap: the `overlap` given to `chop` (the window length is read from `windows`).
      mode: "average" (mean over the windows covering a bin, computed in float64) or
        "centre" (the value from the window whose centre is nearest).

    Returns:
      `[1, num_bins, ...]`: an array, or a `Posterior` for a `Posterior`.

    Examples:
      >>> import numpy as np, latentjax as lj
      >>> windows = np.ones((3, 4, 2))                    # 3 windows of 4 bins, overlap 1
      >>> lj.data.merge(windows, num_bins=10, overlap=1, mode="centre").shape
      (1, 10, 2)
    """
    if mode not in _MODES:
        raise ValueError(f"merge: `mode` must be one of {_MODES}, got {mode!r}")
    latents = getattr(windows, "latents", None)
    if latents is None:
        values = np.asarray(windows)
        if values.ndim < 2:
            raise ValueError(f"merge: `windows` must be [windows, window, ...], got {values.shape}")
        return _merge_array("windows", values, num_bins, values.shape[1], overlap, mode)
    shape = np.shape(latents)[:2]

    def merged(name, value):
        return _merge_array(name, value, num_bins, shape[1], overlap, mode)

    extras = {
        name: merged(name, value)
        for name, value in windows.extras.items()
        if value is not None and np.shape(value)[:2] == shape
    }
    return dataclasses.replace(
        windows,
        latents=merged("latents", latents),
        rates=None if windows.rates is None else merged("rates", windows.rates),
        extras=extras,
    )
