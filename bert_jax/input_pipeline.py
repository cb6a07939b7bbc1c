"""tf.data input for BERT pretraining: per-host shards -> NSP pairs -> masks -> batches -> global arrays.

Public API (used by the trainer):

    make_pretraining_dataset(*, input_pattern, tfds_name, tokenizer, mode, batch_size, max_seq_length,
                             max_predictions_per_seq, masked_lm_prob=0.15, short_seq_prob=0.1,
                             whole_word_masking=False, seed=0, process_index=None, process_count=None,
                             shuffle_buffer=None, repeat=True, ...) -> tf.data.Dataset
        batches (this host's rows) of the seven original features: input_ids, input_mask, segment_ids,
        masked_lm_positions, masked_lm_ids (int32 [B, L] / [B, P]), masked_lm_weights (float32 [B, P]),
        next_sentence_labels (int32 [B]).

    PretrainingIterator(**same keyword arguments)
        __next__() -> dict of numpy arrays (the same features); get_state() -> a small JSON-serialisable
        dict; set_state(state) repositions it exactly; rebuild(**changes) for a new sequence-length phase.

    make_global_batch(local_batch, sharding_or_mesh) -> dict of global jax.Arrays.

Modes:
  'streaming'  text in (files in any `text_reader` format, or a TFDS text dataset by name); NSP pairs are
               made on the fly by the original pairing rules (bert_jax.pretraining_data) and masks are drawn
               anew every time an example is read (dynamic masking, RoBERTa style; `dynamic_masking=False`
               instead freezes masks drawn by the original Python algorithm, `dupe_factor` passes per block).
               No offline step is needed.
  'offline'    reads the TFRecords written by `python -m bert_jax prepare-pretraining-data`.

How a stream is made (streaming mode):
  1. Python generator: walks this host's files (or TFDS slice) in a seeded per-epoch file order and groups
     consecutive documents into *blocks* of `shuffle_buffer` documents (default 1,000); yields each
     block's sentences (text, paragraphs split into sentences by `text_reader`).
  2. Graph: the block is tokenized in one call by bert_jax.graph_tokenizer (tensorflow-text; the ids of
     the Python tokenizer), blocks in parallel.
  3. numpy_function: the block is paired by the original algorithm (bert_jax.pretraining_data) with an
     RNG seeded by (seed, host, block number): its documents are shuffled, random-next B is drawn from
     the other documents of the block -- the bounded pool that keeps memory flat on any corpus -- and
     its instances are shuffled.
  4. Graph: rows are numbered (the example's index in this host's stream), batched, and masked
     vectorised over the batch (`pretraining_data.mask_batch_tf`), in parallel; an example's mask depends
     on (seed, host, index) only.
Offline mode reads the TFRecord files in the same blocks (records, default 10,000, shuffled per block)
and parses them in the graph. The Python stages run no TensorFlow ops; `_ExitGuard` lets a process
exit while a pipeline is still running (a TF 2.21 hang otherwise).

Multi-host. Each process reads a disjoint shard chosen by `process_index` / `process_count` (defaults:
jax.process_index() / jax.process_count()): file i goes to process i % count; with fewer files than
processes every process reads every file and keeps the documents (records) whose ordinal in the file is
its own modulo count; a TFDS split is cut into even slices read through `tfds.core.ReadInstruction`.
`make_global_batch` turns the per-host batches into global jax.Arrays.

Determinism and resumption. A seed fixes the stream. The state is the position where the block holding
the last consumed example starts (epoch, file, byte offset, ordinal, block number), how many of that
block's examples were consumed, and the next example index. `set_state` seeks there, regenerates that one
block (its RNG depends on the block number only) and skips the consumed examples, so a resumed run sees
exactly the examples of the uninterrupted run; the cost is one block, whatever the position. This is the
"deterministic skip counter" choice, made cheap by seeking files to byte offsets: the state stays a few
integers that fit in the trainer's JSON checkpoint metadata (a tf.data iterator checkpoint would carry
buffers and be opaque bytes).

Sequence-length phases (128 then 512): build a new pipeline with the new max_seq_length /
max_predictions_per_seq / batch_size -- `PretrainingIterator.rebuild(...)`, which in streaming mode
continues from the start of the current block (documents of that block may be seen once more, none is
skipped). Offline mode needs TFRecords written at the new length.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import random
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from bert_jax import pretraining_data as pdata
from bert_jax import text_reader

MODES = ("streaming", "offline")
# The mesh axes that split a batch: bert_jax.sharding.BATCH_AXES (not imported here: it pulls in flax).
BATCH_AXES = ("data", "fsdp")
DEFAULT_DOCUMENTS_PER_BLOCK = 1_000
DEFAULT_RECORDS_PER_BLOCK = 10_000
STATE_VERSION = 1
_META_PREFIX = "_"  # per-example bookkeeping carried through tf.data, stripped before the trainer sees it


# ----------------------------------------------------------------------------------------------------
# The specification of a stream
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """Everything that fixes one host's stream."""

    mode: str
    files: tuple[str, ...]  # resolved input files (empty for TFDS)
    tfds_name: str | None
    tfds_split: str
    tfds_data_dir: str | None
    tfds_text_key: str
    text_format: str
    batch_size: int
    config: pdata.InstanceConfig
    seed: int
    process_index: int
    process_count: int
    block_size: int
    repeat: bool
    shuffle: bool
    dynamic_masking: bool
    dupe_factor: int
    drop_remainder: bool

    def fingerprint(self) -> str:
        """Identifies the stream (input and seed); lengths and batch size may change between phases.
        Files count by name and size, so that a corpus moved to another directory keeps its positions."""
        files = [(os.path.basename(p), os.path.getsize(p)) for p in self.files]
        ident = [self.mode, files, self.tfds_name, self.tfds_split, self.text_format, self.seed,
                 self.process_index, self.process_count, self.shuffle, self.dynamic_masking, self.dupe_factor]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]

    def shape_key(self) -> list:
        c = self.config
        return [self.batch_size, c.max_seq_length, c.max_predictions_per_seq, c.masked_lm_prob, c.short_seq_prob,
                c.whole_word_masking, self.block_size]


