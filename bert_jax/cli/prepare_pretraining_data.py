r"""Write masked NSP pretraining instances as sharded TFRecords (Google's create_pretraining_data.py).

    python -m bert_jax prepare-pretraining-data --input '../shared/data/wikipedia/wiki_*' \
        --vocab ../shared/data/vocab/bert-base-uncased-vocab.txt --output /tmp/pretraining-128 \
        --max-seq-length 128 --max-predictions-per-seq 20 --dupe-factor 10 --num-workers 2

One output shard per input file (`part-XXXXX-of-NNNNN.tfrecord`, in parallel over files) and
`pretraining_data.json` (settings + summary). Input files may be in the original format (one sentence per
line, blank line between documents), paragraph-per-line text, or WikiExtractor output (see
bert_jax/data/text_reader.py); `.gz`, globs and directories work. Files are read in blocks of --block-chars
characters, so memory stays bounded on any corpus; random-next segments come from the same block.

An --output directory that holds an earlier run's shards is refused (their shards would mix with the new
ones); --overwrite removes those files (part-*-of-*.tfrecord, pretraining_data.json, no others) and says how
many. A run that fails (e.g. on a truncated .gz input, named in the error) leaves none of its shards behind.

Prints a human summary, then one line `SUMMARY_JSON {...}` with documents, sentences, instances and what
was skipped and why. Read the records with bert_jax.data.pipeline (`PipelineSpec(mode='offline', ...)`).
"""

import json
import os

from absl import flags

from bert_jax.data import text_reader
from bert_jax.data.instances import InstanceConfig
from bert_jax.data.offline_writer import describe_summary, prepare_pretraining_data

FLAGS = flags.FLAGS

flags.DEFINE_string("input", None, "text files: a file, glob, directory, or comma-separated list of them")
flags.DEFINE_string("vocab", None, "vocab.txt, SentencePiece .model, or a directory holding one")
flags.DEFINE_string("output", None, "output directory for the TFRecord shards")
flags.DEFINE_integer("max-seq-length", 128, "tokens per sequence, [CLS]/[SEP] included")
flags.DEFINE_integer("max-predictions-per-seq", 20, "masked positions per sequence (about 15% of the length)")
flags.DEFINE_integer("dupe-factor", 10, "passes over each document, each with fresh random choices")
flags.DEFINE_float("short-seq-prob", 0.1, "probability of a shorter target length")
flags.DEFINE_float("masked-lm-prob", 0.15, "fraction of the tokens to mask")
flags.DEFINE_bool("whole-word-masking", False, "mask all pieces of a word together")
flags.DEFINE_integer("seed", 12345, "random seed; the output depends on it only (not on --num-workers)")
flags.DEFINE_integer("num-workers", os.cpu_count() or 1, "worker processes, each writing whole files "
                     "(default: the number of CPU cores)")
flags.DEFINE_bool("lower-case", None, "lower-case the text (--lower-case / --nolower-case; --cased is the opposite); "
                  "default: from the tokenizer directory's config, else inferred from the vocabulary")
flags.DEFINE_bool("cased", None, "keep case (the same as --nolower-case)")
flags.DEFINE_enum("text-format", "auto", list(text_reader.FORMATS),
                  "input format; auto: WikiExtractor if the file starts with <doc, else one sentence per line")
flags.DEFINE_integer("block-chars", 4_000_000, "characters of text per block (memory bound; random-next pool)")
flags.DEFINE_bool("overwrite", False, "if --output holds an earlier run's shards (part-*-of-*.tfrecord) and "
                  "pretraining_data.json, remove those first (without it, that is an error); other files stay")
flags.mark_flags_as_required(["input", "vocab", "output"])


def _flag(name):
    return FLAGS[name].value


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    lower_case = _flag("lower-case")
    if _flag("cased") is not None:
        if lower_case is not None and lower_case == _flag("cased"):
            raise SystemExit("--lower-case and --cased contradict each other")
        lower_case = not _flag("cased")
    config = InstanceConfig(
        max_seq_length=_flag("max-seq-length"),
        max_predictions_per_seq=_flag("max-predictions-per-seq"),
        masked_lm_prob=_flag("masked-lm-prob"),
        short_seq_prob=_flag("short-seq-prob"),
        whole_word_masking=_flag("whole-word-masking"),
    )
    # A ValueError / OSError (missing or corrupt input, a reused --output) is one line (bert_jax/__main__.py).
    summary = prepare_pretraining_data(
        _flag("input"), _flag("vocab"), _flag("output"), config,
        dupe_factor=_flag("dupe-factor"), seed=_flag("seed"), num_workers=_flag("num-workers"),
        lower_case=lower_case, text_format=_flag("text-format"), block_chars=_flag("block-chars"),
        overwrite=_flag("overwrite"),
    )
    print(describe_summary(summary))
    print("SUMMARY_JSON " + json.dumps(summary, sort_keys=True))
