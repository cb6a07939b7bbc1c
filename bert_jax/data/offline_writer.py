"""The offline writer: text -> sharded TFRecords of masked pretraining instances, in parallel over files.

`prepare_pretraining_data` (behind `python -m bert_jax prepare-pretraining-data`) writes
`part-XXXXX-of-NNNNN.tfrecord` shards with the original feature names and `pretraining_data.json` (settings,
shard names and a summary: what was read, made and skipped, and why). It works per input file (in parallel
over files with multiprocessing; each file has its own seeded RNG and its own output shard, so the output
does not depend on the number of workers) and streams: a file is read in blocks of about `block_chars`
characters of text, and each block is one run of the original algorithm (bert_jax/data/instances.py) -- its
documents are shuffled, `dupe_factor` passes make instances, and the instances are shuffled. Random-next
segments B are therefore drawn from the documents of the same block (a bounded buffer of neighbouring
documents) rather than from the whole corpus, which keeps memory bounded on a corpus larger than RAM. A file
smaller than one block gives exactly the original's output for that file. Worker processes tokenize with
the Python tokenizer (in-graph for files over GRAPH_TOKENIZER_MIN_BYTES) and write the TFRecord framing
themselves (bert_jax/data/tfrecord.py), so they do not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import random
import re
import time
from collections.abc import Sequence

import numpy as np

from bert_jax.data import text_reader
from bert_jax.data.instances import (
    GenerationStats,
    InstanceConfig,
    SentenceTokenizer,
    VocabInfo,
    create_training_instances,
    gc_paused,
    iter_document_blocks,
    tokenize_documents,
)
from bert_jax.data.tfrecord import METADATA_FILE, serialize_instance, write_tfrecords
from bert_jax.tokenizer import load_tokenizer

# The shards this writer names (part-XXXXX-of-NNNNN.tfrecord), finished or not: what an earlier run leaves.
SHARD_PATTERN = re.compile(r"^part-\d{5,}-of-\d{5,}\.tfrecord(\.incomplete)?$")
TFRECORD_CHUNK = 4096  # instances serialized and framed together (the CRCs are vectorised over a chunk)


# The writer tokenizes a file in-graph (tensorflow-text) from this size on, else with the Python tokenizer
# (same ids). In-graph is faster per token but takes seconds to build per worker process; with dupe_factor
# passes over the tokens, tokenization is a small share of the work on usual (~1 MB) files.
GRAPH_TOKENIZER_MIN_BYTES = 32 << 20


@dataclasses.dataclass(frozen=True)
class _WriterJob:
    input_file: str
    output_file: str
    seed: int
    tokenizer_path: str
    lower_case: bool | None
    config: InstanceConfig
    dupe_factor: int
    text_format: str
    block_chars: int


def unit_seed(seed: int, unit_index: int) -> int:
    """The RNG seed of one input file: independent streams per file, the same for any worker count."""
    return int(np.random.SeedSequence([seed, unit_index]).generate_state(1, np.uint64)[0])


def _write_file(job: _WriterJob) -> dict:
    """One input file -> one TFRecord shard. Runs in a worker process (without TensorFlow, unless the file
    is big enough for the in-graph tokenizer)."""
    tokenizer, vocab = _worker_tokenizer(job.tokenizer_path, job.lower_case)
    big_file = os.path.getsize(job.input_file) >= GRAPH_TOKENIZER_MIN_BYTES
    sentence_tokenizer = SentenceTokenizer(tokenizer, use_graph=big_file)
    rng = random.Random(job.seed)
    read_stats, gen_stats = text_reader.ReadStats(), GenerationStats()
    documents = text_reader.iter_file_documents(job.input_file, job.text_format, read_stats)
    temporary = job.output_file + ".incomplete"
    written = 0
    with open(temporary, "wb") as f:
        for block in iter_document_blocks(documents, job.block_chars):
            with gc_paused():
                tokenized = tokenize_documents(block, sentence_tokenizer, job.config, gen_stats)
                instances = create_training_instances(
                    tokenized, job.config, vocab, rng, dupe_factor=job.dupe_factor, stats=gen_stats
                )
                for first in range(0, len(instances), TFRECORD_CHUNK):
                    chunk = instances[first : first + TFRECORD_CHUNK]
                    write_tfrecords(f, [serialize_instance(instance, job.config) for instance in chunk])
                written += len(instances)
    if written:
        os.replace(temporary, job.output_file)
    else:
        os.remove(temporary)
    return {"input": job.input_file, "output": job.output_file if written else None, "instances": written,
            "read": read_stats, "generation": gen_stats}


@functools.lru_cache(maxsize=4)
def _worker_tokenizer(path: str, lower_case: bool | None):
    """One tokenizer per worker process: its word cache stays warm from one file to the next."""
    tokenizer = load_tokenizer(path, lower_case=lower_case)
    return tokenizer, VocabInfo.from_tokenizer(tokenizer)


def prepare_pretraining_data(
    inputs: str | Sequence[str],
    vocab: str,
    output_dir: str,
    config: InstanceConfig = InstanceConfig(),
    *,
    dupe_factor: int = 10,
    seed: int = 12345,
    num_workers: int = 1,
    lower_case: bool | None = None,
    text_format: str = "auto",
    block_chars: int = 4_000_000,
    overwrite: bool = False,
) -> dict:
    """Writes `output_dir/part-XXXXX-of-NNNNN.tfrecord` (one per input file) and `pretraining_data.json`.

    Returns the summary: counts of documents, sentences, instances, and what was skipped and why.
    Raises FileNotFoundError / ValueError (naming the file) for missing inputs, a bad vocabulary, a corrupt
    .gz input, or a corpus without a single usable document; FileExistsError if `output_dir` holds an
    earlier run's shards or pretraining_data.json, unless `overwrite`: then those files (and only those,
    by this writer's naming pattern) are removed first, their count in the summary's
    `removed_earlier_files`. A run that fails leaves none of its own shards behind.
    """
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor={dupe_factor} must be >= 1")
    if text_format not in text_reader.FORMATS:
        raise ValueError(f"text format {text_format!r} is not one of {text_reader.FORMATS}")
    files = text_reader.resolve_input_files(inputs)
    tokenizer = load_tokenizer(vocab, lower_case=lower_case)  # fails here, naming the file, if unusable
    VocabInfo.from_tokenizer(tokenizer)
    earlier = earlier_outputs(output_dir)
    if earlier and not overwrite:
        raise FileExistsError(
            f"{output_dir}: holds {len(earlier)} file(s) of an earlier run ({os.path.basename(earlier[0])}"
            f"{', ...' if len(earlier) > 1 else ''}); pass --overwrite (overwrite=True) to remove them, or "
            "choose another output directory"
        )
    for path in earlier:  # after every check above: a rejected run removes nothing
        os.remove(path)
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    width = max(5, len(str(len(files))))
    jobs = [
        _WriterJob(path, os.path.join(output_dir, f"part-{i:0{width}d}-of-{len(files):0{width}d}.tfrecord"),
                   unit_seed(seed, i), vocab, tokenizer.lower_case, config, dupe_factor, text_format, block_chars)
        for i, path in enumerate(files)
    ]
    started = time.time()
    num_workers = max(1, min(num_workers, len(jobs)))
    try:
        if num_workers == 1:
            results = [_write_file(job) for job in jobs]
        else:
            # spawn: TensorFlow is not fork-safe once imported; each worker imports it afresh.
            with multiprocessing.get_context("spawn").Pool(num_workers, initializer=_limit_worker_threads) as pool:
                results = pool.map(_write_file, jobs, chunksize=1)
    except BaseException:
        # One failed file (a corrupt .gz, Ctrl-C) fails the run: its shards, finished or not, are an
        # incomplete set without pretraining_data.json. (The pool has stopped its workers by now.)
        for job in jobs:
            for path in (job.output_file, job.output_file + ".incomplete"):
                if os.path.exists(path):
                    os.remove(path)
        if created and not os.listdir(output_dir):
            os.rmdir(output_dir)
        raise
    elapsed = time.time() - started

    read_stats, gen_stats = text_reader.ReadStats(), GenerationStats()
    for result in results:
        read_stats.merge(result["read"])
        gen_stats.merge(result["generation"])
    outputs = [r["output"] for r in results if r["output"]]
    summary = {
        "input_files": len(files),
        "output_files": len(outputs),
        "documents": gen_stats.documents,
        "sentences": gen_stats.sentences,
        "tokens": gen_stats.tokens,
        "instances": gen_stats.instances,
        "random_next_fraction": gen_stats.random_next / max(1, gen_stats.instances),
        "read": read_stats.to_dict(),
        "generation": gen_stats.to_dict(),
        "skipped": _skip_summary(read_stats, gen_stats, results),
        "seconds": round(elapsed, 3),
        "instances_per_second": round(gen_stats.instances / max(elapsed, 1e-9), 1),
        "removed_earlier_files": len(earlier),
    }
    if not outputs:
        raise ValueError(
            f"no usable document in {len(files)} input file(s) ({files[0]}{', ...' if len(files) > 1 else ''}): "
            + read_stats.describe_skips()
        )
    metadata = {
        "format": "bert_jax pretraining TFRecords (google-research/bert feature names)",
        "config": dataclasses.asdict(config),
        "dupe_factor": dupe_factor,
        "seed": seed,
        "vocab": os.path.abspath(vocab),
        "vocab_size": tokenizer.vocab_size,
        "lower_case": tokenizer.lower_case,
        "files": [os.path.basename(p) for p in outputs],
        "inputs": [os.path.abspath(p) for p in files],
        "summary": summary,
    }
    with open(os.path.join(output_dir, METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2)
        f.write("\n")
    return summary


def _limit_worker_threads():
    # One worker per core: TensorFlow's own thread pools would oversubscribe the machine.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _skip_summary(read_stats: text_reader.ReadStats, gen_stats: GenerationStats, results: list[dict]) -> dict:
    skipped = dict(read_stats.skipped)
    if gen_stats.skipped_sentences_without_tokens:
        skipped["sentences without tokens"] = gen_stats.skipped_sentences_without_tokens
    if gen_stats.skipped_documents_without_tokens:
        skipped["documents without tokens"] = gen_stats.skipped_documents_without_tokens
    empty_outputs = [r["input"] for r in results if not r["output"]]
    if empty_outputs:
        skipped["input files without output"] = len(empty_outputs)
    return skipped


def earlier_outputs(output_dir: str) -> list[str]:
    """The files of an earlier run in `output_dir` (sorted): shards named as this writer names them, finished
    or not, and pretraining_data.json. Other files are not this writer's and are left alone."""
    if not os.path.isdir(output_dir):
        return []
    names = sorted(n for n in os.listdir(output_dir) if SHARD_PATTERN.match(n) or n == METADATA_FILE)
    return [os.path.join(output_dir, n) for n in names]


