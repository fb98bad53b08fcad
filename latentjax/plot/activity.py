"""Figures of neural activity: spike rasters with inferred rates, PSTHs by condition."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["psths", "raster"]


def raster(spikes, rates=None, *, dt=1.0, trial=0, neurons=None, max_neurons=20) -> Figure:
    """Spike counts of one trial as a raster, with inferred rates overlaid.

    Args:
      spikes: `[trials, time, neurons]` counts (or a `Trials`).
      rates: `[trials, time, neurons]` expected counts per bin, drawn as a trace per neuron.
      dt: seconds per bin (taken from `Trials` when given one).
      trial: which trial to draw.
      neurons: indices of the neurons to draw; default the `max_neurons` most active.
    """
    if hasattr(spikes, "spikes"):
        dt = spikes.dt
        spikes = spikes.spikes
    counts = np.asarray(spikes)[trial]
    if neurons is None:
        neurons = np.sort(np.argsort(counts.sum(0))[::-1][:max_neurons])
    neurons = np.asarray(neurons)
    time = np.arange(counts.shape[0]) * dt
    figure = Figure(figsize=(8, 0.25 * len(neurons) + 1.5), layout="constrained")
    axes = figure.add_subplot()
    for row, neuron in enumerate(neurons):
        spike_bins = np.nonzero(counts[:, neuron])[0]
        axes.vlines(time[spike_bins], row + 0.05, row + 0.45, color="black", linewidth=0.8)
        if rates is not None:
            trace = np.asarray(rates)[trial, :, neuron]
            scale = 0.45 / max(float(np.max(np.asarray(rates)[trial][:, neurons])), 1e-9)
            axes.plot(time, row + 0.5 + scale * trace, color="tab:red", linewidth=1.0)
    axes.set_yticks(np.arange(len(neurons)) + 0.5, [str(n) for n in neurons])
    axes.set_xlabel("time (s)")
    axes.set_ylabel("neuron")
    axes.set_ylim(0, len(neurons) + 0.1)
    title = f"trial {trial}: spikes (black)"
    axes.set_title(title + (" and inferred rates (red)" if rates is not None else ""))
    return figure


def psths(rates, conditions, *, spikes=None, dt=1.0, neurons=None, max_neurons=6) -> Figure:
    """Condition-averaged rates (solid) and, if given, observed PSTHs (dashed) per neuron.

    Args:
      rates: `[trials, time, neurons]` inferred rates (expected counts per bin).
      conditions: `[trials]` condition label of each trial.
      spikes: `[trials, time, neurons]` observed counts, averaged the same way.
      dt: seconds per bin; rates are shown in spikes per second.
      neurons: indices of the neurons to show (default the first `max_neurons`).
    """
    rates = np.asarray(rates)
    conditions = np.asarray(conditions)
    if conditions.shape != rates.shape[:1]:
        raise ValueError(
            f"psths: `conditions` must have shape [trials] = {rates.shape[:1]}, "
            f"got {conditions.shape}"
        )
    neurons = np.arange(min(max_neurons, rates.shape[2])) if neurons is None else neurons
    labels = np.unique(conditions)
    colours = [f"C{i % 10}" for i in range(len(labels))]
    time = np.arange(rates.shape[1]) * dt
    figure = Figure(figsize=(3 * len(neurons), 2.6), layout="constrained")
    for column, neuron in enumerate(neurons):
        axes = figure.add_subplot(1, len(neurons), column + 1)
        for colour, label in zip(colours, labels, strict=True):
            chosen = conditions == label
            axes.plot(time, rates[chosen, :, neuron].mean(0) / dt, color=colour)
            if spikes is not None:
                observed = np.asarray(spikes)[chosen, :, neuron].mean(0) / dt
                axes.plot(time, observed, color=colour, linestyle="--", alpha=0.6)
        axes.set_title(f"neuron {neuron}")
        axes.set_xlabel("time (s)")
        if column == 0:
            axes.set_ylabel("rate (spikes/s)")
    return figure
