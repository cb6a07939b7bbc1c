"""Run a fine-tuned bert_jax model on new input files and write the task's predictions.

    python -m bert_jax predict --checkpoint workdirs/sst2/model --input test.tsv --output SST-2.tsv
    python -m bert_jax predict --checkpoint workdirs/squad/model --task squad_v1.1 --input dev-v1.1.json \
        --output predictions.json        # also writes predictions.nbest_predictions.json

The input is a file in the task's original format (a GLUE TSV, a SQuAD JSON, CoNLL columns, a SWAG CSV, your
CSV/TSV/JSONL); rows that cannot be read are skipped and reported. The output is the task's own format (GLUE
submission TSV, SQuAD predictions JSON + n-best (+ null odds for v2.0), CoNLL columns with the predicted tag, ...);
a directory as --output keeps the task's file names. The task and its settings come from the checkpoint's
finetune.json (written by `finetune`); --task must agree with it, or name the task of a checkpoint without one.
Labeled input is also scored.
"""

import sys

from absl import flags

from bert_jax import compilation_cache

flags.DEFINE_string("checkpoint", None, "Fine-tuned bert_jax model directory (a finetune run's <workdir>/model).")
flags.DEFINE_string("task", None, "Task name (sst2, squad_v1.1, conll2003, swag, classify, ...); default: the "
                    "checkpoint's.")
flags.DEFINE_string("input", None, "Input file in the task's format.")
flags.DEFINE_string("output", None, "Output file (or directory) for the predictions.")
flags.DEFINE_string("split", "test", "How to read the input: test (unlabeled or labeled) or validation (e.g. "
                    "CoLA's headerless dev layout).")
flags.DEFINE_integer("batch_size", 64, "Sequences per batch.")
flags.mark_flags_as_required(["checkpoint", "input", "output"])

compilation_cache.define_flag(__name__)

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        print(f"predict: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    import jax
    from absl import logging

    from bert_jax.predict import predict

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it reads at INFO
    compilation_cache.configure(FLAGS.compilation_cache)
    try:
        result = predict(FLAGS.checkpoint, FLAGS.input, FLAGS.output, task_name=FLAGS.task, split=FLAGS.split,
                         batch_size=FLAGS.batch_size)
    except (ValueError, FileNotFoundError) as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 1
    if result["metrics"]:
        print("metrics: " + " ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items()))
    print("wrote " + ", ".join(result["paths"]))
    return 0
