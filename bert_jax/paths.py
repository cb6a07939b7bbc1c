"""Files of a run's workdir, on a local disk or in a bucket (`gs://bucket/run`, `s3://...`): one small API for both.

A TPU pod run keeps its workdir in a bucket, because every host writes its shards of each checkpoint into the same
directory. Everything the trainers write or read back there other than the Orbax arrays (config.json,
metrics.jsonl, the exported model's small files, predictions, best.json) goes through this module:

    is_remote(path)                   a URL with a scheme ('gs://b/run'), not a local path
    absolute(path)                    abspath for a local path; a URL unchanged (abspath('gs://b') is './gs:/b')
    for_orbax(path)                   the directory as Orbax takes it (absolute; a URL unchanged: TensorStore reads it)
    exists, isdir, listdir, makedirs, remove, rmtree, copy, put (move a local file there)
    move_dir(source, target)          move a directory (a rename; copy + delete on an object store)
    open(path, mode)                  text or binary, 'r' / 'w' / 'a' (+ 'b')
    read_text, write_text             whole files, errors as OSError naming the path
    read_json, write_json             the same for JSON (invalid JSON: a ValueError naming the path)
    publish_dir(staging, dir, last)   replace `dir` by a finished `staging` directory
    download_dir(url) -> local dir    small files (a vocabulary) for code that reads local files only
    upload_dir(local, url)
    local_mirror(url, name)           a per-URL local directory (the built-in corpus of a run in a bucket)
    written_locally(dir)              a local directory to write into, uploaded to `dir` at the end

Local paths use `os` and the builtin `open`, exactly as before, and never import TensorFlow. URLs use
`tf.io.gfile`, chosen over `etils.epath` because it is the file layer the TensorBoard event writer (tf.summary)
already uses for the same workdir, so both see one set of file systems; it understands gs:// out of the box, s3://
(and hdfs://) once a plugin such as tensorflow-io registers them, and has an in-memory `ram://` file system that
tests run against. Orbax does not go through here: it opens the URL itself (TensorStore for the arrays, epath for
its metadata), so it is given the URL unchanged.

Object stores differ from a disk in two ways that matter here: there is no atomic rename (see publish_dir), and an
object cannot be appended to, so a file opened with 'a' is rewritten whole at every flush (fine for metrics.jsonl,
which is flushed once per logged step).
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Iterator

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path) -> bool:
    """True for a URL such as gs://bucket/dir, s3://bucket/dir or ram://dir; False for a local path."""
    return bool(_SCHEME.match(os.fspath(path)))


def absolute(path) -> str:
    """The absolute form of a local path (~ expanded); a URL as given, without a trailing '/'."""
    path = os.fspath(path)
    if is_remote(path):
        return path.rstrip("/") if not path.endswith("://") else path
    return os.path.abspath(os.path.expanduser(path))


def for_orbax(path) -> str:
    """The directory to hand to Orbax: absolute if local, else the URL itself (Orbax opens gs:// with TensorStore)."""
    return absolute(path)


# ----------------------------------------------------------------------------------------------------
# tf.io.gfile, for URLs only
# ----------------------------------------------------------------------------------------------------


def _gfile():
    """tf.io.gfile (TensorFlow is imported the first time a URL is used)."""
    import tensorflow as tf

    try:  # TensorFlow must not take accelerator memory from JAX (as in train_metrics.MetricsWriter)
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised: nothing to change any more
        pass
    return tf.io.gfile


@contextlib.contextmanager
def _os_errors(path) -> Iterator[None]:
    """TensorFlow's errors as the OSError subclasses callers already catch for local files."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        import tensorflow as tf

        if isinstance(e, tf.errors.NotFoundError):
            raise FileNotFoundError(f"{path}: not found ({e.message})") from None
        if isinstance(e, tf.errors.OpError):
            raise OSError(f"{path}: {e.message}") from None
        raise


# ----------------------------------------------------------------------------------------------------
# The operations
# ----------------------------------------------------------------------------------------------------


def _either(path, local, remote: str):
    """`local(path)` for a local path; tf.io.gfile's function named `remote` for a URL, its errors as OSError."""
    path = os.fspath(path)
    if not is_remote(path):
        return local(path)
    with _os_errors(path):
        return getattr(_gfile(), remote)(path)


def exists(path) -> bool:
    return _either(path, os.path.exists, "exists")


def isdir(path) -> bool:
    return _either(path, os.path.isdir, "isdir")


def listdir(path) -> list[str]:
    """The names in a directory (sorted; without the trailing '/' some object stores give directories)."""
    return sorted(name.rstrip("/") for name in _either(path, os.listdir, "listdir"))


def makedirs(path) -> None:
    """Creates a directory and its parents; fine if it exists. (A bucket has no directories: this is cheap.)"""
    _either(path, lambda p: os.makedirs(p, exist_ok=True), "makedirs")


def remove(path) -> None:
    _either(path, os.remove, "remove")


def rmtree(path) -> None:
    """Deletes a directory and everything in it."""
    _either(path, shutil.rmtree, "rmtree")


def copy(source, target) -> None:
    """Copies one file, replacing `target`; either side may be local or a URL (a download or an upload)."""
    source, target = os.fspath(source), os.fspath(target)
    if not is_remote(source) and not is_remote(target):
        shutil.copyfile(source, target)
        return
    _clear(target)
    with _os_errors(f"{source} -> {target}"):
        _gfile().copy(source, target, overwrite=True)


