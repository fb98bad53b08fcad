"""Checkpoints of the whole training state with orbax, in `RUN_DIR/checkpoints/STEP`.

What one checkpoint holds: the loop state of every member (parameters, optimiser or EM
state, step, PRNG key, the epoch's data order, schedule position, best parameters for early
stopping, non-finite counters), the knobs (which population-based training changes), and
a JSON record with the config hash and the step.

Atomicity is orbax's: a checkpoint is written into a temporary directory
(`STEP.orbax-checkpoint-tmp-*`) and renamed once complete, so a process killed mid-write
leaves only a temporary directory that `latest_step` ignores; the previous checkpoint stays
the latest readable one. A committed checkpoint that no longer reads back (a disk fault, a
file cut short or overwritten) is skipped by `latest_step` with a warning, in favour of the
previous intact one; the next save of that step moves it aside to `STEP.unreadable`.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpoints"]


def _nonempty_leaves(tree: Any) -> dict[str, Any]:
    """The leaves of `tree` that hold data, keyed by their flat index: orbax cannot store
    zero-size arrays (e.g. the input weights of a model fitted without inputs)."""
    return {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(tree)) if np.prod(np.shape(leaf))}


class Checkpoints:
    """Save and restore training states in `directory` (created on first save)."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        """Step of the latest complete checkpoint that reads back whole, or None. Newer
        ones that do not are skipped with a warning (this reads each checkpoint it checks)."""
        self._manager.reload()
        for step in sorted(self._manager.all_steps(), reverse=True):
            problem = self._unreadable(step)
            if problem is None:
                return step
            warnings.warn(
                f"checkpoint {os.path.join(self.directory, str(step))} cannot be read "
                f"({problem}); falling back to the previous checkpoint",
                stacklevel=2,
            )
        return None

    def _unreadable(self, step: int) -> str | None:
        """Why the checkpoint at `step` cannot be read back (its first error line), or None."""
        reader = ocp.CheckpointManager(
            self.directory,
            item_handlers={
                "state": ocp.PyTreeCheckpointHandler(),
                "record": ocp.JsonCheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(read_only=True),
        )
        try:
            names = reader.item_metadata(step)["state"].keys()
            as_numpy = {name: ocp.RestoreArgs(restore_type=np.ndarray) for name in names}
            reader.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(restore_args=as_numpy),
                    record=ocp.args.JsonRestore(),
                ),
            )
        except Exception as error:  # orbax, tensorstore and json raise many kinds
            lines = str(error).strip().splitlines() or [type(error).__name__]
            return lines[0][:200]
        finally:
            reader.close()
        return None

    def save(self, step: int, state: Any, record: dict) -> None:
        """Start writing `state` (a pytree of arrays) and `record` (JSON) at `step`.

        The write finishes in the background; `wait` blocks until it is committed. An
        unreadable checkpoint already at `step` (see `latest_step`) is moved aside first.
        """
        if step in self._manager.all_steps() and jax.process_index() == 0:
            unreadable = os.path.join(self.directory, str(step))
            shutil.rmtree(unreadable + ".unreadable", ignore_errors=True)
            os.replace(unreadable, unreadable + ".unreadable")
            self._manager.reload()
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_nonempty_leaves(state)),
                record=ocp.args.JsonSave(record),
            ),
            force=True,
        )

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """The state saved at `step`, with the structure, dtypes and shardings of `like`
        (concrete arrays or `jax.ShapeDtypeStruct`s), and its JSON record."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_nonempty_leaves(abstract)),
                record=ocp.args.JsonRestore(),
            ),
        )
        leaves, treedef = jax.tree.flatten(abstract)
        leaves = [
            restored.state.get(str(i), None)
            if np.prod(leaf.shape)
            else np.zeros(leaf.shape, leaf.dtype)
            for i, leaf in enumerate(leaves)
        ]
        return jax.tree.unflatten(treedef, leaves), restored.record

    def record(self, step: int) -> dict:
        """The JSON record saved at `step` (no arrays are read)."""
        restored = self._manager.restore(
            step, args=ocp.args.Composite(record=ocp.args.JsonRestore())
        )
        return restored.record

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
