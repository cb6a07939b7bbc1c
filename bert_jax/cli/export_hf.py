"""Write a bert_jax model directory as a Hugging Face directory.

    python -m bert_jax export-hf --checkpoint models/my-bert --output hf/my-bert

Writes config.json, model.safetensors (float32) and, for a WordPiece model, vocab.txt, tokenizer_config.json and
special_tokens_map.json. `transformers.BertForPreTraining.from_pretrained(output)` (or the class of a fine-tuning
head: BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering, BertForMultipleChoice)
loads it without missing keys. Needs neither torch nor transformers.
"""

import sys

from absl import flags
from absl import logging as absl_logging

flags.DEFINE_string("checkpoint", None, "bert_jax model directory (from convert, pretrain or finetune).")
flags.DEFINE_string("output", None, "New Hugging Face directory (must not exist or be empty).")
flags.mark_flags_as_required(["checkpoint", "output"])

FLAGS = flags.FLAGS


def main(argv):
    if not FLAGS["verbosity"].present:  # keep Orbax's INFO chatter out of a command's output
        absl_logging.set_verbosity(absl_logging.WARNING)
    if len(argv) > 1:
        print(f"export-hf: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    from bert_jax.convert import export_hf

    try:
        output = export_hf(FLAGS.checkpoint, FLAGS.output)
    except (FileNotFoundError, ValueError) as e:
        print(f"export-hf: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {output}")
    return 0
