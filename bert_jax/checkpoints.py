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

Faults:
  * A checkpoint that cannot be read (a truncated or missing file, unreadable metadata) is damage:
    `restore_latest` reports it with its reason, moves it aside to `<directory>/damaged/<step>-<UTC time>` (kept,
    not deleted; Orbax no longer lists it) and resumes from the newest older one that restores.
  * A checkpoint that reads fine but holds other tensors than the target (another model size or optimizer) is
    not damage: CheckpointMismatchError (a ValueError naming the first differing tensors), nothing is moved.
    Both make Orbax raise ValueError, so they are told apart by the checkpoint's metadata: readable and
    different from the target is a mismatch; unreadable, or the same as the target, is damage. Errors that say
    nothing about the files (a network outage, permission denied, out of memory) are raised unchanged.
  * A failed save (disk full, permission denied) raises CheckpointSaveError naming the directory, the step and
    the OS error, in one line; the earlier checkpoints stay intact. An asynchronous save's failure is raised by
    the next `save`, `wait` or `check` (the trainer calls `check` after every step).
"""

from __future__ import annotations

import errno
import logging as py_logging
import os
import re
import time
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from bert_jax import optim, paths

DAMAGED_DIR = "damaged"  # <directory>/damaged/<step>-<time>: checkpoints that failed to restore, kept aside


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose tensors are not those of the target state (another model or optimizer)."""


class DamagedCheckpointError(ValueError):
    """A checkpoint that cannot be read: a truncated or missing file, unreadable metadata."""


class CheckpointSaveError(OSError):
    """A save failed (disk full, permission denied, ...): the run must stop; `errno` is set when known."""


