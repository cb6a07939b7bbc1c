"""JAX's persistent compilation cache, on by default for every command that compiles.

A second run of the same command (a resumed pretraining, another fine-tuning seed, `predict` on a new file)
loads its executables from disk instead of compiling them again: on a CPU, compiling a train step and the
evaluation forward for each length bucket is a large part of a short fine-tune's wall clock.

The cache lives in the user's cache directory ($XDG_CACHE_HOME/bert_jax/jax, else ~/.cache/bert_jax/jax);
$BERT_JAX_COMPILATION_CACHE moves it, and so does each command's --compilation_cache flag; an empty value (or
"off") turns it off. JAX keys its entries by the program, the JAX version and the devices, so one directory
serves every model, config and machine kind.
"""

from __future__ import annotations

import os
from typing import Optional

ENV = "BERT_JAX_COMPILATION_CACHE"
# Programs that compile faster than this are not worth a file each (JAX's own default is 1 s, which leaves
# out most of a small model's evaluation shapes on a CPU).
MIN_COMPILE_SECONDS = 0.2


def default_directory() -> str:
    """$BERT_JAX_COMPILATION_CACHE when set (possibly '' = off), else the user's cache directory."""
    if ENV in os.environ:
        return os.environ[ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bert_jax", "jax")


def define_flag(module_name: str) -> None:
    """--compilation_cache, for a command module to call at import with its __name__ (absl lists a command's
    flags by the module that defines them)."""
    from absl import flags

    flags.DEFINE_string("compilation_cache", None,
                        "Directory of JAX's persistent compilation cache, so a repeated or resumed run does not "
                        f"compile again; '' turns it off (default: ${ENV}, else ~/.cache/bert_jax/jax).",
                        module_name=module_name)


def configure(directory: Optional[str] = None) -> Optional[str]:
    """Points JAX's persistent cache at `directory` (None: default_directory()); returns the directory used, or
    None when the cache is off. Call before the first compilation."""
    import jax

    directory = default_directory() if directory is None else directory
    if directory.strip().lower() in ("", "off", "none", "0", "false"):
        jax.config.update("jax_compilation_cache_dir", None)
        return None
    directory = os.path.expanduser(directory)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return directory