def _make_spec(
    *,
    input_pattern,
    tfds_name,
    mode,
    batch_size,
    max_seq_length,
    max_predictions_per_seq,
    masked_lm_prob,
    short_seq_prob,
    whole_word_masking,
    seed,
    process_index,
    process_count,
    shuffle_buffer,
    repeat,
    shuffle,
    text_format,
    tfds_split,
    tfds_data_dir,
    tfds_text_key,
    dynamic_masking,
    dupe_factor,
    drop_remainder,
) -> PipelineSpec:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    if (input_pattern is None) == (tfds_name is None):
        raise ValueError("give exactly one of input_pattern (files) and tfds_name")
    if mode == "offline" and tfds_name is not None:
        raise ValueError("mode='offline' reads TFRecords from prepare-pretraining-data: give input_pattern")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor={dupe_factor} must be >= 1")
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    files: tuple[str, ...] = ()
    if input_pattern is not None:
        files = tuple(text_reader.resolve_input_files(input_pattern))
    default_block = DEFAULT_RECORDS_PER_BLOCK if mode == "offline" else DEFAULT_DOCUMENTS_PER_BLOCK
    block_size = default_block if shuffle_buffer is None else int(shuffle_buffer)
    if block_size < 1:
        raise ValueError(f"shuffle_buffer={shuffle_buffer} must be >= 1")
    return PipelineSpec(
        mode=mode, files=files, tfds_name=tfds_name, tfds_split=tfds_split, tfds_data_dir=tfds_data_dir,
        tfds_text_key=tfds_text_key, text_format=text_format, batch_size=int(batch_size),
        config=pdata.InstanceConfig(max_seq_length, max_predictions_per_seq, masked_lm_prob, short_seq_prob,
                                    whole_word_masking),
        seed=int(seed), process_index=int(process_index), process_count=int(process_count),
        block_size=block_size, repeat=bool(repeat), shuffle=bool(shuffle), dynamic_masking=bool(dynamic_masking),
        dupe_factor=int(dupe_factor), drop_remainder=bool(drop_remainder),
    )


# ----------------------------------------------------------------------------------------------------
# Positions in this host's shard
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Position:
    """Where reading resumes: epoch, index in the epoch's file order, byte offset in that file (or the
    example index in a TFDS slice), and the ordinal of the next item in the file (for dealt shards)."""

    epoch: int = 0
    cursor: int = 0
    offset: int = 0
    ordinal: int = 0


