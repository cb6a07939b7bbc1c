"""Pretrain BERT (masked LM + next-sentence prediction) from a config file.

    python -m bert_jax pretrain                     # a tiny BERT on a built-in corpus (CPython's docs), minutes
    python -m bert_jax pretrain --config configs/pretrain.py:base --workdir DIR \
        --config.data.input_files=../shared/data/wikipedia \
        --config.data.vocab_file=../shared/data/vocab/bert-base-uncased-vocab.txt

Any config key can be overridden with --config.<key>=<value> (see configs/pretrain.py). A workdir that already
has checkpoints resumes from the latest one; SIGTERM saves a checkpoint and exits with status 143 ("saved, requeue
me": see docs/launching.md). Multi-host: on Cloud TPU pod slices (and SLURM) the processes find each other by
themselves; elsewhere give --coordinator_address, --num_processes and --process_id to every process.
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

from bert_jax import compilation_cache

_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")

config_flags.DEFINE_config_file("config", os.path.join(_CONFIGS, "pretrain.py"),
                                "Config file, optionally with an argument: configs/pretrain.py:base.")
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the final model go here "
                    "(default: workdirs/pretrain_<config argument>).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs outside Cloud TPU.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")

compilation_cache.define_flag(__name__)

FLAGS = flags.FLAGS


def default_workdir() -> str:
    _, _, arg = config_flags.get_config_filename(FLAGS["config"]).partition(":")
    return os.path.join("workdirs", f"pretrain_{arg or 'builtin'}")


def main(argv):
    if len(argv) > 1:
        print(f"pretrain: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    import jax
    from absl import logging

    from bert_jax import pretrain, sharding
    from bert_jax.trainer import PREEMPTED_EXIT_STATUS, NonFiniteLossError, Preempted

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    compilation_cache.configure(FLAGS.compilation_cache)
    sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    workdir = FLAGS.workdir or default_workdir()
    try:
        state = pretrain.train_and_evaluate(FLAGS.config, workdir)
    except Preempted as stop:  # saved: a non-zero status that schedulers requeue on (docs/launching.md)
        print(f"pretrain: {stop}; exit status {PREEMPTED_EXIT_STATUS}")
        return PREEMPTED_EXIT_STATUS
    except NonFiniteLossError as e:  # user errors (ValueError, OSError): one line in bert_jax/__main__.py
        print(f"pretrain: error: {e}", file=sys.stderr)
        return 1
    print(f"pretrain: done at step {int(state.step)}; workdir {os.path.abspath(workdir)}")
    return 0
