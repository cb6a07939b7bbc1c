"""Embed one text per line into a float32 .npy file of shape [lines, hidden].

    python -m bert_jax embed --checkpoint models/my-bert --input sentences.txt --output vectors.npy --pooling mean

Row i embeds line i (empty lines included, so rows and lines stay aligned). Pooling: cls (final [CLS] state),
mean (mean over the tokens, padding excluded: sentence-transformers' mean pooling) or pooler (BERT's tanh pooler).
Lines longer than --max-length tokens (default: the model's max_position_embeddings) are truncated at the end,
keeping [SEP]; a warning says how many.
"""

import sys

from absl import flags
from absl import logging as absl_logging

from bert_jax import compilation_cache

flags.DEFINE_string("checkpoint", None, "bert_jax model directory.")
flags.DEFINE_string("input", None, "UTF-8 text file, one text per line.")
flags.DEFINE_string("output", None, "Output .npy file.")
flags.DEFINE_enum("pooling", "cls", ["cls", "mean", "pooler"], "How a text's token states become one vector.")
flags.DEFINE_integer("batch-size", 32, "Texts per forward pass.", lower_bound=1)
flags.DEFINE_integer("max-length", None, "Truncate texts to this many tokens ([CLS]/[SEP] included).", lower_bound=2)
flags.mark_flags_as_required(["checkpoint", "input", "output"])

compilation_cache.define_flag(__name__)

FLAGS = flags.FLAGS


def main(argv):
    if not FLAGS["verbosity"].present:  # keep Orbax's INFO chatter out of a command's output
        absl_logging.set_verbosity(absl_logging.WARNING)
    compilation_cache.configure(FLAGS.compilation_cache)
    if len(argv) > 1:
        print(f"embed: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    import numpy as np

    from bert_jax.inference import embed
    from bert_jax.pretrained import load_pretrained

    try:
        try:
            with open(FLAGS.input, encoding="utf-8") as f:  # universal newlines: \r\n -> \n
                texts = f.read().split("\n")
            if texts and texts[-1] == "":  # the final newline ends the last line; it does not start a new one
                texts.pop()
        except UnicodeDecodeError as e:
            raise ValueError(f"{FLAGS.input}: not UTF-8 text ({e})") from None
        pretrained = load_pretrained(FLAGS.checkpoint)
        vectors = embed(pretrained, texts, pooling=FLAGS.pooling, batch_size=FLAGS["batch-size"].value,
                        max_length=FLAGS["max-length"].value)
        np.save(FLAGS.output, vectors)
    except (FileNotFoundError, ValueError, IsADirectoryError) as e:
        print(f"embed: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {FLAGS.output}: {vectors.shape[0]} x {vectors.shape[1]} float32 ({FLAGS.pooling} pooling)")
    return 0
