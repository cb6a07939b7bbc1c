"""A run's workdir: one live run at a time, and a run that is refused changes nothing there.

`pretrain` and `finetune` call, in this order, before anything of the run is written into the workdir:

    prepare(workdir, config, ...)     create(): the directory exists and can be written (a probe file, removed);
                                      lock(): process 0 takes the workdir lock, or the run is refused at once;
                                      check_config(): the config against the workdir's config.json
    check_checkpoint_shapes(...)      the latest checkpoint's tensors against this config's train state
    write_config(workdir, config)     config.json, only once the run has been accepted (and restored)

and release the lock when the run ends, also on an exception or after SIGTERM (`releases_locks` wraps their
`train_and_evaluate`; an atexit hook releases whatever is left). A process killed outright (kill -9, a crash, a
SIGTERM before the training loop handles it) leaves its lock file behind, which the next run takes over (below).

The lock. `<workdir>/.lock` holds the holder's host, pid, start time, command and a heartbeat (JSON), so that a
refused run can name it:

  * A local workdir is locked with fcntl.flock on that file: the OS drops the lock when the holder dies, however
    it dies (kill -9, OOM), so a lock file left behind on this host is taken over at once, with a warning naming
    the process that left it. On a network file system the flock may not reach other hosts, so a lock file left
    by another host is taken over only once its heartbeat is older than STALE_SECONDS (the holder refreshes it
    every HEARTBEAT_SECONDS) or when BERT_JAX_TAKE_OVER_LOCK=1 says that the user checked it is gone.
  * A bucket workdir (gs://..., see bert_jax.paths) has no flock: the lock object itself is the lock. It is taken
    when absent; a lock object is taken over when its holder ran on this host and its pid is gone, when its
    heartbeat is older than STALE_SECONDS (a host we cannot look at), or with BERT_JAX_TAKE_OVER_LOCK=1. An object
    store has no create-if-absent here (tf.io.gfile), so after writing its record a run reads it back a moment
    later: of two runs starting together, only the one whose record stayed goes on.

Only process 0 of a multi-process run takes the lock; the others learn its outcome, so that all of them stop
together when it is refused.

The config check. The checkpoints of a workdir can only be resumed with the settings that fix the shapes of the
parameters and the structure of the optimizer state (the model size, the vocabulary, the task's labels, ...; each
command passes its list, `incompatible`). A config that differs from `<workdir>/config.json` in one of those is
refused with the differing keys (key: old -> new); other differences (more steps, another learning rate) are
allowed and printed. Whatever the list misses (a vocabulary file whose content changed) is caught by
check_checkpoint_shapes, which names the first differing tensors instead of Orbax's dump of the whole tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import reprlib
import shlex
import socket
import sys
import threading
import time
import uuid
from typing import Any, Mapping, Optional, Sequence

import jax
from absl import logging

from bert_jax import console, optim, paths

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0  # ten missed heartbeats: the holder is taken to be gone
TAKE_OVER_ENV = "BERT_JAX_TAKE_OVER_LOCK"
READ_BACK_SECONDS = 1.0  # bucket locks: how long a new record must stay ours before the run goes on
SHOWN = 5  # differing settings / tensors listed in an error


class WorkdirError(ValueError):
    """A run refused before it changed anything in its workdir (the CLI prints it as one error, no traceback)."""


# ----------------------------------------------------------------------------------------------------
# The directory
# ----------------------------------------------------------------------------------------------------


def create(workdir: str) -> str:
    """The absolute workdir (a bucket URL such as gs://bucket/run as given), created; a clear error if it cannot
    be written. Every process checks: each writes its shards of the checkpoints there. Takes no lock (also for
    readers of a workdir, e.g. pretrain.load_train_state)."""
    path = paths.absolute(workdir)
    probe = os.path.join(path, f".write_test_{uuid.uuid4().hex}")
    try:
        paths.makedirs(path)
        paths.write_text(probe, "ok")
        paths.remove(probe)
    except OSError as e:
        raise ValueError(f"workdir {path}: cannot be written ({e.strerror or e})") from None
    return path


def prepare(workdir: str, config, *, incompatible: Sequence[str], path_keys: Sequence[str] = (),
            defaults: Optional[Mapping] = None, what: str = "model") -> str:
    """create + lock (process 0; every process stops if it is refused) + check_config; returns the absolute
    workdir. Writes nothing into the workdir but the lock file."""
    path = create(workdir)
    refusal = None
    if jax.process_index() == 0:
        try:
            lock(path)
        except Exception as e:  # noqa: BLE001 - whatever stops process 0 must stop the others too (below)
            refusal = e
    if jax.process_count() > 1:  # the others must not wait in a collective for a process 0 that has stopped
        import numpy as np
        from jax.experimental import multihost_utils

        refused = int(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
        if refused and refusal is None:
            raise WorkdirError(f"workdir {path}: process 0 was refused the workdir lock (see its output)")
    if refusal is not None:
        raise refusal
    check_config(path, config, incompatible=incompatible, path_keys=path_keys, defaults=defaults, what=what)
    return path


def write_config(workdir: str, config, path_keys: Sequence[str] = ()) -> None:
    """<workdir>/config.json (process 0), once the run has been accepted. The `path_keys` (comma-separated
    paths) are written absolute, so that a command run from another directory (finetune from this workdir)
    finds the same files."""
    if jax.process_index() != 0:
        return
    written = config.copy_and_resolve_references()
    with written.unlocked():
        for key in path_keys:
            *parents, name = key.split(".")
            node = written
            for part in parents:
                node = node[part]
            if node[name]:
                node[name] = ",".join(paths.absolute(p.strip()) for p in node[name].split(","))
    paths.write_text(os.path.join(workdir, CONFIG_FILE), written.to_json(indent=2) + "\n")


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the complete checkpoints in <workdir>/checkpoints, newest first (Orbax writes a step into a
    temporary name and renames it when complete; in a bucket it adds a commit file instead)."""
    directory = os.path.join(workdir, CHECKPOINTS_DIR)
    if not paths.isdir(directory):
        return []
    steps = []
    for name in paths.listdir(directory):
        if not name.isdigit():
            continue
        if paths.is_remote(directory) and not paths.exists(os.path.join(directory, name, "commit_success.txt")):
            continue
        steps.append(int(name))
    return sorted(steps, reverse=True)


def another_workdir_command(workdir: str) -> str:
    """This command line with another workdir (the CLI sets sys.argv to 'python -m bert_jax <command>', flags)."""
    suggestion = f"{paths.absolute(workdir)}-2"
    argv = list(sys.argv)
    if not argv or not argv[0].startswith("python -m bert_jax"):
        return f"another workdir (e.g. {suggestion})"
    out, replaced, skip = [], False, False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--workdir", "-workdir"):
            skip, replaced = True, True
            out.append(f"--workdir={suggestion}")
        elif arg.startswith(("--workdir=", "-workdir=")):
            replaced = True
            out.append(f"--workdir={suggestion}")
        else:
            out.append(arg)
    if not replaced:
        out.append(f"--workdir={suggestion}")
    return f"another workdir: {argv[0]} {shlex.join(out)}"


# ----------------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Holder:
    """Who holds (or held) a workdir lock: the content of the lock file."""

    host: str
    pid: int
    started: float  # unix time
    heartbeat: float  # unix time of the holder's last sign of life
    token: str  # tells one run's record from another's (a pid may be reused)
    command: str = ""

    @classmethod
    def this_process(cls) -> "Holder":
        now = time.time()
        return cls(host=socket.gethostname(), pid=os.getpid(), started=now, heartbeat=now, token=uuid.uuid4().hex,
                   command=" ".join([*sys.argv[:1], shlex.join(sys.argv[1:])])[:300])

    @classmethod
    def parse(cls, text: str) -> Optional["Holder"]:
        """The record in a lock file; None for an empty or unreadable one (a holder writing it, or a torn file)."""
        try:
            record = json.loads(text)
            return cls(host=str(record["host"]), pid=int(record["pid"]), started=float(record["started"]),
                       heartbeat=float(record["heartbeat"]), token=str(record["token"]),
                       command=str(record.get("command", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        record = dataclasses.asdict(self)
        record["started_at"] = _when(self.started)  # for a person reading the file
        return json.dumps(record) + "\n"

    def describe(self) -> str:
        age = max(0.0, time.time() - self.heartbeat)
        return (f"pid {self.pid} on host {self.host}, running since {_when(self.started)}"
                + (f" ({self.command})" if self.command else "") + f", last heartbeat {age:.0f} s ago")

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def stale(self) -> bool:
        return time.time() - self.heartbeat > STALE_SECONDS


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(unix))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _override() -> bool:
    return os.environ.get(TAKE_OVER_ENV, "").strip().lower() in ("1", "true", "yes")


class WorkdirLock:
    """The lock of one workdir, held by this process from acquire() to release() (see the module docstring)."""

    def __init__(self, workdir: str):
        self.workdir = paths.absolute(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self.holder = Holder.this_process()
        self._fd: Optional[int] = None  # the flocked file (local workdirs)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- taking it -----------------------------------------------------------------------------------

    def acquire(self) -> "WorkdirLock":
        if paths.is_remote(self.path) or not self._acquire_flock():
            self._acquire_record()
        self._thread = threading.Thread(target=self._beat, name=f"workdir-lock-heartbeat {self.workdir}", daemon=True)
        self._thread.start()
        return self

    def _acquire_flock(self) -> bool:
        """Takes the flock and writes our record; False where the file system has no flock (then the record alone
        is the lock)."""
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refusal(self._read()) from None
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    logging.warning("%s: no flock on this file system (%s); using the lock file's record alone",
                                    self.path, e.strerror)
                    return False
                raise
            # A holder releasing unlinks the file while it still holds the flock: if that happened between our open
            # and our flock, we hold the lock of a deleted file; try again on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = Holder.parse(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
        # The flock is ours, so no process on this host holds the lock; one on another host might, where the
        # network file system does not pass flocks between hosts: only its heartbeat can tell.
        if left is not None and not left.on_this_host() and not left.stale() and not _override():
            os.close(fd)
            raise self._refusal(left)
        if left is not None:
            self._warn_take_over(left)
        self._fd = fd
        self._write_local()
        return True

    def _acquire_record(self) -> None:
        left = self._read() if paths.exists(self.path) else None
        if left is not None and not self._may_take_over(left):
            raise self._refusal(left)
        if left is not None:
            self._warn_take_over(left)
        paths.write_text(self.path, self.holder.to_json())
        time.sleep(READ_BACK_SECONDS)  # a run that started with us has written its record by now
        now = self._read()
        if now is None or now.token != self.holder.token:
            raise self._refusal(now)

    @staticmethod
    def _may_take_over(left: Holder) -> bool:
        if left.on_this_host() and not pid_alive(left.pid):
            return True
        return left.stale() or _override()

    def _read(self) -> Optional[Holder]:
        try:
            return Holder.parse(paths.read_text(self.path))
        except OSError:  # released meanwhile
            return None

    def _refusal(self, holder: Optional[Holder]) -> WorkdirError:
        who = holder.describe() if holder is not None else "a process that has not written its details yet"
        return WorkdirError(
            f"workdir {self.workdir} is in use by another run: {who} (lock file {self.path}). Two runs in one "
            f"workdir would write the same checkpoints, metrics and model. Wait for that run to end (or stop it), "
            f"or run this one in {another_workdir_command(self.workdir)}. A lock whose holder is gone is taken "
            f"over by the next run: at once on the holder's host, from another host once its heartbeat is "
            f"{STALE_SECONDS:.0f} s old, or at once with {TAKE_OVER_ENV}=1 if you know the holder has stopped.")

    def _warn_take_over(self, left: Holder) -> None:
        if left.on_this_host() and not pid_alive(left.pid):
            why = "that process is no longer running"
        elif left.on_this_host():
            why = "it no longer holds the lock (its pid now belongs to another process)"
        elif left.stale():
            why = f"its heartbeat is older than {STALE_SECONDS:.0f} s"
        else:
            why = f"{TAKE_OVER_ENV} is set"
        message = f"workdir {self.workdir}: taking over the lock left by {left.describe()}: {why}"
        logging.warning(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)

    # -- holding it ----------------------------------------------------------------------------------

    def _write_local(self) -> None:
        data = self.holder.to_json().encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.holder.heartbeat = time.time()
            try:
                if self._fd is not None:
                    self._write_local()
                    continue
                now = self._read()
                if now is not None and now.token != self.holder.token:
                    logging.error("workdir %s: the lock was taken over by %s; this run no longer holds it",
                                  self.workdir, now.describe())
                    return
                paths.write_text(self.path, self.holder.to_json())
            except OSError as e:  # a full disk or a bucket hiccup: try again at the next beat
                logging.warning("workdir %s: cannot refresh the lock's heartbeat (%s)", self.workdir, e)

    # -- giving it back ------------------------------------------------------------------------------

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._fd is not None:
            # Unlinked while the flock is still held (see _acquire_flock's inode check), so no lock file is left.
            with contextlib.suppress(OSError):
                if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                    os.unlink(self.path)
            os.close(self._fd)
            self._fd = None
            return
        with contextlib.suppress(OSError):
            now = self._read()
            if now is not None and now.token == self.holder.token:
                paths.remove(self.path)


_HELD: dict[str, WorkdirLock] = {}


def lock(workdir: str) -> WorkdirLock:
    """Takes the workdir's lock for this process, or raises WorkdirError naming the holder. A lock this process
    holds already is returned as it is (a notebook that runs twice in one workdir; finetune.prepare before
    train_and_evaluate)."""
    path = paths.absolute(workdir)
    if path not in _HELD:
        if not _HELD:
            import atexit

            atexit.register(release_all)
        _HELD[path] = WorkdirLock(path).acquire()
    return _HELD[path]


def release(workdir: str) -> None:
    """Gives back this process's lock of `workdir` (nothing if it holds none)."""
    held = _HELD.pop(paths.absolute(workdir), None)
    if held is not None:
        held.release()


def release_all() -> None:
    for path in list(_HELD):
        release(path)


def releases_locks(function):
    """Decorates a run (train_and_evaluate): every workdir lock taken during the call is released when it returns
    or raises (SIGTERM stops the training loop with a save and a return or SystemExit, so it is released too)."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        before = set(_HELD)
        try:
            return function(*args, **kwargs)
        finally:
            for path in set(_HELD) - before:
                release(path)

    return run


# ----------------------------------------------------------------------------------------------------
# The config against config.json
# ----------------------------------------------------------------------------------------------------


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{'model.size': 'tiny', ...}: nested dicts as dotted keys; lists (phases) stay values."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def compare_configs(old: Mapping, new: Mapping, *, incompatible: Sequence[str], path_keys: Sequence[str] = (),
                    defaults: Optional[Mapping] = None) -> tuple[list[str], list[str]]:
    """(blocking, harmless): 'key: old -> new' for each differing setting, split by whether the checkpoints
    depend on it. `old`, `new` and `defaults` are nested dicts as in config.json; a key missing from `old` (an
    older config.json) takes its default; a key of `old` this command does not know is blocking (the workdir of
    another command). Paths in `path_keys` compare by their absolute form."""
    old = flatten(json.loads(json.dumps(old)))
    new = flatten(json.loads(json.dumps(new)))  # tuples -> lists, as config.json has them
    defaults = flatten(json.loads(json.dumps(defaults or {})))
    absent = object()
    blocking, harmless = [], []
    for key in list(new) + [k for k in old if k not in new]:
        before, after = old.get(key, defaults.get(key, absent)), new.get(key, absent)
        if before == after or (key in path_keys and before and after and
                               paths.absolute(before) == paths.absolute(after)):
            continue
        line = f"{key}: {_short(before, absent, '(not set)')} -> {_short(after, absent, '(no such key here)')}"
        (blocking if key in incompatible or after is absent else harmless).append(line)
    return blocking, harmless


def _short(value, absent, instead: str) -> str:
    return instead if value is absent else reprlib.repr(value)


def _listed(lines: Sequence[str]) -> str:
    shown = "\n".join(f"  {line}" for line in lines[:SHOWN])
    return shown + (f"\n  ... and {len(lines) - SHOWN} more" if len(lines) > SHOWN else "")


def check_config(workdir: str, config, *, incompatible: Sequence[str], path_keys: Sequence[str] = (),
                 defaults: Optional[Mapping] = None, what: str = "model") -> None:
    """Refuses a config that differs from <workdir>/config.json in a setting the workdir's checkpoints depend on
    (WorkdirError, a few lines); prints the other differences. No checkpoints: nothing to protect, no check."""
    config_file = os.path.join(workdir, CONFIG_FILE)
    steps = checkpoint_steps(workdir)
    if not steps or not paths.exists(config_file):
        return
    try:
        old = json.loads(paths.read_text(config_file))
    except ValueError as e:
        raise WorkdirError(f"{config_file}: not valid JSON ({e}); it describes the checkpoints in {workdir}: "
                           f"restore it, or use {another_workdir_command(workdir)}") from None
    blocking, harmless = compare_configs(old, config.to_dict(), incompatible=incompatible, path_keys=path_keys,
                                         defaults=defaults)
    if blocking:
        raise WorkdirError(
            f"workdir {workdir}: cannot restore onto this config's {what}: its checkpoints (latest step {steps[0]}) "
            f"were written with other settings ({config_file}):\n{_listed(blocking)}\n"
            f"Resume with the settings of {config_file}, or start this config in {another_workdir_command(workdir)}")
    if harmless:
        console.announce(f"resuming {workdir} with settings changed from its {CONFIG_FILE}:\n{_listed(harmless)}")


# ----------------------------------------------------------------------------------------------------
# The checkpoint against this config's train state
# ----------------------------------------------------------------------------------------------------


def checkpoint_shapes(checkpoint_dir: str, step: int) -> dict[str, tuple]:
    """{'params/bert/...': shape} of a checkpoint's state item, from its metadata (no array is read)."""
    import orbax.checkpoint as ocp
    from etils import epath

    # The item's handler reads its tree metadata alone (a Checkpointer would also look for step metadata there).
    metadata = ocp.StandardCheckpointHandler().metadata(
        epath.Path(paths.for_orbax(os.path.join(checkpoint_dir, str(step), "state"))))
    tree = getattr(metadata, "tree", metadata)
    return {optim.path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def check_checkpoint_shapes(workdir: str, abstract_state: Any, *, what: str = "model") -> None:
    """Refuses a workdir whose latest checkpoint holds other tensors than this config's train state (ShapeDtype
    structs): the first few differing tensors with both shapes, and how many differ. A checkpoint whose metadata
    cannot be read is left to the restore (which reports damage and falls back)."""
    checkpoint_dir = os.path.join(workdir, CHECKPOINTS_DIR)
    for step in checkpoint_steps(workdir):
        try:
            have = checkpoint_shapes(checkpoint_dir, step)
        except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many kinds; the restore reports them
            logging.warning("%s/%d: cannot read the checkpoint's metadata (%s)", checkpoint_dir, step, e)
            continue
        want = {optim.path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
        wrong = [f"{k}: checkpoint {have[k]}, this config {want[k]}" for k in want if k in have and have[k] != want[k]]
        wrong += [f"{k}: not in the checkpoint (this config {want[k]})" for k in want if k not in have]
        wrong += [f"{k}: only in the checkpoint {have[k]}" for k in have if k not in want]
        if wrong:
            raise WorkdirError(
                f"{checkpoint_dir}/{step}: cannot restore onto this config's {what}: {len(wrong)} of "
                f"{len(set(want) | set(have))} tensors differ:\n{_listed(wrong)}\n"
                f"The checkpoint was written with the settings of {os.path.join(workdir, CONFIG_FILE)} (and its "
                f"vocabulary); resume with those, or start this config in {another_workdir_command(workdir)}")
        return
