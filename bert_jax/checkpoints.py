"""Training checkpoints with Orbax: save asynchronously, keep a few, resume exactly, reshard on restore.

A checkpoint is one step directory `<workdir>/checkpoints/<step>/` holding two items:

    state   the whole TrainState: parameters, optimizer state, step and RNG key (arrays, any sharding)
    data    JSON: the input phase and each process's data-iterator position

Saves are asynchronous (the device-to-host copy blocks, the file writing does not) and atomic: Orbax writes
into a temporary directory and renames it when complete, so a process killed mid-save (even kill -9) leaves
the previous checkpoints intact and the next run resumes from the last complete one. Restoring takes target
shardings, so a checkpoint written on one mesh restores onto any other (8 devices -> 1, or a new layout).

The directory may be a bucket URL (gs://bucket/run/checkpoints): Orbax writes there directly, and on an object
store it marks a finished checkpoint with a commit file instead of the rename.

Kept: the last `keep_last` checkpoints plus every step that is a multiple of `keep_every` (if set).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as policies

from bert_jax import paths


class Checkpointer:
    """The Orbax CheckpointManager, configured for training runs."""

    def __init__(self, directory: str, *, save_every: int, keep_last: int = 3, keep_every: int = 0,
                 async_save: bool = True):
        if save_every <= 0:
            raise ValueError(f"checkpoint save_every must be positive, got {save_every}")
        if keep_last <= 0:
            raise ValueError(f"checkpoint keep_last must be positive, got {keep_last}")
        preserve = [policies.LatestN(keep_last)]
        if keep_every:
            preserve.append(policies.EveryNSteps(keep_every))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.FixedIntervalPolicy(save_every),
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            enable_async_checkpointing=async_save,
            # A save that comes due while the previous one is still writing waits for it instead of being
            # skipped (Orbax's default skips it silently).
            enable_should_save_is_saving_in_progress_check=False,
            cleanup_tmp_directories=True,  # leftovers of a save that was killed midway
            create=True,
        )
        # A local directory is made absolute; a gs:// URL is passed on unchanged (Orbax writes it with TensorStore).
        self.directory = paths.absolute(directory)
        self._manager = ocp.CheckpointManager(paths.for_orbax(self.directory), options=options,
                                              item_names=("state", "data"))

    # -- queries -------------------------------------------------------------------------------------

    def latest_step(self) -> Optional[int]:
        """The last complete checkpoint's step (incomplete, killed saves are never listed)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self._manager.should_save(step)

    def reached_preemption(self, step: int) -> bool:
        """True on every process at the same step once any of them got a preemption notice (multi-host;
        a single process handles SIGTERM itself, see trainer._Signals)."""
        return jax.process_count() > 1 and self._manager.reached_preemption(step)

    # -- save / restore ------------------------------------------------------------------------------

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        """Starts saving (returns once the arrays are copied off the devices); False if not due."""
        saved = self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                 data=ocp.args.JsonSave(data_state)), force=force)
        if saved:
            logging.info("saving checkpoint for step %d in %s", step, self.directory)
        return saved

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state, data_state) of `step`, placed per the shardings in `abstract_state` (ShapeDtypeStructs)."""
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                       data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"]

    def wait(self) -> None:
        """Blocks until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
