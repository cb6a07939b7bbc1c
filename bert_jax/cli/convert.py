"""Import a Google TF checkpoint or a Hugging Face BERT directory into a bert_jax model directory.

    python -m bert_jax convert --source uncased_L-12_H-768_A-12 --output models/bert-base-uncased
    python -m bert_jax convert --source path/to/hf-bert --output models/my-bert

The source kind is detected: a Google checkpoint (bert_model.ckpt.* + bert_config.json + vocab.txt; the prefix
.../bert_model.ckpt works too) or a Hugging Face directory (config.json + model.safetensors or pytorch_model.bin +
vocab.txt). Heads the source lacks (a plain BertModel has no MLM/NSP head) are initialised fresh, with a warning
that is also recorded in the output's bert_jax.json. Lower-casing comes from the source's tokenizer_config.json
when it says, else from --lower-case/--cased, else from the vocabulary (uncased unless clearly cased).
"""

import os
import sys

from absl import flags
from absl import logging as absl_logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up chatter would bury the warnings that matter

flags.DEFINE_string("source", None, "Google TF checkpoint (directory or prefix) or Hugging Face directory.")
flags.DEFINE_string("output", None, "New bert_jax model directory (must not exist or be empty).")
flags.DEFINE_boolean("lower-case", None, "Lower-case input text (an uncased model).")
flags.DEFINE_boolean("cased", None, "Keep case (a cased model); the opposite of --lower-case.")
flags.mark_flags_as_required(["source", "output"])

FLAGS = flags.FLAGS


def main(argv):
    if not FLAGS["verbosity"].present:  # keep Orbax's INFO chatter out of a command's output
        absl_logging.set_verbosity(absl_logging.WARNING)
    if len(argv) > 1:
        print(f"convert: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    lower_case, cased = FLAGS["lower-case"].value, FLAGS["cased"].value
    if lower_case is not None and cased is not None and lower_case == cased:
        print("convert: error: --lower-case and --cased contradict each other", file=sys.stderr)
        return 2
    if lower_case is None and cased is not None:
        lower_case = not cased

    from bert_jax.convert import convert_checkpoint

    # A ValueError / OSError (bad or truncated source files) is one line `convert: error: ...` (bert_jax/__main__.py).
    manifest = convert_checkpoint(FLAGS.source, FLAGS.output, lower_case=lower_case)
    fresh = f"; initialised fresh: {', '.join(manifest['fresh'])}" if manifest["fresh"] else ""
    print(f"wrote {FLAGS.output} ({manifest['source']['format']} checkpoint; parts: "
          f"{', '.join(manifest['parts'])}{fresh})")
    return 0