# TensorStore status codes that say nothing about the checkpoint's files: the restore is not damage.
_NOT_DAMAGE_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED", "UNAUTHENTICATED",
                     "RESOURCE_EXHAUSTED", "CANCELLED", "ABORTED")


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
        self._async = async_save
        self._saving: Optional[int] = None  # the step of an asynchronous save not yet known to have finished
        self._failed = False  # a save failure was raised: close() does not raise it again
        self.set_aside: list[str] = []  # the damaged checkpoints restore_latest moved aside, with the reasons
        _quiet_orbax_errors()

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

    # -- save ----------------------------------------------------------------------------------------

    def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
        """Starts saving (returns once the arrays are copied off the devices); False if not due.

        CheckpointSaveError if this save fails, or the previous asynchronous one did (reported as that step's).
        """
        if not force and not self._manager.should_save(step):
            return False
        self.wait()
        try:
            saved = self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                     data=ocp.args.JsonSave(data_state)),
                                       force=force)
        except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many kinds for one failed write
            raise self._save_error(step, e) from e
        if saved:
            self._saving = step if self._async else None
            logging.info("saving checkpoint for step %d in %s", step, self.directory)
        return saved

    def wait(self) -> None:
        """Blocks until every started save is on disk; CheckpointSaveError if one failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(self._saving, e) from e
        finally:
            self._saving = None

    def check(self) -> None:
        """Raises CheckpointSaveError once an asynchronous save has failed, without waiting for one that is still
        writing (cheap: the trainer calls it after every step). One process only: several would each notice at
        a different step, so they learn it together at the next save or wait, which they all reach at one step."""
        if self._saving is not None and jax.process_count() == 1 and not self._manager.is_saving_in_progress():
            self.wait()

    def _save_error(self, step: Optional[int], error: Exception) -> CheckpointSaveError:
        """One line: the directory, the step, the OS error (ENOSPC, EACCES, ...) and what is left intact."""
        self._failed = True
        code = _os_error_code(error)
        reason = f"{os.strerror(code)} ({errno.errorcode.get(code, code)})" if code else _first_line(error)
        intact = self.all_steps()  # Orbax drops the failed step from its list
        kept = (f"the checkpoints of steps {', '.join(map(str, intact))} are intact" if intact
                else "there is no earlier checkpoint")
        failure = CheckpointSaveError(
            f"{self.directory}: saving the checkpoint of {'a step' if step is None else f'step {step}'} failed: "
            f"{reason}; the run is stopped, {kept}")
        failure.errno = code
        return failure

    # -- restore -------------------------------------------------------------------------------------

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state, data_state) of `step`, placed per the shardings in `abstract_state` (ShapeDtypeStructs).

        CheckpointMismatchError if the checkpoint holds other tensors than `abstract_state`,
        DamagedCheckpointError if it cannot be read; errors that are not about its files as they are.
        """
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - sorted out by _restore_failure
            failure = self._restore_failure(step, abstract_state, e)
            if failure is e:
                raise
            raise failure from e
        return restored["state"], restored["data"]

    def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any, dict]]:
        """(step, state, data_state) of the newest checkpoint that restores; None if there is no checkpoint.

        A damaged checkpoint is reported (a warning, and its line in `set_aside`), moved aside to
        <directory>/damaged/<step>-<UTC time> and the next older one tried; DamagedCheckpointError if none
        restores. CheckpointMismatchError, and errors that are not about the files, are raised with nothing moved.
        With several processes they agree on each checkpoint: damaged if it cannot be read on any of them.
        """
        steps = self.all_steps()
        for step in reversed(steps):
            outcome, error = 0, None
            try:
                state, data = self.restore(step, abstract_state)
            except DamagedCheckpointError as e:
                outcome, error = 1, e
            except Exception as e:  # noqa: BLE001 - raised below, once the other processes know
                outcome, error = 2, e
            worst = _worst_of_all_processes(outcome)
            if worst == 2:
                if outcome == 2:
                    raise error
                raise RuntimeError(f"{self.directory}/{step}: the restore failed on another process (see its log)")
            if worst == 0:
                return step, state, data
            self._set_aside(step, error or DamagedCheckpointError(
                f"{self.directory}/{step}: cannot be read on another process (see its log)"))
        if steps:
            raise DamagedCheckpointError(
                f"{self.directory}: none of the checkpoints restores (steps {', '.join(map(str, steps))}, all moved "
                f"aside to {os.path.join(self.directory, DAMAGED_DIR)}): {' | '.join(self.set_aside)}. Run again to "
                f"start from the beginning, or move one of them back once it is repaired")
        return None

    def stored_shapes(self, step: int) -> dict[str, tuple]:
        """{'params/bert/...': shape} of a checkpoint's state, from its metadata (no array is read)."""
        handler = ocp.StandardCheckpointHandler()
        try:
            metadata = handler.metadata(epath.Path(paths.for_orbax(os.path.join(self.directory, str(step)))) / "state")
        finally:
            handler.close()
        return _shapes(getattr(metadata, "tree", metadata))

    def _restore_failure(self, step: int, abstract_state: Any, error: Exception) -> Exception:
        """What a failed restore means. Orbax raises ValueError both for a checkpoint that does not fit the target
        and for an unreadable file, so the metadata decides: readable and different from the target is a
        mismatch; unreadable, or the same as the target, is damage. `error` itself if it is not about the files."""
        if _not_about_the_files(error):
            return error
        where = f"{self.directory}/{step}"
        try:
            stored = self.stored_shapes(step)
        except Exception:  # noqa: BLE001 - the metadata is as unreadable as the rest
            return DamagedCheckpointError(f"{where}: cannot be read ({_first_line(error)})")
        differences = _shape_differences(stored, _shapes(abstract_state))
        if differences:
            return CheckpointMismatchError(f"{where} holds other tensors than this config's: {differences}")
        return DamagedCheckpointError(f"{where}: cannot be read ({_first_line(error)})")

    def _set_aside(self, step: int, error: Exception) -> None:
        """Moves a damaged checkpoint into DAMAGED_DIR (process 0; the others wait for it) and reports it."""
        source = os.path.join(self.directory, str(step))
        target = os.path.join(self.directory, DAMAGED_DIR, f"{step}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        if jax.process_index() == 0 and paths.exists(source):
            paths.move_dir(source, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"bert_jax: checkpoint {step} set aside")
        self._manager.reload()  # Orbax lists the steps it found when it started
        message = f"{error}; moved aside to {target} (kept, not deleted)"
        self.set_aside.append(message)
        logging.warning("%s", message)

    def close(self) -> None:
        """Waits for the last save and stops Orbax's threads; a save failure not raised before is raised here."""
        try:
            self._manager.close()
        except Exception as e:  # noqa: BLE001
            if self._failed:  # already raised to the caller once
                logging.info("closing %s after a failed save: %s", self.directory, e)
                return
            raise self._save_error(self._saving, e) from e

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------------------------
# Helpers for the errors above
# ----------------------------------------------------------------------------------------------------


def _shapes(tree: Any) -> dict[str, tuple]:
    """{'params/bert/...': shape} of a tree of arrays, ShapeDtypeStructs or Orbax array metadata."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {optim.path_name(path): tuple(getattr(x, "shape", ())) for path, x in leaves}


def _shape_differences(stored: dict, wanted: dict) -> str:
    """A few words on how two {name: shape} differ ('' if they do not), with one example of each kind."""
    wrong = [k for k in wanted if k in stored and stored[k] != wanted[k]]
    missing = [k for k in wanted if k not in stored]
    extra = [k for k in stored if k not in wanted]
    parts = []
    if wrong:
        parts.append(f"{len(wrong)} tensors differ in shape, e.g. {wrong[0]}: {stored[wrong[0]]} in the checkpoint, "
                     f"{wanted[wrong[0]]} in this config")
    if missing:
        parts.append(f"{len(missing)} tensors of this config are not in the checkpoint, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} tensors of the checkpoint are not in this config, e.g. {extra[0]}")
    return "; ".join(parts)


def _not_about_the_files(error: Exception) -> bool:
    """An outage, a refused access or a lack of memory: retrying later may work, the files may be fine."""
    if isinstance(error, (PermissionError, ConnectionError, TimeoutError, MemoryError)):
        return True
    return str(error).lstrip().startswith(_NOT_DAMAGE_CODES)


def _os_error_code(error: BaseException) -> Optional[int]:
    """The errno behind a failure: an OSError's, or the one TensorStore puts in its message (os_error_code=28)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno:
            return error.errno
        match = re.search(r"os_error_code='?(\d+)", str(error))
        if match:
            return int(match.group(1))
        error = error.__cause__ or error.__context__
    return None


def _first_line(error: BaseException, limit: int = 300) -> str:
    """The gist of an Orbax/TensorStore error: its first line, without the TensorStore spec dumped after it."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.split(r" \[(tensorstore_spec|source locations)", text, maxsplit=1)[0]
    return text if len(text) <= limit else text[:limit] + "..."


def _worst_of_all_processes(outcome: int) -> int:
    """The largest `outcome` of all processes (this one's alone for a single process)."""
    if jax.process_count() == 1:
        return outcome
    return int(np.max(multihost_utils.process_allgather(np.array([outcome], np.int32))))


class _OrbaxErrorsRaisedInstead(py_logging.Filter):
    """Drops Orbax's ERROR log records unless the verbosity asks for INFO (--verbosity=0): each of its failing
    write threads logs the failure with a traceback (hundreds of lines for one full disk) before the failure
    reaches the Checkpointer, which raises it as one CheckpointSaveError / DamagedCheckpointError line."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        if record.levelno < py_logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        return logging.get_verbosity() >= logging.INFO


_ORBAX_ERRORS_FILTER = _OrbaxErrorsRaisedInstead()


def _quiet_orbax_errors() -> None:
    """Installs the filter on absl's logger, which Orbax logs through (once per process)."""
    absl_logger = py_logging.getLogger("absl")
    if _ORBAX_ERRORS_FILTER not in absl_logger.filters:
        absl_logger.addFilter(_ORBAX_ERRORS_FILTER)