def describe_summary(summary: dict) -> str:
    """Human-readable lines of a writer summary."""
    lines = [
        f"input files: {summary['input_files']}, output shards: {summary['output_files']}",
        f"documents: {summary['documents']}, sentences: {summary['sentences']}, tokens: {summary['tokens']}",
        f"instances: {summary['instances']} (random next {summary['random_next_fraction']:.1%}), "
        f"{summary['instances_per_second']:.0f}/s",
    ]
    if summary.get("removed_earlier_files"):
        lines.insert(0, f"removed {summary['removed_earlier_files']} file(s) of an earlier run (--overwrite)")
    gen = summary["generation"]
    lines.append(
        f"kept as is: {gen['one_sentence_documents']} one-sentence documents (B drawn at random), "
        f"{gen['one_token_documents']} one-token documents, {gen['long_sentences']} sentences longer than "
        f"the sequence (truncated)"
    )
    if summary["skipped"]:
        examples = summary["read"]["skipped_examples"]
        parts = [f"{count} {reason}" + (f" (e.g. {examples[reason][0]})" if examples.get(reason) else "")
                 for reason, count in sorted(summary["skipped"].items())]
        lines.append("skipped: " + "; ".join(parts))
    else:
        lines.append("skipped: nothing")
    return "\n".join(lines)
