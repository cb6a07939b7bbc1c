"""Train a WordPiece or SentencePiece vocabulary with BERT's special tokens on text files.

    python -m bert_jax train-tokenizer --input 'corpus/*.txt' --output vocab_dir --type wordpiece --vocab-size 8000
    python -m bert_jax tokenize --vocab vocab_dir < sentences.txt

--input takes files, directories (every file below them), glob patterns and .gz files; repeat it or separate
several with commas. The output directory gets vocab.txt (or spm.model) and tokenizer_config.json, loadable
with bert_jax.tokenizer.load_tokenizer. [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, then --num-unused
[unusedN] tokens. Text is lower-cased (and, for WordPiece, accent-stripped) unless --cased.

Bytes that are not UTF-8 are dropped from their lines, and a corpus too small for --vocab-size pieces gives a
smaller vocabulary: each is a `train-tokenizer: warning:` line with the numbers (and file:line examples);
with --strict a smaller vocabulary is an error instead.
"""

import sys
import time

from absl import flags

flags.DEFINE_multi_string("input", None, "Training text: files, directories, globs, .gz; comma-separated or repeated.")
flags.DEFINE_string("output", None, "Output directory (created if needed).")
flags.DEFINE_enum("type", "wordpiece", ["wordpiece", "sentencepiece"], "Kind of vocabulary.")
flags.DEFINE_integer("vocab-size", 8000, "Vocabulary size, special tokens included.", lower_bound=8)
flags.DEFINE_boolean("cased", False, "Keep case (and accents); by default text is lower-cased.")
flags.DEFINE_integer("num-unused", 0, "[unusedN] placeholder tokens after the special tokens.", lower_bound=0)
flags.DEFINE_enum("sentencepiece-model", "unigram", ["unigram", "bpe"],
                  "SentencePiece model type (bpe trains several times faster).")
flags.DEFINE_boolean("strict", False, "Fail (exit status 1) when the corpus is too small for --vocab-size pieces, "
                     "instead of writing a smaller vocabulary with a warning.")
flags.mark_flags_as_required(["input", "output"])

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        print(f"train-tokenizer: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    from bert_jax.tokenizer_training import InputReport, train_tokenizer

    inputs = [part for value in FLAGS.input for part in value.split(",") if part]
    start = time.time()
    report = InputReport()
    # A ValueError / OSError (no input, a corrupt .gz, --strict) is one line (bert_jax/__main__.py).
    tokenizer = train_tokenizer(inputs, FLAGS.output, FLAGS.type, FLAGS["vocab-size"].value,
                                lower_case=not FLAGS.cased, num_unused=FLAGS["num-unused"].value,
                                sentencepiece_model=FLAGS["sentencepiece-model"].value, report=report,
                                strict=FLAGS.strict)
    for warning in report.warnings():
        print(f"train-tokenizer: warning: {warning}", file=sys.stderr)
    print(f"wrote {FLAGS.output}: {FLAGS.type} vocabulary of {tokenizer.vocab_size} tokens "
          f"(lower_case={tokenizer.lower_case}) from {report.lines} lines in {time.time() - start:.1f}s")
    return 0
