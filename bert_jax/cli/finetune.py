"""Fine-tune BERT on a task from a config file: GLUE, SQuAD, CoNLL-2003 NER, SWAG, or your own CSV/TSV/JSONL.

    python -m bert_jax finetune --config configs/glue.py:sst2 --workdir DIR \
        --config.init_checkpoint=MODEL_DIR --config.data.source=../shared/data/glue/SST-2
    python -m bert_jax finetune --config configs/squad.py:v1.1 ...    (configs/ner.py, swag.py, classify.py)

`init_checkpoint` is a bert_jax model directory (`python -m bert_jax convert` imports Google and Hugging Face
checkpoints; a pretraining run writes <workdir>/model) or a pretraining workdir. Only the encoder is loaded; the
task head and the optimizer start fresh. Any config key can be overridden with --config.<key>=<value> (see the
config file's docstring for the command and the results to expect). The best weights by the task's dev metric land
in DIR/model (for `predict` and `export-hf`), predictions in DIR/predictions. A workdir with checkpoints resumes.
"""

import os
import sys

from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file with its argument, e.g. configs/glue.py:sst2.")
flags.DEFINE_string("workdir", None, "Checkpoints, metrics, the fine-tuned model and predictions go here "
                    "(default: workdirs/finetune_<task>).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs outside Cloud TPU.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_string("compilation_cache", None, "Directory for JAX's persistent compilation cache, so a resumed "
                    "or repeated run skips compiling.")

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
    from bert_jax.trainer import NonFiniteLossError

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    if FLAGS.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    workdir = FLAGS.workdir or os.path.join("workdirs", f"finetune_{FLAGS.config.task.name or 'task'}")
    try:
        result = finetune.train_and_evaluate(FLAGS.config, workdir)
    except (ValueError, FileNotFoundError, NonFiniteLossError) as e:
        print(f"finetune: error: {e}", file=sys.stderr)
        return 1
    state = result["state"]
    if not result["predictions"]:
        print(f"finetune: stopped at step {int(state.step)}; run again with the same workdir to resume")
        return 0
    print(f"finetune: done at step {int(state.step)}; model {result['model_dir']}; "
          f"{len(result['predictions'])} prediction files in {os.path.dirname(result['predictions'][0])}")
    return 0