class _FileShard:
    """This host's share of a file list: whole files (file i to host i % count) when there are enough
    files, else every file with its items dealt round-robin by ordinal."""

    def __init__(self, files: Sequence[str], spec: PipelineSpec):
        self.spec = spec
        if len(files) >= spec.process_count:
            self.files = list(files[spec.process_index :: spec.process_count])
            self.deal = None
        else:
            self.files = list(files)
            self.deal = (spec.process_index, spec.process_count)

    def order(self, epoch: int) -> list[int]:
        if not self.spec.shuffle:
            return list(range(len(self.files)))
        rng = np.random.default_rng([self.spec.seed, self.spec.process_index, epoch])
        return rng.permutation(len(self.files)).tolist()

    def iterate(self, read: Callable[[str, int], Iterator[tuple[object, int]]], start: Position):
        """(item, position after it) from `start` to the end of the epoch. `read(path, offset)` yields
        (item, byte offset after the item)."""
        order = self.order(start.epoch)
        for cursor in range(start.cursor, len(order)):
            path = self.files[order[cursor]]
            offset, ordinal = (start.offset, start.ordinal) if cursor == start.cursor else (0, 0)
            for item, end_offset in read(path, offset):
                mine = self.deal is None or ordinal % self.deal[1] == self.deal[0]
                ordinal += 1
                if mine:
                    yield item, Position(start.epoch, cursor, end_offset, ordinal)

    def describe(self) -> str:
        head = ", ".join(self.files[:3]) + (", ..." if len(self.files) > 3 else "")
        return f"{len(self.files)} file(s) ({head})"


class _TfdsShard:
    """This host's even slice of a TFDS split; `Position.offset` is the example index within the slice."""

    def __init__(self, spec: PipelineSpec, source: "_Source"):
        self.spec, self.source = spec, source

    def iterate(self, read, start: Position):
        del read
        for doc in text_reader.iter_tfds_documents(
            self.spec.tfds_name, split=self.spec.tfds_split, data_dir=self.spec.tfds_data_dir,
            text_key=self.spec.tfds_text_key, process_index=self.spec.process_index,
            process_count=self.spec.process_count, start=start.offset, stats=self.source.read_stats,
        ):
            yield doc, Position(start.epoch, 0, doc.end_offset, 0)

    def describe(self) -> str:
        return f"TFDS {self.spec.tfds_name}[{self.spec.tfds_split}]"


# ----------------------------------------------------------------------------------------------------
# Blocks: the unit of shuffling, pairing and resumption
# ----------------------------------------------------------------------------------------------------