def put(local_file: str, target) -> None:
    """Moves a local file to `target`: a rename on the local disk, an upload (a copy) for a URL."""
    if is_remote(target):
        copy(local_file, target)
    else:
        os.replace(local_file, target)


def move_dir(source, target) -> None:
    """Moves the directory `source` to `target` (which must not exist; its parent is created). A rename on the local
    disk; an object store has no rename, so there every file is copied, then `source` deleted: a move cut short
    leaves `source` whole."""
    source, target = absolute(source), absolute(target)
    if not is_remote(source) and not is_remote(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(source, target)
        return
    upload_dir(source, target)  # file by file; either side may be a URL
    rmtree(source)


def open(path, mode: str = "r"):  # noqa: A001 - the module's open, as in `paths.open`
    """A file object; text modes read and write UTF-8. A URL's errors may surface at read/write/close as
    TensorFlow errors: use read_text / write_text where a clear OSError matters."""
    path = os.fspath(path)
    if mode not in ("r", "w", "a", "rb", "wb", "ab"):
        raise ValueError(f"paths.open: mode {mode!r} is not one of r, w, a (+b)")
    if not is_remote(path):
        return builtins.open(path, mode) if "b" in mode else builtins.open(path, mode, encoding="utf-8")
    if "r" in mode and not exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if "w" in mode:
        _clear(path)
    with _os_errors(path):
        return _gfile().GFile(path, mode)


def _clear(path: str) -> None:
    """Deletes a remote file about to be replaced: GCS replaces an object anyway, but some file systems (TF's
    ram://) append to an existing file opened with 'w', so writes replace the file on every file system."""
    if is_remote(path) and exists(path) and not isdir(path):
        remove(path)


def read_text(path) -> str:
    with _os_errors(path), open(path) as f:
        return f.read()


def write_text(path, text: str) -> None:
    """Writes a whole file (replacing it)."""
    with _os_errors(path), open(path, "w") as f:
        f.write(text)


def read_json(path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def write_json(path, content) -> None:
    write_text(path, json.dumps(content, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------
# Directories: publishing an export, moving small files between a bucket and the local disk
# ----------------------------------------------------------------------------------------------------


def _walk_files(directory: str) -> list[str]:
    """Every file under `directory`, as paths relative to it (sorted)."""
    files = []
    for name in listdir(directory):
        path = os.path.join(directory, name)
        if isdir(path):
            files += [os.path.join(name, below) for below in _walk_files(path)]
        else:
            files.append(name)
    return sorted(files)


def publish_dir(staging, directory, last: str) -> None:
    """Replaces `directory` by the finished directory `staging` (which is consumed).

    On a local disk this is a rename, atomic: a reader sees the old directory or the new one. An object store has
    no rename (a "rename" copies every object), so there `last` - the file readers check first, e.g. the model
    manifest - is what makes the directory valid: it is deleted before anything else of the old directory and
    copied after everything else of the new one, so a copy cut short leaves a directory that readers reject as
    incomplete ("missing bert_jax.json") instead of a mix of two versions.
    """
    staging, directory = absolute(staging), absolute(directory)
    if not is_remote(directory) and not is_remote(staging):
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.replace(staging, directory)
        return
    if exists(os.path.join(directory, last)):
        remove(os.path.join(directory, last))
    if exists(directory):
        rmtree(directory)
    files = _walk_files(staging)
    if last not in files:
        raise FileNotFoundError(f"{staging}: {last} missing; not publishing an incomplete directory")
    for name in [f for f in files if f != last] + [last]:
        makedirs(os.path.dirname(os.path.join(directory, name)))
        copy(os.path.join(staging, name), os.path.join(directory, name))
    rmtree(staging)


def upload_dir(local: str, target) -> None:
    """Copies every file under the local directory `local` into `target` (a URL or a local path)."""
    for name in _walk_files(local):
        destination = os.path.join(os.fspath(target), name)
        makedirs(os.path.dirname(destination))
        copy(os.path.join(local, name), destination)


_DOWNLOADS: list[str] = []


def download_dir(url) -> str:
    """A local copy of the files directly in a remote directory (not its subdirectories: a model directory's
    config and vocabulary, not its params/), for code that reads local files only, e.g. the tokenizer. Deleted when
    the process exits; a local path is returned as it is."""
    url = os.fspath(url)
    if not is_remote(url):
        return url
    if not isdir(url):
        raise FileNotFoundError(f"{url}: no such directory")
    if not _DOWNLOADS:
        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _DOWNLOADS])
    local = tempfile.mkdtemp(prefix="bert_jax-download-")
    _DOWNLOADS.append(local)
    for name in listdir(url):
        if not isdir(os.path.join(url, name)):
            copy(os.path.join(url, name), os.path.join(local, name))
    return local


def local_mirror(url, name: str) -> str:
    """A local directory that belongs to the remote directory `url` (the same one every time on this host, so a
    resumed run finds what it wrote there before): <tmp>/bert_jax-mirror/<url as a name>-<hash>/<name>."""
    url = absolute(url)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url)[-80:]
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), "bert_jax-mirror", f"{readable}-{digest}", name)
    os.makedirs(path, exist_ok=True)
    return path


@contextlib.contextmanager
def written_locally(directory) -> Iterator[str]:
    """For code that writes with local-file calls (the tasks' prediction writers, save_tokenizer): yields
    `directory` itself if it is local, else a temporary local directory whose files are uploaded to it on exit."""
    directory = os.fspath(directory)
    if not is_remote(directory):
        os.makedirs(directory, exist_ok=True)
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="bert_jax-upload-") as local:
        yield local
        makedirs(directory)
        upload_dir(local, directory)
