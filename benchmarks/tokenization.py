"""Tokenization throughput: bert_jax's in-graph tokenizer (tf.data) and Python tokenizer against Hugging Face's
Rust `tokenizers` (BertTokenizerFast batch encode) on the same Wikipedia text, in the same run:

    python benchmarks/tokenization.py                  # first 2 MB of ../shared/data/wikipedia, uncased BERT vocab
    python benchmarks/tokenization.py --mb 8 --batch-size 2048 --cased

Every engine tokenizes the same paragraphs (one per line, no [CLS]/[SEP]) and must produce the same ids (checked).
Each timing is the median of --repeats runs after one warm-up run; the Python tokenizer is timed cold (a fresh
instance, so its word cache starts empty) and warm. Prints sentences/s, tokens/s, MB/s and the ratio to
BertTokenizerFast (goal: the in-graph tokenizer at least as fast).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

import tensorflow as tf  # noqa: E402

from bert_jax.graph_tokenizer import make_graph_tokenizer  # noqa: E402
from bert_jax.tokenizer import WordPieceTokenizer  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def read_wikipedia(megabytes: float) -> list[str]:
    """Paragraph lines (WikiExtractor <doc> markers and blank lines skipped) up to `megabytes` of UTF-8."""
    budget, lines = int(megabytes * 1e6), []
    for path in sorted((DATA / "wikipedia").glob("wiki_*")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("<") or not line.strip():
                    continue
                budget -= len(line.encode("utf-8"))
                if budget < 0:
                    return lines
                lines.append(line.rstrip("\n"))
    return lines


def median_time(run, repeats: int, warmup: int = 1):
    for _ in range(warmup):
        result = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=2.0, help="megabytes of Wikipedia text")
    parser.add_argument("--batch-size", type=int, default=1024, help="texts per batch (tf.data and HF)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cased", action="store_true", help="lower_case=False (default: uncased, as the vocab)")
    parser.add_argument("--vocab", default=str(DATA / "vocab" / "bert-base-uncased-vocab.txt"))
    args = parser.parse_args()

    from transformers import BertTokenizerFast

    lines = read_wikipedia(args.mb)
    megabytes = sum(len(line.encode("utf-8")) for line in lines) / 1e6
    lower_case = not args.cased
    print(f"{len(lines)} paragraphs, {megabytes:.2f} MB of Wikipedia; lower_case={lower_case}; "
          f"{os.cpu_count()} CPU cores; batch size {args.batch_size}")

    results = {}  # engine -> (seconds, token count)

    # Hugging Face: the transformers wrapper (what users call) and the raw Rust batch encoder.
    hf = BertTokenizerFast(vocab=args.vocab, do_lower_case=lower_case)
    batches = [lines[i : i + args.batch_size] for i in range(0, len(lines), args.batch_size)]

    def hf_call():
        return [ids for batch in batches for ids in hf(batch, add_special_tokens=False)["input_ids"]]

    def hf_raw():
        return [e.ids for batch in batches for e in hf.backend_tokenizer.encode_batch(batch, add_special_tokens=False)]

    seconds, reference = median_time(hf_call, args.repeats)
    results["HF BertTokenizerFast (batch)"] = (seconds, sum(map(len, reference)))
    seconds, ids = median_time(hf_raw, args.repeats)
    assert ids == reference
    results["HF tokenizers encode_batch (raw Rust)"] = (seconds, sum(map(len, ids)))

    # bert_jax in-graph, inside tf.data (the pretraining pipeline's way) and eagerly.
    python_tokenizer = WordPieceTokenizer(args.vocab, lower_case=lower_case)
    start = time.perf_counter()
    graph = make_graph_tokenizer(python_tokenizer)
    build_seconds = time.perf_counter() - start
    dataset = (tf.data.Dataset.from_tensor_slices(lines).batch(args.batch_size)
               .map(graph.tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .prefetch(tf.data.AUTOTUNE))

    def graph_tf_data():
        return [b for b in dataset]

    def graph_eager():
        return [graph.tokenize(tf.constant(batch)) for batch in batches]

    for name, run in (("bert_jax graph tokenizer (tf.data map)", graph_tf_data),
                      ("bert_jax graph tokenizer (eager batches)", graph_eager)):
        seconds, ragged = median_time(run, args.repeats)
        ids = [row for batch in ragged for row in batch.to_list()]
        assert ids == reference, f"{name}: ids differ from Hugging Face"
        results[name] = (seconds, sum(map(len, ids)))

    # bert_jax Python: a fresh instance (cold word cache), then the same instance again (warm).
    def python_cold():
        fresh = WordPieceTokenizer(args.vocab, lower_case=lower_case)
        return [fresh.token_ids(line) for line in lines]

    seconds, ids = median_time(python_cold, args.repeats, warmup=0)
    assert ids == reference
    results["bert_jax Python tokenizer (cold cache)"] = (seconds, sum(map(len, ids)))
    seconds, ids = median_time(lambda: [python_tokenizer.token_ids(line) for line in lines], args.repeats)
    results["bert_jax Python tokenizer (warm cache)"] = (seconds, sum(map(len, ids)))

    hf_seconds = results["HF BertTokenizerFast (batch)"][0]
    print(f"\n{'engine':<42} {'seconds':>8} {'sentences/s':>12} {'tokens/s':>11} {'MB/s':>6} {'speed vs HF':>12}")
    for name, (seconds, tokens) in results.items():
        print(f"{name:<42} {seconds:>8.2f} {len(lines) / seconds:>12,.0f} {tokens / seconds:>11,.0f} "
              f"{megabytes / seconds:>6.2f} {hf_seconds / seconds:>11.2f}x")
    print(f"\n(all engines produced the same {results['HF BertTokenizerFast (batch)'][1]:,} ids; "
          f"building the graph tokenizer took {build_seconds:.1f}s, once per process)")


if __name__ == "__main__":
    main()