class _Source:
    """The Python half of a pipeline: this host's items grouped into numbered blocks, the registry of
    where each block started (what `get_state` needs), and the pairing of a tokenized block.

    Nothing here runs TensorFlow ops: the generator and the pairing run inside tf.data (from_generator,
    numpy_function), and a tf.data thread caught inside an eager op at interpreter exit hangs the
    process. Tokenization is a graph stage between the two.
    """

    def __init__(self, spec: PipelineSpec, tokenizer=None):
        self.spec = spec
        self.read_stats = text_reader.ReadStats()
        self.generation_stats = pdata.GenerationStats()
        self.block_starts: dict[int, Position] = {}
        if spec.tfds_name is not None:
            self.shard = _TfdsShard(spec, self)
        else:
            self.shard = _FileShard(spec.files, spec)
        if spec.mode == "streaming":
            if tokenizer is None:
                raise ValueError("mode='streaming' needs a tokenizer")
            self.tokenizer = tokenizer
            self.vocab = pdata.VocabInfo.from_tokenizer(tokenizer)

    # -- reading items ------------------------------------------------------------------------------

    def _read_documents(self, path: str, offset: int):
        for doc in text_reader.iter_file_documents(path, self.spec.text_format, self.read_stats, start_offset=offset):
            yield doc, doc.end_offset

    def _read(self):
        return _iter_tfrecords if self.spec.mode == "offline" else self._read_documents

    def check_not_empty(self) -> None:
        """Fails early, naming the input, when this host's shard holds no item at all."""
        counted, self.read_stats = self.read_stats, text_reader.ReadStats()  # a look ahead, not a pass
        try:
            for _ in self.shard.iterate(self._read(), Position()):
                return
            raise ValueError(
                f"no usable {'record' if self.spec.mode == 'offline' else 'document'} for process "
                f"{self.spec.process_index}/{self.spec.process_count} in {self.shard.describe()}: "
                + self.read_stats.describe_skips()
            )
        finally:
            self.read_stats = counted

    # -- blocks -------------------------------------------------------------------------------------

    def blocks(self, start: Position, number: int) -> Iterator[tuple[int, list]]:
        """(block number, items) from `start`, epoch after epoch when repeating."""
        spec = self.spec
        epoch_start = start
        self._register(number, start)
        while True:
            items: list = []
            produced = 0
            for item, after in self.shard.iterate(self._read(), epoch_start):
                items.append(item)
                if len(items) == spec.block_size:
                    yield number, items
                    produced += len(items)
                    number, items = number + 1, []
                    self._register(number, after)
            if items:
                yield number, items
                produced += len(items)
                number += 1
            if not spec.repeat:
                return
            if produced == 0 and epoch_start == Position(epoch_start.epoch):
                raise ValueError(f"a whole epoch of {self.shard.describe()} produced nothing: "
                                 + self.read_stats.describe_skips())
            epoch_start = Position(epoch_start.epoch + 1)
            self._register(number, epoch_start)

    def _register(self, number: int, start: Position) -> None:
        self.block_starts[number] = start
        self.block_starts.pop(number - 4096, None)  # bounded: tf.data runs only a few blocks ahead

    def elements(self, state: dict) -> Iterator[dict[str, np.ndarray]]:
        """`_elements`, with each step bracketed for `_ExitGuard` (and none after interpreter exit began)."""
        inner = self._elements(state)
        while True:
            with _EXIT_GUARD.python_call():
                if _EXIT_GUARD.stopping:
                    return
                try:
                    element = next(inner)
                except StopIteration:
                    return
            yield element

    def _elements(self, state: dict) -> Iterator[dict[str, np.ndarray]]:
        """The generator of the pipeline: one element per block, from the position in `state`.

        offline:   the block's serialized records (shuffled), with their block number and index;
        streaming: the block's sentences, the sentence index where each document starts, the block
                   number, and how many of its instances to skip (non-zero for a resumed block only).
        """
        start = Position(state["epoch"], state["cursor"], state["offset"], state["ordinal"])
        for number, items in self.blocks(start, state["block"]):
            skip = state["skip"] if number == state["block"] else 0
            if self.spec.mode == "offline":
                if self.spec.shuffle:
                    random.Random(_block_seed(self.spec, number)).shuffle(items)
                if skip < len(items):
                    yield {"serialized": np.array(items[skip:], dtype=object),
                           "_block": np.full([len(items) - skip], number, np.int64),
                           "_index": np.arange(skip, len(items), dtype=np.int64)}
                continue
            doc_splits = np.zeros([len(items) + 1], np.int64)
            np.cumsum([len(d.sentences) for d in items], out=doc_splits[1:])
            yield {"sentences": np.array([s for d in items for s in d.sentences], dtype=object),
                   "doc_splits": doc_splits, "block": np.int64(number), "skip": np.int64(skip)}

    def pair_block(self, ids, splits, doc_splits, number, skip):
        """numpy_function body: a tokenized block -> rows of NSP pairs (SPEC §1), from instance `skip` on."""
        with _EXIT_GUARD.python_call(), pdata.gc_paused():
            if _EXIT_GUARD.stopping:
                ids, splits, doc_splits = ids[:0], splits[:1], doc_splits[:1]  # nothing more, quickly
            return self._pair_block(ids, splits, doc_splits, number, skip)

    def _pair_block(self, ids, splits, doc_splits, number, skip):
        documents = pdata.documents_from_ids(ids, splits, doc_splits, self.spec.config, self.generation_stats)
        rng = random.Random(_block_seed(self.spec, int(number)))
        instances = pdata.create_training_instances(
            documents, self.spec.config, self.vocab, rng, dupe_factor=self.spec.dupe_factor,
            mask=not self.spec.dynamic_masking, stats=self.generation_stats,
        )[int(skip):]
        arrays = _instances_to_arrays(instances, self.spec, self.vocab)
        arrays["_block"] = np.full([len(instances)], number, np.int64)
        arrays["_index"] = np.arange(int(skip), int(skip) + len(instances), dtype=np.int64)
        return [arrays[name] for name in _pair_names(self.spec)]


class _ExitGuard:
    """Lets a process exit while pipelines are running.

    With TensorFlow 2.21, a tf.data pipeline whose Python stages (from_generator, numpy_function) are busy
    when the interpreter finalizes can hang the process forever. At exit (an atexit hook registered after
    TensorFlow is imported, so it runs before TensorFlow's own) this closes the live PretrainingIterators,
    makes every further Python stage call return at once, and waits until none has run for a moment.
    """

    QUIET_SECONDS = 0.2
    MAX_WAIT_SECONDS = 10.0

    def __init__(self):
        self.stopping = False
        self._lock = threading.Lock()
        self._active = 0
        self._last_change = time.monotonic()
        self._iterators: "weakref.WeakSet[PretrainingIterator]" = weakref.WeakSet()
        self._registered = False

    @contextlib.contextmanager
    def python_call(self):
        with self._lock:
            self._active += 1
            self._last_change = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                self._last_change = time.monotonic()

    def watch(self, iterator=None) -> None:
        if iterator is not None:
            self._iterators.add(iterator)
        if not self._registered:
            import tensorflow  # noqa: F401  (so that this hook runs before TensorFlow's)

            atexit.register(self.quiesce)
            self._registered = True

    def quiesce(self) -> None:
        self.stopping = True
        for iterator in list(self._iterators):
            iterator.close()
        deadline = time.monotonic() + self.MAX_WAIT_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                if self._active == 0 and time.monotonic() - self._last_change > self.QUIET_SECONDS:
                    return
            time.sleep(0.02)


