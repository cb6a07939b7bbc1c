"""`python -m bert_jax <command> [flags]`: the single command-line entry point.

Each command lives in `bert_jax/cli/<command>.py` (flags + one call into the library); this file only
dispatches, so `python -m bert_jax <command> --help` shows that command's flags alone.

It also answers user errors for every command: a ValueError / OSError / EOFError (a bad value, a missing or
corrupt file), an absl flag error or an unknown --config.<key> is one line `<command>: error: <message>` on
stderr, exit status 1 (2 for a bad command line), without a traceback unless --verbosity / -v is given or
BERT_JAX_TRACEBACK=1. Any other exception is a bug and keeps its traceback.
"""

import difflib
import importlib
import os
import re
import sys

# command -> (module, one-line summary). Modules are imported lazily: see bert_jax/cli/__init__.py.
COMMANDS = {
    "pretrain": ("bert_jax.cli.pretrain", "pretrain BERT (MLM + NSP); with no flags, a tiny BERT on a built-in corpus"),
    "finetune": ("bert_jax.cli.finetune", "fine-tune on GLUE, SQuAD, NER, multiple choice or your own files"),
    "predict": ("bert_jax.cli.predict", "run a fine-tuned checkpoint on new input files"),
    "evaluate-squad": ("bert_jax.cli.evaluate_squad", "official SQuAD v1.1/v2.0 metrics for a predictions file"),
    "convert": ("bert_jax.cli.convert", "import a Google TF or Hugging Face BERT checkpoint"),
    "export-hf": ("bert_jax.cli.export_hf", "export a bert_jax checkpoint to Hugging Face format"),
    "tokenize": ("bert_jax.cli.tokenize", "print WordPiece ids of each line read on stdin"),
    "train-tokenizer": ("bert_jax.cli.train_tokenizer", "train a WordPiece or SentencePiece vocabulary"),
    "prepare-pretraining-data": ("bert_jax.cli.prepare_pretraining_data", "write masked NSP instances as TFRecords"),
    "fill-mask": ("bert_jax.cli.fill_mask", "predict the [MASK] tokens of texts"),
    "embed": ("bert_jax.cli.embed", "embed one text per line into a .npy file"),
}


