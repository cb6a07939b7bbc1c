"""Pretraining-data throughput: bert_jax's streaming pipeline and offline writer against a plain Python
implementation of SPEC.md §1 (what google-research/bert's create_pretraining_data.py does: Python WordPiece,
Python loops, tf.train.Example), and tokenization against Hugging Face `tokenizers` (Rust), in one run:

    python benchmarks/input_pipeline.py                     # 4 files of ../shared/data/wikipedia, seq 128
    python benchmarks/input_pipeline.py --files 30 --workers 2 --dupe-factor 10

All engines read the same WikiExtractor files with the same reader/sentence splitter and the 30,522-token
uncased vocabulary. Figures: sequences (or tokens) per second of wall time and per CPU-second (CPU time of
this process and its worker processes, all threads) -- the per-core figure. Goal: the streaming pipeline
>= 1,000 sequences/s per CPU core.
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

# Light imports only at the top: the offline writer's worker processes (spawned) import this module again.
from bert_jax.data import text_reader  # noqa: E402
from bert_jax.data.instances import InstanceConfig, SentenceTokenizer  # noqa: E402
from bert_jax.data.offline_writer import prepare_pretraining_data  # noqa: E402
from bert_jax.tokenizer import load_tokenizer  # noqa: E402

DATA = REPO.parent / "shared" / "data"


# ----------------------------------------------------------------------------------------------------
# The baseline: SPEC §1 the way the original script does it (independent of bert_jax.data.instances)
# ----------------------------------------------------------------------------------------------------


def baseline_write(files, tokenizer, output, *, max_seq_length, max_predictions, dupe_factor, seed):
    """Python tokenizer per sentence, the original loops on token strings, tf.train.Example records."""
    import tensorflow as tf

    rng = random.Random(seed)
    all_documents = []
    for document in text_reader.iter_documents(files):  # the same reader and sentence splitter as bert_jax
        doc = [tokenizer.tokenize(s) for s in document.sentences]
        doc = [s for s in doc if s]
        if doc:
            all_documents.append(doc)
    rng.shuffle(all_documents)
    vocab_words = list(tokenizer.vocab.keys())
    instances = []
    for _ in range(dupe_factor):
        for index in range(len(all_documents)):
            instances.extend(_baseline_document(all_documents, index, max_seq_length, max_predictions, vocab_words, rng))
    rng.shuffle(instances)
    with tf.io.TFRecordWriter(output) as writer:
        for tokens, segment_ids, is_random_next, positions, labels in instances:
            writer.write(_baseline_example(tokenizer, tokens, segment_ids, is_random_next, positions, labels,
                                           max_seq_length, max_predictions))
    return len(instances)


def _baseline_document(all_documents, document_index, max_seq_length, max_predictions, vocab_words, rng):
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < 0.1:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances, current_chunk, current_length, i = [], [], 0, 0
    while i < len(document):
        current_chunk.append(document[i])
        current_length += len(document[i])
        if i == len(document) - 1 or current_length >= target_seq_length:
            a_end = rng.randint(1, len(current_chunk) - 1) if len(current_chunk) >= 2 else 1
            tokens_a = [t for s in current_chunk[:a_end] for t in s]
            tokens_b = []
            if len(current_chunk) == 1 or rng.random() < 0.5:
                is_random_next = True
                target_b_length = target_seq_length - len(tokens_a)
                for _ in range(10):
                    random_index = rng.randint(0, len(all_documents) - 1)
                    if random_index != document_index:
                        break
                random_document = all_documents[random_index]
                for j in range(rng.randint(0, len(random_document) - 1), len(random_document)):
                    tokens_b.extend(random_document[j])
                    if len(tokens_b) >= target_b_length:
                        break
                i -= len(current_chunk) - a_end
            else:
                is_random_next = False
                tokens_b = [t for s in current_chunk[a_end:] for t in s]
            while len(tokens_a) + len(tokens_b) > max_num_tokens:
                trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
                if rng.random() < 0.5:
                    del trunc[0]
                else:
                    trunc.pop()
            tokens = ["[CLS]", *tokens_a, "[SEP]", *tokens_b, "[SEP]"]
            segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
            tokens, positions, labels = _baseline_mask(tokens, max_predictions, vocab_words, rng)
            instances.append((tokens, segment_ids, is_random_next, positions, labels))
            current_chunk, current_length = [], 0
        i += 1
    return instances


def _baseline_mask(tokens, max_predictions, vocab_words, rng):
    cand_indexes = [[i] for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
    rng.shuffle(cand_indexes)
    output = list(tokens)
    num_to_predict = min(max_predictions, max(1, int(round(len(tokens) * 0.15))))
    masked = []
    for index_set in cand_indexes:
        if len(masked) >= num_to_predict:
            break
        for index in index_set:
            if rng.random() < 0.8:
                output[index] = "[MASK]"
            elif rng.random() >= 0.5:
                output[index] = vocab_words[rng.randint(0, len(vocab_words) - 1)]
            masked.append((index, tokens[index]))
    masked.sort()
    return output, [p for p, _ in masked], [t for _, t in masked]


def _baseline_example(tokenizer, tokens, segment_ids, is_random_next, positions, labels, seq, preds):
    import tensorflow as tf

    input_ids = tokenizer.convert_tokens_to_ids(tokens)
    pad = seq - len(input_ids)
    label_ids = tokenizer.convert_tokens_to_ids(labels)
    padp = preds - len(positions)

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    feature = {
        "input_ids": ints(input_ids + [0] * pad),
        "input_mask": ints([1] * len(input_ids) + [0] * pad),
        "segment_ids": ints(segment_ids + [0] * pad),
        "masked_lm_positions": ints(positions + [0] * padp),
        "masked_lm_ids": ints(label_ids + [0] * padp),
        "masked_lm_weights": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0] * len(positions) + [0.0] * padp)),
        "next_sentence_labels": ints([int(is_random_next)]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# ----------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------


class Clock:
    """Wall time and CPU time (this process, all threads, plus finished child processes)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu():
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime


