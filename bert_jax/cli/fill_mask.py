"""Predict the [MASK] tokens of texts with a bert_jax model directory.

    python -m bert_jax fill-mask --checkpoint models/bert-base-uncased "Paris is the [MASK] of France."

Prints one JSON line per text, in the layout of Hugging Face's fill-mask pipeline: a list of {score, token,
token_str, sequence} for the top-k predictions, or a list of such lists (one per [MASK]) when a text has several.
"""

import json
import sys

from absl import flags
from absl import logging as absl_logging

from bert_jax import compilation_cache

flags.DEFINE_string("checkpoint", None, "bert_jax model directory with an MLM head.")
flags.DEFINE_integer("top-k", 5, "Predictions per [MASK].", lower_bound=1)
flags.DEFINE_integer("batch-size", 8, "Texts per forward pass.", lower_bound=1)
flags.mark_flag_as_required("checkpoint")

compilation_cache.define_flag(__name__)

FLAGS = flags.FLAGS


def main(argv):
    if not FLAGS["verbosity"].present:  # keep Orbax's INFO chatter out of a command's output
        absl_logging.set_verbosity(absl_logging.WARNING)
    compilation_cache.configure(FLAGS.compilation_cache)
    texts = argv[1:]
    if not texts:
        print('fill-mask: error: give one or more texts, e.g. "Paris is the [MASK] of France."', file=sys.stderr)
        return 2
    from bert_jax.inference import fill_mask
    from bert_jax.pretrained import load_pretrained, read_manifest

    try:
        pretrained = load_pretrained(FLAGS.checkpoint)
        if "mlm" in read_manifest(FLAGS.checkpoint).get("fresh", []):
            print(f"fill-mask: warning: the MLM head of {FLAGS.checkpoint} was initialised fresh at conversion "
                  "(the source had none): its predictions are random", file=sys.stderr)
        results = fill_mask(pretrained, texts, top_k=FLAGS["top-k"].value, batch_size=FLAGS["batch-size"].value)
    except (FileNotFoundError, ValueError) as e:
        print(f"fill-mask: error: {e}", file=sys.stderr)
        return 1
    for result in results:
        print(json.dumps(result, ensure_ascii=False))
    return 0
