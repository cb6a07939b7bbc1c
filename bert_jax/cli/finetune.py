"""Fine-tune BERT on a task from a config file: GLUE, SQuAD, CoNLL-2003 NER, SWAG, or your own CSV/TSV/JSONL.

    python -m bert_jax finetune --config configs/glue.py:sst2 --workdir DIR \
        --config.init_checkpoint=MODEL_DIR --config.data.source=../shared/data/glue/SST-2
    python -m bert_jax finetune --config configs/squad.py:v1.1 ...    (configs/ner.py, swag.py, classify.py)

`init_checkpoint` is a bert_jax model directory (`python -m bert_jax convert` imports Google and Hugging Face
checkpoints; a pretraining run writes <workdir>/model) or a pretraining workdir. Only the encoder is loaded; the
task head and the optimizer start fresh. Any config key can be overridden with --config.<key>=<value> (see the
config file's docstring for the command and the results to expect). The best weights by the task's dev metric land
in DIR/model (for `predict` and `export-hf`), predictions in DIR/predictions. A workdir with checkpoints resumes;
SIGTERM saves a checkpoint and exits with status 143 ("saved, requeue me": see docs/launching.md).
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

from bert_jax import compilation_cache

config_flags.DEFINE_config_file("config", None, "Config file with its argument, e.g. configs/glue.py:sst2.")
flags.DEFINE_string("workdir", None, "Checkpoints, metrics, the fine-tuned model and predictions go here "
                    "(default: workdirs/finetune_<task>).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs outside Cloud TPU.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")

compilation_cache.define_flag(__name__)

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        print(f"finetune: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    if FLAGS.config is None:
        print("finetune: error: --config is required, e.g. --config configs/glue.py:sst2", file=sys.stderr)
        return 2
    import jax
    from absl import logging

    from bert_jax import finetune, sharding
    from bert_jax.trainer import PREEMPTED_EXIT_STATUS, NonFiniteLossError, Preempted

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    compilation_cache.configure(FLAGS.compilation_cache)
    sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    workdir = FLAGS.workdir or os.path.join("workdirs", f"finetune_{FLAGS.config.task.name or 'task'}")
    try:
        result = finetune.train_and_evaluate(FLAGS.config, workdir)
    except Preempted as stop:  # saved: a non-zero status that schedulers requeue on (docs/launching.md)
        print(f"finetune: {stop}; exit status {PREEMPTED_EXIT_STATUS}")
        return PREEMPTED_EXIT_STATUS
    except NonFiniteLossError as e:  # user errors (ValueError, OSError): one line in bert_jax/__main__.py
        print(f"finetune: error: {e}", file=sys.stderr)
        return 1
    state = result["state"]
    if not result["predictions"]:  # no dev or test split (or not process 0)
        print(f"finetune: done at step {int(state.step)}; model {result['model_dir']}")
        return 0
    print(f"finetune: done at step {int(state.step)}; model {result['model_dir']}; "
          f"{len(result['predictions'])} prediction files in {os.path.dirname(result['predictions'][0])}")
    return 0