def row(name, count, clock, unit, baseline=None):
    rate, per_cpu = count / clock.wall, count / max(clock.cpu, 1e-9)
    ratio = "" if baseline is None else f"{rate / baseline:8.1f}x"
    print(f"  {name:<48} {count:>9,} {unit:<4} {clock.wall:7.2f} s {clock.cpu:7.2f} s  {rate:>10,.0f}/s "
          f"{per_cpu:>10,.0f}/CPU-s {ratio}")
    return rate


def header(unit):
    print(f"  {'engine':<48} {'count':>14} {'wall':>9} {'CPU':>9}  {unit + '/s':>12} {unit + '/CPU-s':>16} {'vs ref':>9}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4, help="how many of the 30 Wikipedia files")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--max-predictions", type=int, default=20)
    parser.add_argument("--dupe-factor", type=int, default=1, help="passes of the writers (baseline and offline)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="offline writer processes")
    parser.add_argument("--batch-size", type=int, default=256, help="streaming pipeline batch size")
    parser.add_argument("--vocab", default=str(DATA / "vocab" / "bert-base-uncased-vocab.txt"))
    args = parser.parse_args()

    files = sorted(glob.glob(str(DATA / "wikipedia" / "wiki_*")))[: args.files]
    tokenizer = load_tokenizer(args.vocab, lower_case=True)
    config = InstanceConfig(args.max_seq_length, args.max_predictions)
    docs = [d.sentences for d in text_reader.iter_documents(files)]
    sentences = [s for d in docs for s in d]
    megabytes = sum(len(s.encode("utf-8")) for s in sentences) / 1e6
    print(f"{len(files)} Wikipedia files: {len(docs):,} documents, {len(sentences):,} sentences, {megabytes:.1f} MB; "
          f"seq {args.max_seq_length}, vocab {tokenizer.vocab_size:,}; {os.cpu_count()} CPU cores "
          f"(load average {os.getloadavg()[0]:.1f})\n")

    # -- tokenization ---------------------------------------------------------------------------------
    print("Tokenization (the same sentences, no [CLS]/[SEP]):")
    header("tok")
    from tokenizers import BertWordPieceTokenizer

    hf = BertWordPieceTokenizer(args.vocab, lowercase=True)
    hf.encode_batch(sentences[:1000], add_special_tokens=False)
    with Clock() as clock:
        encoded = hf.encode_batch(sentences, add_special_tokens=False)
    hf_ids = [e.ids for e in encoded]
    tokens = sum(len(x) for x in hf_ids)
    hf_rate = row("Hugging Face tokenizers (Rust, encode_batch)", tokens, clock, "tok")
    graph = SentenceTokenizer(tokenizer)
    graph(sentences[:1000])
    with Clock() as clock:
        flat, splits = graph(sentences)
    row("bert_jax in-graph (tensorflow-text, one call)", len(flat), clock, "tok", hf_rate)
    python_tokenizer = load_tokenizer(args.vocab, lower_case=True)
    subset = sentences[: max(1, len(sentences) // 4)]
    with Clock() as clock:
        python_ids = [python_tokenizer.token_ids(s) for s in subset]
    row("bert_jax Python tokenizer (1/4 of the text, cold)", sum(map(len, python_ids)), clock, "tok", hf_rate)
    same = sum(flat[splits[k] : splits[k + 1]].tolist() == hf_ids[k] for k in range(len(sentences)))
    print(f"  ids: in-graph == Python on all {len(subset):,} compared; in-graph == Hugging Face on "
          f"{same:,}/{len(sentences):,} sentences\n")
    assert all(flat[splits[k] : splits[k + 1]].tolist() == python_ids[k] for k in range(len(subset)))

    # -- instances ------------------------------------------------------------------------------------
    print(f"Pretraining sequences (seq {args.max_seq_length}, dupe factor {args.dupe_factor} for the writers):")
    header("seq")
    with tempfile.TemporaryDirectory() as tmp:
        with Clock() as clock:
            count = baseline_write(files, load_tokenizer(args.vocab, lower_case=True), os.path.join(tmp, "base.tfrecord"),
                                   max_seq_length=args.max_seq_length, max_predictions=args.max_predictions,
                                   dupe_factor=args.dupe_factor, seed=0)
        base = row("baseline: pure Python SPEC §1 writer (1 process)", count, clock, "seq")

        with Clock() as clock:
            summary = prepare_pretraining_data(files, args.vocab, os.path.join(tmp, "w1"), config,
                                                                dupe_factor=args.dupe_factor, num_workers=1)
        row("bert_jax offline writer, 1 process", summary["instances"], clock, "seq", base)
        with Clock() as clock:
            summary = prepare_pretraining_data(files, args.vocab, os.path.join(tmp, "wk"), config,
                                                                dupe_factor=args.dupe_factor,
                                                                num_workers=args.workers)
        row(f"bert_jax offline writer, {args.workers} processes (incl. start)", summary["instances"], clock, "seq",
            base)

        stream = _measure_pipeline(files, tokenizer, args, mode="streaming")
        rate = row("bert_jax streaming tf.data (dynamic masking)", stream[0], stream[1], "seq", base)
        offline = _measure_pipeline(os.path.join(tmp, "w1", "*.tfrecord"), tokenizer, args, mode="offline")
        row("bert_jax offline tf.data reader", offline[0], offline[1], "seq", base)
    per_core = stream[0] / stream[1].cpu
    print(f"\nstreaming pipeline: {per_core:,.0f} sequences per CPU-second "
          f"({stream[1].cpu / stream[1].wall:.2f} cores busy on average, {rate:,.0f} seq/s wall); "
          f"goal >= 1,000 per core: {'met' if per_core >= 1000 else 'NOT met'}")


def _measure_pipeline(pattern, tokenizer, args, mode):
    """One pass over the input, after the first batch (graph building and tracing excluded)."""
    from bert_jax.data.pipeline import PipelineSpec, PretrainingIterator

    iterator = PretrainingIterator(PipelineSpec(
        input_pattern=pattern, mode=mode, batch_size=args.batch_size,
        max_seq_length=args.max_seq_length, max_predictions_per_seq=args.max_predictions, seed=0,
        process_index=0, process_count=1, repeat=False, drop_remainder=False,
    ), tokenizer=tokenizer)
    next(iterator)
    count = 0
    with Clock() as clock:
        for batch in iterator:
            count += len(batch["input_ids"])
    iterator.close()
    return count, clock


if __name__ == "__main__":
    main()
