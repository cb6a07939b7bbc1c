"""`python -m bert_jax <command> [flags]`: the single command-line entry point.

Each command lives in `bert_jax/cli/<command>.py` (flags + one call into the library); this file only
dispatches, so `python -m bert_jax <command> --help` shows that command's flags alone.
"""

import importlib
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
    module_name = available[command][0]
    module = importlib.import_module(module_name)
    from absl import app, flags

    prog = f"python -m bert_jax {command}"
    if "--help" in rest or "-h" in rest:
        # absl's own --help lists the flags of __main__ only; show this command's flags instead.
        print(f"usage: {prog} [flags]\n\n{(module.__doc__ or '').strip()}\n")
        print(flags.FLAGS.module_help(module_name) or "(no flags)")
        return 0
    sys.argv = [prog, *rest]
    app.run(module.main, argv=[prog, *rest])
    return 0


if __name__ == "__main__":
    sys.exit(main())
