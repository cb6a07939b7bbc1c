"""Print the token ids of each line read on stdin, with [CLS] and [SEP], space separated.

    echo "Hello, world!" | python -m bert_jax tokenize --vocab vocab.txt
    python -m bert_jax tokenize --vocab models/my-bert --tokens < sentences.txt

--vocab is a WordPiece vocab.txt, a SentencePiece .model, or a directory holding one (a bert_jax model directory
or the output of train-tokenizer). Lower-casing comes from --cased / --nocased, else from the directory's
tokenizer_config.json, else from the vocabulary (uncased unless clearly cased). An empty line prints the ids of
[CLS] [SEP]. Input is read as UTF-8 (undecodable bytes become U+FFFD, which the tokenizer drops).
"""

import io
import sys

from absl import flags

flags.DEFINE_string("vocab", None, "vocab.txt, SentencePiece .model, or a directory holding one.")
flags.DEFINE_boolean("cased", None, "Keep case and accents (--cased) or lower-case (--nocased); default: inferred.")
flags.DEFINE_boolean("tokens", False, "Print the tokens instead of their ids.")
flags.mark_flags_as_required(["vocab"])

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        print(f"tokenize: error: unexpected arguments {argv[1:]} (text is read from stdin)", file=sys.stderr)
        return 2
    from bert_jax.tokenizer import load_tokenizer

    lower_case = None if FLAGS.cased is None else not FLAGS.cased
    try:
        tokenizer = load_tokenizer(FLAGS.vocab, lower_case=lower_case)
    except (FileNotFoundError, ValueError) as e:
        print(f"tokenize: error: {e}", file=sys.stderr)
        return 1
    # Lines end at "\n" only (a trailing "\r" is dropped), so a stray carriage return inside a line cannot
    # split it in two and shift the output against the input.
    stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace", newline="\n")
    out = sys.stdout
    for line in stdin:
        ids = tokenizer.encode(line.rstrip("\r\n")).input_ids
        if FLAGS.tokens:
            out.write(" ".join(tokenizer.convert_ids_to_tokens(ids)) + "\n")
        else:
            out.write(" ".join(map(str, ids)) + "\n")
    out.flush()
    return 0