_EXIT_GUARD = _ExitGuard()


def _pair_names(spec: PipelineSpec) -> list[str]:
    names = ["input_ids", "segment_ids", "lengths", "next_sentence_labels", "_block", "_index"]
    if not spec.dynamic_masking:
        names += ["masked_lm_positions", "masked_lm_ids", "masked_lm_weights"]
    return names


def _block_seed(spec: PipelineSpec, number: int) -> int:
    return int(np.random.SeedSequence([spec.seed, spec.process_index, number]).generate_state(1, np.uint64)[0])


def _instances_to_arrays(instances, spec: PipelineSpec, vocab: pdata.VocabInfo) -> dict[str, np.ndarray]:
    """Rows of unmasked (dynamic) or masked (static) instances, padded to max_seq_length."""
    seq, preds = spec.config.max_seq_length, spec.config.max_predictions_per_seq
    n = len(instances)
    lengths = np.fromiter((len(i.tokens) for i in instances), np.int32, count=n)
    b_starts = np.fromiter((i.segment_ids.index(1) for i in instances), np.int32, count=n)
    labels = np.fromiter((i.is_random_next for i in instances), np.int32, count=n)
    positions = np.arange(seq, dtype=np.int32)[None, :]
    real = positions < lengths[:, None]  # [n, seq]
    input_ids = np.full([n, seq], vocab.pad_id, np.int32)
    input_ids[real] = np.fromiter(itertools.chain.from_iterable(i.tokens for i in instances), np.int32,
                                  count=int(lengths.sum()))  # row-major: each row's tokens in order
    segment_ids = ((positions >= b_starts[:, None]) & real).astype(np.int32)
    arrays = {"input_ids": input_ids, "segment_ids": segment_ids, "lengths": lengths, "next_sentence_labels": labels}
    if not spec.dynamic_masking:
        masked_positions = np.zeros([n, preds], np.int32)
        masked_ids = np.zeros([n, preds], np.int32)
        weights = np.zeros([n, preds], np.float32)
        for i, instance in enumerate(instances):
            m = len(instance.masked_lm_positions)
            masked_positions[i, :m] = instance.masked_lm_positions
            masked_ids[i, :m] = instance.masked_lm_labels
            weights[i, :m] = 1.0
        arrays.update(masked_lm_positions=masked_positions, masked_lm_ids=masked_ids, masked_lm_weights=weights)
    return arrays