def _available():
    """Commands whose module exists in this checkout."""
    return {name: v for name, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def _usage():
    lines = ["usage: python -m bert_jax <command> [flags]   (python -m bert_jax <command> --help)", "", "commands:"]
    for name, (_, summary) in _available().items():
        lines.append(f"  {name:<26} {summary}")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    available = _available()
    if command not in available:
        print(f"bert_jax: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        return _run(command, available[command][0], rest)
    except Exception as error:  # noqa: BLE001 -- only user errors are answered here; the rest is re-raised
        status = exit_status(error)
        if status is None or traceback_wanted(rest):
            raise
        print(f"{command}: error: {one_line(error)}", file=sys.stderr)
        return status


def _run(command, module_name, rest):
    config_file = config_argument(rest)
    if config_file and not os.path.isfile(config_file.partition(":")[0]):
        raise CommandLineError(f"config file {config_file.partition(':')[0]!r} does not exist")
    try:
        # ml_collections parses a default config file (with the --config.* overrides of sys.argv) at import.
        module = importlib.import_module(module_name)
    except (KeyError, AttributeError) as error:
        _raise_if_unknown_override(module_name, rest, error)
        raise
    from absl import app, flags

    prog = f"python -m bert_jax {command}"
    if "--help" in rest or "-h" in rest:
        # absl's own --help lists the flags of __main__ only; show this command's flags instead.
        print(f"usage: {prog} [flags]\n\n{(module.__doc__ or '').strip()}\n")
        print(flags.FLAGS.module_help(module_name) or "(no flags)")
        return 0

    def parse_flags(args):
        # Unlike absl's default parser (which prints two lines and exits), errors reach main() above.
        try:
            return flags.FLAGS(args)
        except (KeyError, AttributeError) as error:
            _raise_if_unknown_override(module_name, rest, error)
            raise

    sys.argv = [prog, *rest]
    app.run(module.main, argv=[prog, *rest], flags_parser=parse_flags)
    return 0


# ----------------------------------------------------------------------------------------------------
# User errors: one line `<command>: error: <message>`, exit status 1 (2 for a bad command line).
# ----------------------------------------------------------------------------------------------------

# What a user can cause and fix: bad values and files (ValueError, including UnicodeDecodeError),
# missing, unreadable, corrupt or full files and disks (OSError, EOFError). Other exception types
# are bugs and keep their traceback.
USER_ERRORS = (ValueError, OSError, EOFError)
TRACEBACK_ENV = "BERT_JAX_TRACEBACK"
_VERBOSITY = re.compile(r"^--?(v|verbosity)(=.*)?$")
_OVERRIDE = re.compile(r"^--?(no)?config\.([^=]+)")


class CommandLineError(Exception):
    """The command line itself is wrong (an unknown config key, a missing config file): exit status 2."""


def exit_status(error: BaseException):
    """2 for a bad command line, 1 for another user error, None for a bug (shown with its traceback)."""
    from absl import flags

    if isinstance(error, (CommandLineError, flags.Error)):
        return 2
    if isinstance(error, USER_ERRORS):
        return 1
    return None


def traceback_wanted(args) -> bool:
    """--verbosity / -v (absl's flag) on the command line, or BERT_JAX_TRACEBACK=1, shows the traceback."""
    if os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes"):
        return True
    return any(_VERBOSITY.match(arg) for arg in args)


def one_line(error: BaseException) -> str:
    """The message of `error` for `<command>: error: <message>`. Our own messages are written to be read as
    they are (a few may span lines on purpose); absl's and ml_collections' are folded into one line."""
    from absl import flags

    message = str(error).strip() or type(error).__name__
    if isinstance(error, flags.Error) and "Traceback (most recent call last)" not in message:
        return "; ".join(line.strip().rstrip(".") for line in message.splitlines() if line.strip())  # one per flag
    if "Traceback (most recent call last)" in message:
        # ml_collections puts the traceback of a config file's error into its message: keep where the
        # flag said it went wrong ("flag --config=...:") and the error's own last line.
        first, last = message.splitlines()[0], message.splitlines()[-1].strip()
        where = first.split(": Error whilst parsing config file", 1)[0] if first.startswith("flag ") else ""
        last = re.sub(r"^[\w.]+(Error|Exception): ", "", last)
        message = f"{where}: {last}" if where else last
    return message


def config_argument(args):
    """The value of --config (`path` or `path:argument`) on the command line, or None."""
    for i, arg in enumerate(args):
        if arg in ("--config", "-config") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(("--config=", "-config=")):
            return arg.split("=", 1)[1]
    return None


def _raise_if_unknown_override(module_name, args, error: Exception) -> None:
    """After a KeyError/AttributeError while ml_collections applied the --config.* overrides: raises a
    CommandLineError naming the first override that is no key of the config, with the closest key first.
    Returns if every override is a key (the error is then something else)."""
    overrides = [m.group(2) for m in map(_OVERRIDE.match, args) if m]
    if not overrides:
        return
    try:
        known = config_key_paths(_base_config(module_name, args))
    except Exception:  # noqa: BLE001 -- no config to compare with: the original error stands
        return
    for key in overrides:
        base = key.split("[", 1)[0]  # phases[0].batch_size -> phases
        if base not in known:
            raise CommandLineError(unknown_key_message(key, known)) from error


def unknown_key_message(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def config_key_paths(config, prefix: str = "") -> set:
    """Dotted paths of every leaf and sub-dict of a ConfigDict (`train`, `train.batch_size`, ...)."""
    from collections.abc import Mapping

    paths = set()
    items = config.to_dict().items() if hasattr(config, "to_dict") else config.items()
    for name, value in items:
        path = f"{prefix}{name}"
        paths.add(path)
        if isinstance(value, Mapping):
            paths |= config_key_paths(value, path + ".")
    return paths


def _base_config(module_name, args):
    """The command's config without the overrides: the --config file, else the module's default."""
    from absl import flags

    if "config" not in flags.FLAGS:
        # The import failed while applying the overrides to the default config: import again without them.
        saved = sys.argv
        sys.argv = [saved[0], *(arg for arg in args if not _OVERRIDE.match(arg))]
        try:
            importlib.import_module(module_name)
        finally:
            sys.argv = saved
    flag = flags.FLAGS["config"]
    config_file = config_argument(args)
    return flag.parser.parse(config_file) if config_file else flag.value


if __name__ == "__main__":
    sys.exit(main())
