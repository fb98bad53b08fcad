"""Placing a population on devices: the leading population axis sharded over a device mesh.

With one device the population is a plain vmapped axis. With several (GPUs, TPU cores, or
virtual CPU devices from `XLA_FLAGS=--xla_force_host_platform_device_count=4`), every
population leaf is sharded over a 1-D `jax.sharding.Mesh` with axis name `"population"`
and the data are replicated; the population is padded with copies of its last member up to a
multiple of the device count, and the padding is dropped from the results.

Multi-host: start every process with the same script and call
`jax.distributed.initialize()` before anything else touches JAX; `jax.devices()` then lists
the devices of all hosts, every process builds the same (seeded) population on the host, and
`jax.make_array_from_callback` gives each process only its own shards. Results are gathered
with `multihost_utils.process_allgather`; only process 0 writes the run folder, and orbax
writes checkpoints collectively.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["Population"]


class Population:
    """A population of `size` members laid out over `devices` (default: all devices)."""

    def __init__(self, size: int, devices: Sequence[Any] | None = None):
        devices = list(jax.devices() if devices is None else devices)
        if not devices:
            raise ValueError("devices: give at least one device")
        self.size = size
        self.devices = devices
        self.padded_size = -(-size // len(devices)) * len(devices)
        self.mesh = Mesh(np.array(devices), ("population",))
        self._member_sharding = NamedSharding(self.mesh, PartitionSpec("population"))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())

    def _pad(self, array: np.ndarray) -> np.ndarray:
        extra = self.padded_size - self.size
        if extra == 0:
            return array
        return np.concatenate([array, np.repeat(array[-1:], extra, axis=0)], axis=0)

    def shard(self, tree: Any) -> Any:
        """Host arrays with a leading `[members]` axis -> global arrays sharded over members."""

        def place(leaf):
            leaf = self._pad(np.asarray(leaf))
            return jax.make_array_from_callback(
                leaf.shape, self._member_sharding, lambda index: leaf[index]
            )

        return jax.tree.map(place, tree)

    def replicate(self, tree: Any) -> Any:
        """Host arrays (the data) -> global arrays replicated on every device."""

        def place(leaf):
            leaf = np.asarray(leaf)
            return jax.make_array_from_callback(
                leaf.shape, self._replicated, lambda index: leaf[index]
            )

        return jax.tree.map(place, tree)

    def to_host(self, tree: Any) -> Any:
        """Global population arrays -> NumPy arrays of the `size` real members."""

        def fetch(leaf):
            if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
                leaf = multihost_utils.process_allgather(leaf, tiled=True)
            return np.asarray(leaf)[: self.size]

        return jax.tree.map(fetch, tree)