def _iter_tfrecords(path: str, offset: int):
    """(serialized record, byte offset after it) of a TFRecord file from `offset` (a record boundary).

    Framing: uint64 length, uint32 CRC of the length, data, uint32 CRC of the data. Reading it here
    (rather than with TFRecordDataset) is what lets a resumed run seek straight to a byte offset.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise ValueError(f"{path}: truncated TFRecord header at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise ValueError(f"{path}: truncated TFRecord at byte {offset} (length {length})")
            offset += 16 + length
            yield data, offset


# ----------------------------------------------------------------------------------------------------
# tf.data
# ----------------------------------------------------------------------------------------------------


def _initial_state(spec: PipelineSpec) -> dict:
    return {"epoch": 0, "cursor": 0, "offset": 0, "ordinal": 0, "block": 0, "skip": 0, "example": 0}


def _finish_fn(spec: PipelineSpec, vocab: pdata.VocabInfo | None):
    """The in-graph half: parse records (offline) or mask (streaming), then the seven features."""
    import tensorflow as tf

    config = spec.config
    meta_names = ("_key", "_block", "_index")

    if spec.mode == "offline":
        feature_spec = pdata.feature_spec(config)

        @tf.autograph.experimental.do_not_convert
        def finish(batch):
            parsed = tf.io.parse_example(batch["serialized"], feature_spec)
            out = {name: tf.cast(parsed[name], tf.int32) for name in pdata.FEATURE_NAMES if name != "masked_lm_weights"}
            out["masked_lm_weights"] = parsed["masked_lm_weights"]
            out["next_sentence_labels"] = out["next_sentence_labels"][:, 0]
            return {**out, **{k: batch[k] for k in meta_names}}

        return finish

    # The masks of this host's stream have a seed of their own; example keys index the stream.
    mask_seed = int(np.random.SeedSequence([spec.seed, spec.process_index]).generate_state(1, np.uint64)[0] >> 1)

    @tf.autograph.experimental.do_not_convert  # straight-line TF code: converting it only costs time
    def finish(batch):
        lengths = batch["lengths"]
        input_mask = tf.cast(tf.range(config.max_seq_length)[None, :] < lengths[:, None], tf.int32)
        out = {"input_mask": input_mask, "segment_ids": batch["segment_ids"],
               "next_sentence_labels": batch["next_sentence_labels"]}
        if spec.dynamic_masking:
            masked = pdata.mask_batch_tf(batch["input_ids"], lengths, batch["_key"], config=config, vocab=vocab,
                                         seed=tf.constant(mask_seed, tf.int64))
            out.update(masked)
        else:
            out["input_ids"] = batch["input_ids"]
            for name in ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights"):
                out[name] = batch[name]
        return {**{name: out[name] for name in pdata.FEATURE_NAMES}, **{k: batch[k] for k in meta_names}}

    return finish


def _build_dataset(source: _Source, state: dict, with_meta: bool):
    """generator (Python) -> [tokenize (graph) -> pair (numpy_function)] -> rows -> batches -> mask/parse."""
    import tensorflow as tf

    spec = source.spec
    config = spec.config
    seq, preds = config.max_seq_length, config.max_predictions_per_seq
    _EXIT_GUARD.watch()
    if spec.mode == "offline":
        signature = {"serialized": tf.TensorSpec([None], tf.string), "_block": tf.TensorSpec([None], tf.int64),
                     "_index": tf.TensorSpec([None], tf.int64)}
        rows = tf.data.Dataset.from_generator(lambda: source.elements(state), output_signature=signature).unbatch()
    else:
        signature = {"sentences": tf.TensorSpec([None], tf.string), "doc_splits": tf.TensorSpec([None], tf.int64),
                     "block": tf.TensorSpec([], tf.int64), "skip": tf.TensorSpec([], tf.int64)}
        blocks = tf.data.Dataset.from_generator(lambda: source.elements(state), output_signature=signature)
        graph_tokenizer = pdata.graph_tokenizer_for(source.tokenizer)

        @tf.autograph.experimental.do_not_convert
        def tokenize(block):
            ragged = graph_tokenizer.tokenize(block["sentences"])  # [S, (tokens)]
            return {"ids": tf.cast(ragged.flat_values, tf.int32), "splits": tf.cast(ragged.row_splits, tf.int64),
                    "doc_splits": block["doc_splits"], "block": block["block"], "skip": block["skip"]}

        names = _pair_names(spec)
        shapes = {"input_ids": [None, seq], "segment_ids": [None, seq], "masked_lm_positions": [None, preds],
                  "masked_lm_ids": [None, preds], "masked_lm_weights": [None, preds]}
        types = {"masked_lm_weights": tf.float32, "_block": tf.int64, "_index": tf.int64}

        @tf.autograph.experimental.do_not_convert
        def pair(block):
            outputs = tf.numpy_function(
                source.pair_block, [block["ids"], block["splits"], block["doc_splits"], block["block"], block["skip"]],
                [types.get(name, tf.int32) for name in names], stateful=False,
            )
            return {name: tf.ensure_shape(x, shapes.get(name, [None])) for name, x in zip(names, outputs)}

        blocks = blocks.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        rows = blocks.map(pair).unbatch()  # pairing is sequential Python: one block at a time
    # Each example's key (its index in this host's stream) fixes its dynamic mask.
    rows = rows.enumerate(start=state["example"]).map(_with_key)
    batches = rows.batch(spec.batch_size, drop_remainder=spec.drop_remainder)
    batches = batches.map(_finish_fn(spec, getattr(source, "vocab", None)), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    if not with_meta:
        batches = batches.map(_without_meta)
    return batches.prefetch(tf.data.AUTOTUNE)


def _with_key(key, row):
    return {**row, "_key": key}


def _without_meta(batch):
    return {k: v for k, v in batch.items() if not k.startswith(_META_PREFIX)}


def make_pretraining_dataset(
    *,
    input_pattern: str | Sequence[str] | None = None,
    tfds_name: str | None = None,
    tokenizer=None,
    mode: str = "streaming",
    batch_size: int,
    max_seq_length: int = 128,
    max_predictions_per_seq: int = 20,
    masked_lm_prob: float = 0.15,
    short_seq_prob: float = 0.1,
    whole_word_masking: bool = False,
    seed: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle_buffer: int | None = None,
    repeat: bool = True,
    shuffle: bool = True,
    text_format: str = "auto",
    tfds_split: str = "train",
    tfds_data_dir: str | None = None,
    tfds_text_key: str = "text",
    dynamic_masking: bool = True,
    dupe_factor: int = 1,
    drop_remainder: bool = True,
):
    """This host's batches of pretraining examples as a tf.data.Dataset (see the module docstring).

    input_pattern: files, globs, directories or a comma-separated list (text for 'streaming', the
      TFRecords of prepare-pretraining-data for 'offline'); tfds_name instead reads a TFDS text dataset
      (`tfds_split`, `tfds_data_dir`, feature `tfds_text_key`) in streaming mode.
    shuffle_buffer: items per block (streaming: documents, default 1,000, whose instances are shuffled
      together and among which random-next B is drawn; offline: records shuffled together, 10,000).
    shuffle: False keeps the files in order (for evaluation); pairing is random either way.
    """
    spec = _make_spec(**_spec_kwargs(locals()))
    source = _Source(spec, tokenizer)
    source.check_not_empty()
    _check_offline_records(spec)
    return _build_dataset(source, _initial_state(spec), with_meta=False)


_SPEC_ARGS = ("input_pattern", "tfds_name", "mode", "batch_size", "max_seq_length", "max_predictions_per_seq",
              "masked_lm_prob", "short_seq_prob", "whole_word_masking", "seed", "process_index", "process_count",
              "shuffle_buffer", "repeat", "shuffle", "text_format", "tfds_split", "tfds_data_dir", "tfds_text_key",
              "dynamic_masking", "dupe_factor", "drop_remainder")


def _spec_kwargs(arguments: Mapping) -> dict:
    return {name: arguments[name] for name in _SPEC_ARGS}


def _check_offline_records(spec: PipelineSpec) -> None:
    """Offline TFRecords must have been written at this length: check before tf.data would fail."""
    if spec.mode != "offline":
        return
    directories = {os.path.dirname(p) for p in spec.files}
    for directory in directories:
        metadata = pdata.read_metadata(directory)
        if metadata is None:
            continue
        written = metadata["config"]
        for key in ("max_seq_length", "max_predictions_per_seq"):
            if written[key] != getattr(spec.config, key):
                raise ValueError(f"{os.path.join(directory, pdata.METADATA_FILE)}: records were written with "
                                 f"{key}={written[key]}, the pipeline asks for {getattr(spec.config, key)}")
    for path in spec.files:
        for record, _ in _iter_tfrecords(path, 0):
            _check_record(record, path, spec.config)
            break


def _check_record(record: bytes, path: str, config: pdata.InstanceConfig) -> None:
    import tensorflow as tf

    try:
        example = tf.train.Example.FromString(record)
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"{path}: not a TFRecord of tf.train.Example ({e})") from None
    features = example.features.feature
    expected = {"input_ids": config.max_seq_length, "masked_lm_positions": config.max_predictions_per_seq}
    for name in pdata.FEATURE_NAMES:
        if name not in features:
            raise ValueError(f"{path}: record lacks the feature {name!r} (not written by prepare-pretraining-data?)")
    for name, size in expected.items():
        got = len(features[name].int64_list.value)
        if got != size:
            raise ValueError(f"{path}: {name} has length {got}, the pipeline expects {size}")


# ----------------------------------------------------------------------------------------------------
# The resumable iterator
# ----------------------------------------------------------------------------------------------------


class PretrainingIterator:
    """Numpy batches of this host's stream, with an exact, cheap, JSON-serialisable position.

        it = PretrainingIterator(input_pattern=..., tokenizer=tok, batch_size=32, seed=0)
        batch = next(it)                  # dict of numpy arrays, the seven features
        state = it.get_state()            # store in the checkpoint
        it2 = PretrainingIterator(...same arguments...); it2.set_state(state)
        next(it2) == next(it)             # the same examples, masks included

    Takes the keyword arguments of `make_pretraining_dataset`.
    """

    def __init__(self, *, tokenizer=None, **kwargs):
        arguments = {name: kwargs.pop(name) for name in list(kwargs) if name in _SPEC_ARGS}
        if kwargs:
            raise TypeError(f"unknown argument(s) {sorted(kwargs)}")
        defaults = {k: v.default for k, v in _signature_defaults().items()}
        missing = [name for name in _SPEC_ARGS if name not in defaults and name not in arguments]
        if missing:
            raise TypeError(f"PretrainingIterator needs {', '.join(missing)}")
        self._arguments = {**defaults, **arguments}
        self._tokenizer = tokenizer
        self.spec = _make_spec(**_spec_kwargs(self._arguments))
        self._source = _Source(self.spec, tokenizer)
        self._source.check_not_empty()
        _check_offline_records(self.spec)
        self._state = _initial_state(self.spec)
        self._iterator = None
        _EXIT_GUARD.watch(self)

    @property
    def read_stats(self) -> text_reader.ReadStats:
        return self._source.read_stats

    @property
    def generation_stats(self) -> pdata.GenerationStats:
        return self._source.generation_stats

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            self._iterator = _build_dataset(self._source, dict(self._state), with_meta=True).as_numpy_iterator()
        batch = next(self._iterator)
        block, index, key = (int(batch[name][-1]) for name in ("_block", "_index", "_key"))
        start = self._source.block_starts[block]
        self._state = {"epoch": start.epoch, "cursor": start.cursor, "offset": start.offset,
                       "ordinal": start.ordinal, "block": block, "skip": index + 1, "example": key + 1}
        return {k: v for k, v in batch.items() if not k.startswith(_META_PREFIX)}

    def close(self) -> None:
        """Stops the underlying tf.data iterator (its threads); `next` starts it again from the position."""
        self._iterator = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def get_state(self) -> dict:
        """The position after the last batch returned: a dict of ints and strings (JSON-serialisable)."""
        return {"version": STATE_VERSION, "fingerprint": self.spec.fingerprint(), "shape": self.spec.shape_key(),
                **self._state}

    def set_state(self, state: Mapping, *, allow_shape_change: bool = True) -> None:
        """Continues exactly after the batch at which `state` was taken.

        The state must come from the same input, seed and host (else ValueError). A state taken with
        another length, batch size or block size (a new sequence-length phase) continues from the start
        of its block, with a warning -- or, with allow_shape_change=False, is refused (ValueError).
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"input pipeline state version {state.get('version')!r}, expected {STATE_VERSION}")
        if state.get("fingerprint") != self.spec.fingerprint():
            raise ValueError("input pipeline state was taken on another input, seed, mode or host shard "
                             f"(fingerprint {state.get('fingerprint')} != {self.spec.fingerprint()})")
        restored = {k: int(state[k]) for k in _initial_state(self.spec)}
        if list(state.get("shape", [])) != self.spec.shape_key():
            if not allow_shape_change:
                raise ValueError(f"input pipeline state was taken with [batch, length, predictions, ...] = "
                                 f"{state.get('shape')}, this pipeline has {self.spec.shape_key()}")
            from absl import logging

            logging.warning("input pipeline state was taken with [batch, length, predictions, ...] = %s, this "
                            "pipeline has %s: continuing from the start of block %d", state.get("shape"),
                            self.spec.shape_key(), restored["block"])
            restored["skip"] = 0  # the block is re-made with the new settings: start it over
        self._state = restored
        self._iterator = None

    def rebuild(self, **changes) -> "PretrainingIterator":
        """A new iterator with some arguments changed (a sequence-length phase), continuing from the
        start of the current block in streaming mode (offline: from the start of the new files)."""
        arguments = {**self._arguments, **changes}
        rebuilt = PretrainingIterator(tokenizer=changes.pop("tokenizer", self._tokenizer),
                                      **{k: v for k, v in arguments.items() if k != "tokenizer"})
        if rebuilt.spec.fingerprint() == self.spec.fingerprint():
            rebuilt.set_state(self.get_state())
        return rebuilt


def _signature_defaults():
    import inspect

    params = inspect.signature(make_pretraining_dataset).parameters
    return {k: p for k, p in params.items() if k in _SPEC_ARGS and p.default is not inspect.Parameter.empty}


# ----------------------------------------------------------------------------------------------------
# Global arrays
# ----------------------------------------------------------------------------------------------------


def make_global_batch(local_batch: Mapping[str, np.ndarray], sharding_or_mesh) -> dict:
    """Per-host numpy rows -> one global jax.Array per feature, rows split over the batch axes.

    `sharding_or_mesh`: a jax.sharding.Sharding used as is, or a Mesh, whose data-parallel axes
    (BATCH_AXES present in it, else all its axes) split the batch dimension.
    Every process must call this with its own rows (same shapes on all processes).
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    if isinstance(sharding_or_mesh, Mesh):
        axes = tuple(a for a in BATCH_AXES if a in sharding_or_mesh.axis_names) or tuple(sharding_or_mesh.axis_names)
        sharding = NamedSharding(sharding_or_mesh, PartitionSpec(axes))
    else:
        sharding = sharding_or_mesh
    return {name: jax.make_array_from_process_local_data(sharding, np.asarray(rows))
            for name, rows in local_batch.items()}
